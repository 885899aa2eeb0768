//! symbolize: addresses to functions, file and line.
//!
//! User frames are resolved per *binary* (keyed by device and inode), not per
//! process: a host running 500 copies of one program symbolizes it once.
//! Each process's executable mappings are captured when the sampler first
//! sees it, and the binary's file is held open, so samples of processes that
//! exited before the drain still symbolize. Kernel frames come from
//! /proc/kallsyms, JIT frames from perf maps.
//!
//! Every file of a profiled process is opened through [`crate::untrusted`]:
//! binaries through `/proc/PID/map_files` (checked to be the very file
//! mapped) or inside the process's root, perf maps inside the process's
//! root with perf's ownership rule. Open binaries are bounded by a file
//! descriptor budget (least recently used closed first, reopened through a
//! live process when needed); blazesym reads them under a `SIGBUS` guard,
//! so a file truncated under it fails alone; and it reads DWARF and follows
//! debug links (which open further files by name) only for binaries only
//! root can change, in ember's own mount namespace. Others are named from
//! their ELF symbol tables.

pub mod perfmap;
pub mod procmap;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::untrusted::{self, Policy, Refusal, Root, What};
use blazesym::symbolize::source::{Elf, Kernel, Process as ProcSource, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};
use blazesym::MaybeDefault;

pub use procmap::{FileKey, Mapping, Process};

/// One function frame of a symbolized address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SymFrame {
    /// Demangled name.
    pub name: Arc<str>,
    /// Name as in the symbol table (mangled).
    pub system_name: Arc<str>,
    /// Source file, when debug info has it.
    pub file: Option<Arc<str>>,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// The frames of one address, innermost (inlined) first; empty if unknown.
pub type Frames = Arc<[SymFrame]>;

/// A binary seen in some process.
pub struct Binary {
    /// Path as first seen in a process's maps.
    pub path: Arc<str>,
    /// Hex GNU build ID, when present.
    pub build_id: Option<String>,
    /// The vDSO, symbolized through ember's own copy.
    pub vdso: bool,
    /// Its identity on disk (None for the vDSO).
    key: Option<FileKey>,
    file: Option<File>,
    /// Read DWARF and follow debug links (root-controlled files only).
    dwarf: bool,
    /// The file changed under ember while read: never parsed again.
    broken: bool,
    cache: HashMap<u64, Frames>,
    /// blazesym holds this binary's parsed symbols and debug info.
    parsed: bool,
    /// The last epoch (see [`Symbolizer::evict_idle`]) it was symbolized in.
    used: u64,
    /// Last use, for closing the least recently used file.
    touched: u64,
}

/// Binary handle.
pub type BinaryId = usize;

/// Caches of everything needed to name addresses.
pub struct Symbolizer {
    blaze: Blaze,
    processes: HashMap<u32, Process>,
    binaries: Vec<Binary>,
    /// Slots of binaries forgotten, reused before the table grows.
    free: Vec<BinaryId>,
    by_file: HashMap<FileKey, BinaryId>,
    vdso_binary: Option<BinaryId>,
    /// JIT names by (pid, address), for the current build.
    jit: HashMap<(u32, u64), Option<Arc<str>>>,
    /// Perf-map bytes read in the current build.
    perf_map_bytes: u64,
    unnamed: Unnamed,
    /// Binary files held open, and the most allowed.
    open_files: usize,
    fd_budget: usize,
    tick: u64,
    kernel: HashMap<u64, Frames>,
    kernel_worker: Option<KernelWorker>,
    lookups: u64,
    misses: u64,
    epoch: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

/// Frames left without a name, by reason (distinct addresses per profile
/// build): the summary and `/metrics` say why, never just "unknown".
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unnamed {
    /// The binary was read but has no symbol covering the address
    /// (stripped, or its debug file is missing).
    pub no_symbols: u64,
    /// The binary could not be read (gone, refused, changed while read).
    pub unreadable: u64,
    /// Code in an anonymous mapping (JIT) that no perf map names.
    pub no_perf_map: u64,
    /// Code in no mapping ember captured for the process.
    pub unmapped: u64,
}

impl Unnamed {
    /// (label, count) pairs in a fixed order.
    pub fn causes(&self) -> [(&'static str, u64); 4] {
        [
            ("no_symbols", self.no_symbols),
            ("unreadable_binary", self.unreadable),
            ("jit_without_perf_map", self.no_perf_map),
            ("unmapped", self.unmapped),
        ]
    }
}

/// Counters for the summary and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct SymStats {
    /// Processes with captured maps.
    pub processes: usize,
    /// Distinct binaries.
    pub binaries: usize,
    /// Addresses cached.
    pub cached_addresses: usize,
    /// Addresses asked for.
    pub lookups: u64,
    /// Addresses that were not cached.
    pub misses: u64,
    /// Binary files held open.
    pub open_files: usize,
    /// Frames left unnamed so far, by reason.
    pub unnamed: Unnamed,
}

impl Symbolizer {
    /// An empty symbolizer.
    pub fn new() -> Symbolizer {
        let blaze = Blaze::builder()
            .enable_code_info(true)
            .enable_inlined_fns(true)
            // ember keeps the mangled name too, so it demangles itself.
            .enable_demangling(false)
            // ember hands blazesym files it holds open; a file changed on
            // disk is the same open file, not a new cache entry per change.
            .enable_auto_reload(false)
            .build();
        Symbolizer {
            blaze,
            processes: HashMap::new(),
            binaries: Vec::new(),
            free: Vec::new(),
            by_file: HashMap::new(),
            vdso_binary: None,
            jit: HashMap::new(),
            perf_map_bytes: 0,
            unnamed: Unnamed::default(),
            open_files: 0,
            fd_budget: untrusted::binary_fd_budget(),
            tick: 0,
            kernel: HashMap::new(),
            kernel_worker: None,
            lookups: 0,
            misses: 0,
            epoch: 0,
        }
    }

    /// Captures (or refreshes) a process's mappings and opens its binaries.
    /// Call it as soon as a process is first seen, while it lives.
    pub fn capture(&mut self, pid: u32) {
        self.capture_inner(pid, false);
    }

    /// Captures a process that just exec'd: its old image is gone.
    pub fn capture_exec(&mut self, pid: u32) {
        self.capture_inner(pid, true);
    }

    /// Captures a process the sampler announced (first sample or exec).
    pub fn on_event(&mut self, e: crate::sample::ProcessEvent) {
        self.capture_inner(e.pid, e.exec);
    }

    fn capture_inner(&mut self, pid: u32, replace: bool) {
        let started = procmap::start_time(pid).unwrap_or(0);
        match procmap::read_mappings(pid) {
            Ok(maps) => {
                let same_ns = procmap::same_mount_ns(pid);
                for m in &maps {
                    if let Some(key) = m.file {
                        self.register_binary(pid, key, m, same_ns == Some(true));
                    } else if m.vdso && self.vdso_binary.is_none() {
                        let id = self.add_binary(Binary::new(m.path.clone(), None, None, true));
                        self.vdso_binary = Some(id);
                    }
                }
                let ns_pid = procmap::ns_pid(pid);
                let creds = untrusted::Creds::of(pid).ok();
                let p = self.processes.entry(pid).or_default();
                // A reused pid is another process: nothing of the old one applies.
                if replace || p.start_time != started {
                    p.mappings.clear();
                }
                p.start_time = started;
                p.ns_pid = ns_pid;
                p.exited = false;
                if let Some(same) = same_ns {
                    p.same_mount_ns = same;
                }
                if creds.is_some() {
                    p.creds = creds;
                }
                p.merge(maps);
                p.mappings.truncate(procmap::MAX_EXEC_MAPPINGS);
            }
            Err(_) => {
                self.processes
                    .entry(pid)
                    .or_insert_with(|| Process {
                        ns_pid: pid,
                        ..Default::default()
                    })
                    .exited = true;
            }
        }
    }

    /// Re-reads a live process before building a profile, to pick up
    /// libraries loaded since it was captured.
    pub fn refresh(&mut self, pid: u32) {
        if !self.processes.get(&pid).is_some_and(|p| p.exited) {
            self.capture(pid);
        }
    }

    /// Forgets a process (its binaries stay cached until [`gc`](Self::gc)).
    pub fn forget(&mut self, pid: u32) {
        self.processes.remove(&pid);
    }

    /// Applies the one exit rule ([`procmap::is_live`]) to every tracked
    /// process and returns the processes found gone that were not
    /// reported before. Their symbols stay (samples drained later still
    /// need them) until [`forget_exited`](Self::forget_exited).
    pub fn mark_exited(&mut self) -> Vec<u32> {
        let mut newly = Vec::new();
        for (&pid, p) in self.processes.iter_mut() {
            if !p.exited && !procmap::is_live(pid, Some(p.start_time), false) {
                p.exited = true;
            }
            if p.exited && !p.exit_reported {
                p.exit_reported = true;
                newly.push(pid);
            }
        }
        newly
    }

    /// Drops processes marked exited at an earlier call (so samples drained
    /// just after an exit still symbolize), and closes binaries no tracked
    /// process maps any more: memory stays bounded under process churn.
    /// Call once per window, after [`mark_exited`](Self::mark_exited).
    /// Returns the pids forgotten.
    pub fn forget_exited(&mut self) -> Vec<u32> {
        let mut gone = Vec::new();
        for (&pid, p) in self.processes.iter_mut() {
            if p.exited && p.gone_seen {
                gone.push(pid);
                continue;
            }
            p.gone_seen = p.exited;
        }
        for pid in &gone {
            self.forget(*pid);
        }
        let live: std::collections::HashSet<FileKey> = self
            .processes
            .values()
            .flat_map(|p| p.mappings.iter().filter_map(|m| m.file))
            .collect();
        let dead: Vec<(FileKey, BinaryId)> = self
            .by_file
            .iter()
            .filter(|(key, _)| !live.contains(key))
            .map(|(&k, &id)| (k, id))
            .collect();
        for (key, id) in dead {
            self.by_file.remove(&key);
            self.close_file(id);
            self.binaries[id] = Binary::new(Arc::from(""), None, None, false);
            self.free.push(id);
        }
        gone
    }

    fn add_binary(&mut self, b: Binary) -> BinaryId {
        match self.free.pop() {
            Some(id) => {
                self.binaries[id] = b;
                id
            }
            None => {
                self.binaries.push(b);
                self.binaries.len() - 1
            }
        }
    }

    /// Closes a binary's file and drops what blazesym parsed of it (its
    /// own descriptor and mapping included).
    fn close_file(&mut self, id: BinaryId) {
        let b = &mut self.binaries[id];
        if let Some(f) = b.file.take() {
            let _ = self.blaze.evict(&blazesym::symbolize::evict::Evict::Elf(
                blazesym::symbolize::evict::Elf::new(fd_path(&f)),
            ));
            self.open_files -= 1;
        }
        b.parsed = false;
    }

    /// Makes room for one more open binary file within the budget by
    /// closing the least recently used ones.
    fn make_room(&mut self) {
        while self.open_files >= self.fd_budget {
            let lru = self
                .binaries
                .iter()
                .enumerate()
                .filter(|(_, b)| b.file.is_some())
                .min_by_key(|(_, b)| b.touched)
                .map(|(i, _)| i);
            match lru {
                Some(id) => self.close_file(id),
                None => break,
            }
        }
    }

    /// Opens the file a process maps at `m`: through map_files (the very
    /// file mapped), else by its path inside the process's root; either
    /// way it must be the file with this device and inode.
    fn open_binary(pid: u32, key: FileKey, m: &Mapping) -> Option<File> {
        if let Ok(f) = untrusted::open_mapped(pid, m.start, m.end, key) {
            return Some(f);
        }
        let creds = untrusted::Creds::of(pid).ok()?;
        let any = Policy {
            no_symlinks: false,
            owner_or_root: false,
            max_bytes: u64::MAX,
        };
        let f =
            untrusted::open_in_root(Root::Process(pid), &m.path, &creds, any, What::Binary).ok()?;
        let meta = f.metadata().ok()?;
        use std::os::unix::fs::MetadataExt;
        let got = (
            libc::major(meta.dev()) as i32,
            libc::minor(meta.dev()) as i32,
            meta.ino(),
        );
        if got != key {
            untrusted::count(What::Binary, Refusal::Changed);
            return None;
        }
        Some(f)
    }

    fn register_binary(&mut self, pid: u32, key: FileKey, m: &Mapping, same_ns: bool) {
        if self.by_file.contains_key(&key) {
            return;
        }
        self.make_room();
        let file = Self::open_binary(pid, key, m);
        let mut broken = false;
        let build_id = file.as_ref().and_then(|f| {
            let path = PathBuf::from(fd_path(f));
            match untrusted::guarded(|| blazesym::helper::read_elf_build_id(&path)) {
                Ok(r) => r
                    .ok()
                    .flatten()
                    .map(|b| b.iter().map(|x| format!("{x:02x}")).collect()),
                Err(why) => {
                    untrusted::count(What::Binary, why);
                    broken = true;
                    None
                }
            }
        });
        let dwarf = same_ns && file.as_ref().is_some_and(untrusted::root_controlled);
        let file = if broken { None } else { file };
        if file.is_some() {
            self.open_files += 1;
        }
        self.tick += 1;
        let mut b = Binary::new(m.path.clone(), Some(key), file, false);
        b.build_id = build_id;
        b.dwarf = dwarf;
        b.broken = broken;
        b.touched = self.tick;
        let id = self.add_binary(b);
        self.by_file.insert(key, id);
    }

    /// Whether blazesym may index the binary: root-controlled files
    /// always; others only while their symbol tables are within bounds
    /// (checked just before each first parse).
    fn indexable(&mut self, id: BinaryId) -> bool {
        let b = &self.binaries[id];
        if b.dwarf || b.parsed {
            return true;
        }
        let Some(f) = &b.file else { return false };
        match untrusted::elf_tables_within_limits(f) {
            Ok(()) => true,
            Err(why) => {
                untrusted::count(What::Binary, why);
                self.close_file(id);
                self.binaries[id].broken = true;
                false
            }
        }
    }

    /// Reopens a binary closed for the descriptor budget, through a live
    /// process that maps it.
    fn reopen(&mut self, id: BinaryId) -> bool {
        let b = &self.binaries[id];
        if b.file.is_some() {
            return true;
        }
        let Some(key) = b.key.filter(|_| !b.broken) else {
            return false;
        };
        let found = self.processes.iter().find_map(|(&pid, p)| {
            if p.exited {
                return None;
            }
            p.mappings
                .iter()
                .find(|m| m.file == Some(key))
                .map(|m| (pid, m.clone()))
        });
        let Some((pid, m)) = found else {
            return false;
        };
        self.make_room();
        let Some(f) = Self::open_binary(pid, key, &m) else {
            return false;
        };
        self.open_files += 1;
        self.binaries[id].file = Some(f);
        true
    }

    /// The open file of a binary, for readers other than the symbolizer
    /// (the unwind table builder).
    pub fn file_of(&mut self, key: FileKey) -> Option<&File> {
        let id = *self.by_file.get(&key)?;
        if !self.reopen(id) {
            return None;
        }
        self.tick += 1;
        self.binaries[id].touched = self.tick;
        self.binaries[id].file.as_ref()
    }

    /// The process as captured.
    pub fn process(&self, pid: u32) -> Option<&Process> {
        self.processes.get(&pid)
    }

    /// The binary behind a mapping.
    pub fn binary_of(&self, m: &Mapping) -> Option<BinaryId> {
        if m.vdso {
            return self.vdso_binary;
        }
        m.file.and_then(|k| self.by_file.get(&k).copied())
    }

    /// A binary by id.
    pub fn binary(&self, id: BinaryId) -> &Binary {
        &self.binaries[id]
    }

    /// Symbolizes file offsets of one binary in one batch, filling its cache.
    pub fn symbolize_binary(&mut self, id: BinaryId, offsets: &mut Vec<u64>) {
        let bin = &self.binaries[id];
        let cache = &bin.cache;
        if !uncached(
            offsets,
            |o| cache.contains_key(o),
            &mut self.lookups,
            &mut self.misses,
        ) {
            return;
        }
        let results: Vec<Frames> = if bin.vdso {
            match own_vdso_start() {
                Some(base) => {
                    let addrs: Vec<u64> = offsets.iter().map(|o| base + o).collect();
                    let src = Source::Process(ProcSource::new(blazesym::Pid::Slf));
                    self.run(&src, Input::AbsAddr(&addrs[..]), addrs.len())
                }
                None => vec![Frames::from([]); offsets.len()],
            }
        } else if self.reopen(id) && self.indexable(id) {
            let bin = &self.binaries[id];
            let f = bin.file.as_ref().expect("reopened");
            let mut elf = Elf::new(fd_path(f));
            elf.debug_syms = bin.dwarf;
            let src = Source::Elf(elf);
            let n = offsets.len();
            match untrusted::guarded(|| self.run(&src, Input::FileOffset(&offsets[..]), n)) {
                Ok(r) => r,
                Err(why) => {
                    // Truncated under blazesym: drop everything read from it.
                    untrusted::count(What::Binary, why);
                    self.close_file(id);
                    self.binaries[id].broken = true;
                    vec![Frames::from([]); n]
                }
            }
        } else {
            vec![Frames::from([]); offsets.len()]
        };
        self.tick += 1;
        let bin = &mut self.binaries[id];
        bin.used = self.epoch;
        bin.touched = self.tick;
        bin.parsed = bin.file.is_some();
        for (o, frames) in offsets.iter().zip(results) {
            bin.cache.insert(*o, frames);
        }
    }

    /// Cached frames of a binary's file offset (after `symbolize_binary`).
    pub fn binary_frames(&self, id: BinaryId, offset: u64) -> Frames {
        self.binaries[id]
            .cache
            .get(&offset)
            .cloned()
            .unwrap_or_else(|| Frames::from([]))
    }

    /// Starts reading the kernel's symbols now, on a thread of their own,
    /// so the first kernel frames need not wait for it (parsing
    /// /proc/kallsyms takes about 0.1 s). Kernel symbolization then runs on
    /// that thread.
    pub fn preload_kernel(&mut self) {
        if self.kernel_worker.is_none() {
            self.kernel_worker = KernelWorker::spawn();
        }
    }

    /// Symbolizes kernel addresses in one batch, filling the cache.
    pub fn symbolize_kernel(&mut self, addrs: &mut Vec<u64>) {
        let cache = &self.kernel;
        if !uncached(
            addrs,
            |a| cache.contains_key(a),
            &mut self.lookups,
            &mut self.misses,
        ) {
            return;
        }
        let results = match self.kernel_worker.as_ref().and_then(|w| w.ask(addrs)) {
            Some(r) => r,
            None => kernel_symbolize(&self.blaze, addrs),
        };
        for (a, f) in addrs.iter().zip(results) {
            self.kernel.insert(*a, f);
        }
    }

    /// Cached frames of a kernel address.
    pub fn kernel_frames(&self, addr: u64) -> Frames {
        self.kernel
            .get(&addr)
            .cloned()
            .unwrap_or_else(|| Frames::from([]))
    }

    /// Names a process's JIT addresses (code outside every file mapping)
    /// from its perf map in one pass, filling the cache [`jit_name`]
    /// reads. The map is opened inside the process's root without
    /// following links and must belong to the process's user or root (as
    /// perf requires); after the process exited, only if it shared
    /// ember's root.
    ///
    /// [`jit_name`]: Self::jit_name
    pub fn symbolize_jit(&mut self, pid: u32, addrs: &mut Vec<u64>) {
        addrs.sort_unstable();
        addrs.dedup();
        addrs.retain(|a| !self.jit.contains_key(&(pid, *a)));
        if addrs.is_empty() {
            return;
        }
        let budget = untrusted::PERF_MAP_BUDGET_BYTES.saturating_sub(self.perf_map_bytes);
        let names = match self.open_perf_map(pid) {
            Some(_) if budget == 0 => {
                untrusted::count(What::PerfMap, Refusal::ReadBudget);
                vec![None; addrs.len()]
            }
            Some(f) => {
                let (names, read) = perfmap::lookup(&f, addrs, budget);
                self.perf_map_bytes += read;
                names
            }
            None => vec![None; addrs.len()],
        };
        for (a, n) in addrs.iter().zip(names) {
            self.jit.insert((pid, *a), n);
        }
    }

    fn open_perf_map(&self, pid: u32) -> Option<File> {
        let p = self.processes.get(&pid);
        let ns_pid = p.map(|p| p.ns_pid).unwrap_or(pid);
        let creds = match p.and_then(|p| p.creds.clone()) {
            Some(c) => c,
            None => untrusted::Creds::of(pid).ok()?,
        };
        let path = format!("/tmp/perf-{ns_pid}.map");
        let policy = Policy {
            no_symlinks: true,
            owner_or_root: true,
            max_bytes: untrusted::MAX_PERF_MAP_BYTES,
        };
        let alive = !p.is_some_and(|p| p.exited);
        if alive {
            match untrusted::open_in_root(Root::Process(pid), &path, &creds, policy, What::PerfMap)
            {
                Ok(f) => return Some(f),
                // Refused for cause: do not try another way round.
                Err(Refusal::Io) => {}
                Err(_) => return None,
            }
        }
        if p.is_some_and(|p| p.same_mount_ns) {
            return untrusted::open_in_root(Root::Own, &path, &creds, policy, What::PerfMap).ok();
        }
        None
    }

    /// The perf-map name of a JIT address (after [`symbolize_jit`]).
    ///
    /// [`symbolize_jit`]: Self::symbolize_jit
    pub fn jit_name(&self, pid: u32, addr: u64) -> Option<Arc<str>> {
        self.jit.get(&(pid, addr)).cloned().flatten()
    }

    /// Adds a build's unnamed frames to the running counts.
    pub fn count_unnamed(&mut self, u: &Unnamed) {
        self.unnamed.no_symbols += u.no_symbols;
        self.unnamed.unreadable += u.unreadable;
        self.unnamed.no_perf_map += u.no_perf_map;
        self.unnamed.unmapped += u.unmapped;
    }

    /// Drops the JIT names read so far, so the next build re-reads perf
    /// maps (JITs append as they compile).
    pub fn reset_perf_maps(&mut self) {
        self.jit.clear();
        self.perf_map_bytes = 0;
    }

    /// Starts a new epoch (an agent window) and releases blazesym's parsed
    /// data (symbol tables, DWARF, the file mapping) of binaries not
    /// symbolized in the last `idle` epochs. Their addresses stay in ember's
    /// own cache; a binary is parsed again only when new addresses show up.
    /// This bounds an always-on agent's memory without re-parsing the debug
    /// info of busy binaries every window.
    pub fn evict_idle(&mut self, idle: u64) {
        self.epoch += 1;
        for b in &mut self.binaries {
            if b.parsed && self.epoch.saturating_sub(b.used) > idle {
                if let Some(f) = &b.file {
                    let _ = self.blaze.evict(&blazesym::symbolize::evict::Evict::Elf(
                        blazesym::symbolize::evict::Elf::new(fd_path(f)),
                    ));
                }
                b.parsed = false;
            }
        }
    }

    /// Cache sizes.
    pub fn stats(&self) -> SymStats {
        SymStats {
            processes: self.processes.len(),
            binaries: self.binaries.len(),
            cached_addresses: self.kernel.len()
                + self.binaries.iter().map(|b| b.cache.len()).sum::<usize>(),
            lookups: self.lookups,
            misses: self.misses,
            open_files: self.open_files,
            unnamed: self.unnamed,
        }
    }

    fn run(&self, src: &Source<'_>, input: Input<&[u64]>, n: usize) -> Vec<Frames> {
        match self.blaze.symbolize(src, input) {
            Ok(syms) => syms.into_iter().map(|s| to_frames(&s)).collect(),
            Err(_) => vec![Frames::from([]); n],
        }
    }
}

/// kallsyms only: no vmlinux search, and no dependency on /proc/modules,
/// which kernels without module support lack.
fn kernel_source() -> Source<'static> {
    Source::Kernel(Kernel {
        vmlinux: MaybeDefault::None,
        kallsyms: MaybeDefault::Default,
        debug_syms: false,
        ..Default::default()
    })
}

fn kernel_symbolize(blaze: &Blaze, addrs: &[u64]) -> Vec<Frames> {
    match blaze.symbolize(&kernel_source(), Input::AbsAddr(addrs)) {
        Ok(syms) => syms.into_iter().map(|s| to_frames(&s)).collect(),
        Err(_) => vec![Frames::from([]); addrs.len()],
    }
}

/// A thread owning a kernel-only blazesym symbolizer (blazesym's is not
/// `Send`, so it lives and answers there).
struct KernelWorker {
    ask: std::sync::mpsc::Sender<Vec<u64>>,
    answers: std::sync::mpsc::Receiver<Vec<Frames>>,
}

impl KernelWorker {
    fn spawn() -> Option<KernelWorker> {
        let (ask, questions) = std::sync::mpsc::channel::<Vec<u64>>();
        let (reply, answers) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ember-ksyms".into())
            .spawn(move || {
                let blaze = Blaze::builder().enable_demangling(false).build();
                // Any address loads kallsyms into the symbolizer's cache.
                let _ = blaze.symbolize(&kernel_source(), Input::AbsAddr(&[0xffff_ffff_8100_0000]));
                for addrs in questions {
                    if reply.send(kernel_symbolize(&blaze, &addrs)).is_err() {
                        break;
                    }
                }
            })
            .ok()?;
        Some(KernelWorker { ask, answers })
    }

    fn ask(&self, addrs: &[u64]) -> Option<Vec<Frames>> {
        self.ask.send(addrs.to_vec()).ok()?;
        self.answers.recv().ok()
    }
}

impl Binary {
    /// Whether ember could read the file (it may still lack symbols).
    pub fn readable(&self) -> bool {
        self.vdso || (self.key.is_some() && !self.broken && (self.file.is_some() || self.parsed))
    }

    fn new(path: Arc<str>, key: Option<FileKey>, file: Option<File>, vdso: bool) -> Binary {
        Binary {
            path,
            build_id: None,
            vdso,
            key,
            file,
            dwarf: false,
            broken: false,
            cache: HashMap::new(),
            parsed: false,
            used: 0,
            touched: 0,
        }
    }
}

/// Sorts and deduplicates a batch of addresses, keeps those not `cached`,
/// counts lookups and misses, and says whether any are left to resolve.
fn uncached(
    addrs: &mut Vec<u64>,
    cached: impl Fn(&u64) -> bool,
    lookups: &mut u64,
    misses: &mut u64,
) -> bool {
    addrs.sort_unstable();
    addrs.dedup();
    *lookups += addrs.len() as u64;
    addrs.retain(|a| !cached(a));
    *misses += addrs.len() as u64;
    !addrs.is_empty()
}

/// The path blazesym opens a held file by.
fn fd_path(f: &File) -> String {
    format!("/proc/self/fd/{}", f.as_raw_fd())
}

/// Converts blazesym's outermost-first result into frames innermost first.
fn to_frames(s: &Symbolized<'_>) -> Frames {
    let Symbolized::Sym(sym) = s else {
        return Frames::from([]);
    };
    let mut out = Vec::with_capacity(1 + sym.inlined.len());
    // blazesym reports the outer function's code info at the address of the
    // first inlined call; each inlined function carries its own location.
    let outer_loc = sym
        .code_info
        .as_deref()
        .map(|c| (path_of(c), c.line.unwrap_or(0)));
    let mut locs: Vec<Option<(Arc<str>, u32)>> = Vec::with_capacity(1 + sym.inlined.len());
    locs.push(outer_loc);
    for f in sym.inlined.iter() {
        locs.push(
            f.code_info
                .as_ref()
                .map(|c| (path_of(c), c.line.unwrap_or(0))),
        );
    }
    let names: Vec<&str> = std::iter::once(&*sym.name)
        .chain(sym.inlined.iter().map(|f| &*f.name))
        .collect();
    for (name, loc) in names.iter().zip(locs).rev() {
        let (file, line) = match loc {
            Some((f, l)) => (Some(f), l),
            None => (None, 0),
        };
        // Symbol names come from files other users may write.
        out.push(SymFrame {
            name: crate::util::clean_name(&demangle(name)).into(),
            system_name: Arc::from(crate::util::clean_name(name)),
            file,
            line,
        });
    }
    out.into()
}

fn path_of(c: &blazesym::symbolize::CodeInfo<'_>) -> Arc<str> {
    Arc::from(crate::util::clean_name(&c.to_path().to_string_lossy()))
}

/// Demangles Rust (legacy and v0) and Itanium C++ names; others pass through.
pub fn demangle(name: &str) -> String {
    if let Ok(d) = rustc_demangle::try_demangle(name) {
        return format!("{d:#}");
    }
    if name.starts_with("_Z") {
        if let Ok(sym) = cpp_demangle::Symbol::new(name) {
            if let Ok(d) = sym.demangle() {
                return d;
            }
        }
    }
    name.to_string()
}

fn own_vdso_start() -> Option<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    u64::from_str_radix(line.split('-').next()?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demangles() {
        assert_eq!(
            demangle("_ZN4core3ptr13drop_in_place17h0123456789abcdefE"),
            "core::ptr::drop_in_place"
        );
        assert_eq!(demangle("_Z3fooi"), "foo(int)");
        assert_eq!(demangle("main"), "main");
    }
}
