//! symbolize: addresses to functions, file and line.
//!
//! User frames are resolved per *binary* (keyed by device and inode), not per
//! process: a host running 500 copies of one program symbolizes it once.
//! The session's [`ProcessTable`] captured each process's mappings while it
//! lived and holds its binaries open, so samples of processes that exited
//! before the drain still symbolize; the symbolizer reads it and keeps the
//! names. Kernel frames come from /proc/kallsyms, JIT frames from perf maps.
//!
//! blazesym reads a binary through the table's open file, under a
//! `SIGBUS` guard, so a file truncated under it fails alone; it reads
//! DWARF and follows debug links (which open further files by name) only
//! for binaries only root can change, in ember's own mount namespace.
//! Others are named from their ELF symbol tables, once those are checked
//! to be within bounds. Perf maps are streamed within a read budget.

pub mod debuginfod;
pub mod minidebug;
pub mod perfmap;

use std::collections::HashMap;
use std::sync::Arc;

use crate::process::{fd_path, BinaryId, ProcessTable, Release};
use crate::untrusted::{self, Refusal, What};
use blazesym::symbolize::source::{Elf, Kernel, Process as ProcSource, Source};
use blazesym::symbolize::{Input, Symbolized, Symbolizer as Blaze};
use blazesym::MaybeDefault;

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

/// Where separate debug files are looked up by build ID, as gdb and perf
/// do (`DIR/.build-id/xx/rest.debug`); `--debug-dir` adds more.
pub const DEFAULT_DEBUG_DIR: &str = "/usr/lib/debug";

/// A separate debug file: the path blazesym reads it by, the segments
/// (file offset, address, size) of the binary it describes, whether only
/// root can change it (then its DWARF is read), and the open file when the
/// path is its descriptor's (one inside a container's root).
#[derive(Clone)]
struct DebugFile {
    path: String,
    segments: Vec<(u64, u64, u64)>,
    trusted: bool,
    /// Fetched from debuginfod (into its cache).
    fetched: bool,
    _held: Option<Arc<std::fs::File>>,
}

/// A binary's extracted MiniDebugInfo and the binary's segments.
type MiniDebug = (std::fs::File, Vec<(u64, u64, u64)>);

/// What the symbolizer keeps of one binary of the process table.
#[derive(Default)]
struct Names {
    cache: HashMap<u64, Frames>,
    /// The path blazesym parsed it through (its descriptor's, or its
    /// debug file's), while it holds that parse.
    parsed: Option<String>,
    /// Its MiniDebugInfo (an in-memory ELF) and the binary's segments, once
    /// looked up (None inside: it has none).
    mini: Option<Option<MiniDebug>>,
    /// Its separate debug file, once looked up (None inside: none found),
    /// and the binary's loadable segments (file offset, address, size)
    /// that turn its file offsets into the debug file's addresses.
    debug: Option<Option<DebugFile>>,
    /// The last epoch (see [`Symbolizer::evict_idle`]) it was symbolized in.
    used: u64,
}

/// Caches of everything needed to name addresses.
pub struct Symbolizer {
    blaze: Blaze,
    /// Per binary of the process table, by id.
    names: Vec<Names>,
    /// JIT names by (pid, address), for the current build.
    jit: HashMap<(u32, u64), Option<Arc<str>>>,
    /// Perf-map bytes read in the current build.
    perf_map_bytes: u64,
    unnamed: Unnamed,
    kernel: HashMap<u64, Frames>,
    kernel_worker: Option<KernelWorker>,
    lookups: u64,
    misses: u64,
    epoch: u64,
    debug_dirs: Vec<std::path::PathBuf>,
    debug_files: u64,
    minidebug_files: u64,
    named: Named,
    debuginfod: Option<debuginfod::Debuginfod>,
    /// Binaries with unnamed addresses and no debug file yet: what a
    /// debuginfod server may have.
    wants_debug: std::collections::HashSet<BinaryId>,
    /// Python processes and the code objects named in them.
    pub python: crate::python::code::Names,
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

/// Where a binary's names came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameSource {
    /// Its own symbol tables (and DWARF, or a debug link blazesym followed).
    Own,
    /// A separate debug file found by build ID on this host or in a
    /// container's root.
    DebugFile,
    /// A debug file fetched from debuginfod.
    Debuginfod,
    /// Its MiniDebugInfo.
    MiniDebugInfo,
}

/// Addresses named (distinct, per profile build), by where the names came
/// from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Named {
    /// From the binaries' own symbols.
    pub own: u64,
    /// From separate debug files.
    pub debug_file: u64,
    /// From files fetched from debuginfod.
    pub debuginfod: u64,
    /// From MiniDebugInfo.
    pub minidebuginfo: u64,
}

impl Named {
    fn add(&mut self, source: NameSource, n: usize) {
        let n = n as u64;
        match source {
            NameSource::Own => self.own += n,
            NameSource::DebugFile => self.debug_file += n,
            NameSource::Debuginfod => self.debuginfod += n,
            NameSource::MiniDebugInfo => self.minidebuginfo += n,
        }
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
    /// Binaries named through a separate debug file found by build ID.
    pub debug_files: u64,
    /// Binaries named in part from their MiniDebugInfo.
    pub minidebug_files: u64,
    /// Addresses named, by source.
    pub named: Named,
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
            names: Vec::new(),
            jit: HashMap::new(),
            perf_map_bytes: 0,
            unnamed: Unnamed::default(),
            kernel: HashMap::new(),
            kernel_worker: None,
            lookups: 0,
            misses: 0,
            epoch: 0,
            debug_dirs: vec![DEFAULT_DEBUG_DIR.into()],
            debug_files: 0,
            minidebug_files: 0,
            named: Named::default(),
            debuginfod: None,
            wants_debug: Default::default(),
            python: Default::default(),
        }
    }

    /// Fetches missing debug files from a debuginfod server (see
    /// [`fetch_debuginfo`](Self::fetch_debuginfo)).
    pub fn set_debuginfod(&mut self, d: Option<debuginfod::Debuginfod>) {
        self.debuginfod = d;
    }

    /// Asks the debuginfod server for the debug files of binaries that had
    /// unnamed addresses, waits for them until `deadline` (pass now to
    /// not wait), and makes the binaries whose file arrived be named anew
    /// at the next build. Returns how many arrived and how many are still
    /// being fetched.
    pub fn fetch_debuginfo(
        &mut self,
        procs: &ProcessTable,
        deadline: std::time::Instant,
    ) -> (usize, usize) {
        let Some(d) = &self.debuginfod else {
            return (0, 0);
        };
        let wanted: Vec<(BinaryId, String)> = self
            .wants_debug
            .iter()
            .filter_map(|&id| Some((id, procs.binary(id).build_id.clone()?)))
            .collect();
        let pending: Vec<String> = wanted
            .iter()
            .filter(|(_, b)| d.lookup(b) == debuginfod::Lookup::Pending)
            .map(|(_, b)| b.clone())
            .collect();
        d.wait(&pending, deadline);
        let outcomes: Vec<(BinaryId, debuginfod::Lookup)> = wanted
            .into_iter()
            .map(|(id, b)| (id, d.lookup(&b)))
            .collect();
        let (mut arrived, mut pending) = (0, 0);
        for (id, outcome) in outcomes {
            match outcome {
                debuginfod::Lookup::Pending => {
                    pending += 1;
                    continue;
                }
                debuginfod::Lookup::Found(_) => {
                    if let Some(path) = self.names[id].parsed.take() {
                        self.evict(&path);
                    }
                    self.names[id] = Names::default();
                    arrived += 1;
                }
                debuginfod::Lookup::Missing => {}
            }
            self.wants_debug.remove(&id);
        }
        (arrived, pending)
    }

    /// Names what the binary's own symbols left unnamed from its
    /// MiniDebugInfo (`.gnu_debugdata`, extracted once, bounded; see
    /// [`minidebug`]), asked by virtual address.
    fn fill_from_minidebug(
        &mut self,
        procs: &ProcessTable,
        id: BinaryId,
        offsets: &[u64],
        mut results: Vec<Frames>,
    ) -> Vec<Frames> {
        if self.names[id].mini.is_none() {
            let found = procs.binary(id).file().and_then(|f| {
                let segments = load_segments(f);
                match minidebug::extract(f) {
                    Ok(mini) if !segments.is_empty() => Some((mini, segments)),
                    Ok(_) | Err(minidebug::MiniError::Absent) => None,
                    Err(minidebug::MiniError::TooLarge) => {
                        untrusted::count(What::DebugFile, Refusal::TooLarge);
                        None
                    }
                    Err(_) => {
                        untrusted::count(What::DebugFile, Refusal::Io);
                        None
                    }
                }
            });
            if found.is_some() {
                self.minidebug_files += 1;
            }
            self.names[id].mini = Some(found);
        }
        let Some(Some((mini, segments))) = &self.names[id].mini else {
            return results;
        };
        let empty: Vec<usize> = (0..results.len())
            .filter(|&i| results[i].is_empty())
            .collect();
        let addrs: Vec<u64> = empty
            .iter()
            .map(|&i| to_vaddr(segments, offsets[i]))
            .collect();
        let src = Source::Elf(Elf::new(fd_path(mini)));
        if let Ok(Ok(named)) = untrusted::guarded(|| self.run(&src, Input::VirtOffset(&addrs[..])))
        {
            let n = named.iter().filter(|f| !f.is_empty()).count();
            self.named.add(NameSource::MiniDebugInfo, n);
            for (i, f) in empty.into_iter().zip(named) {
                results[i] = f;
            }
        }
        results
    }

    /// The debuginfod client, when one is set.
    pub fn debuginfod(&self) -> Option<&debuginfod::Debuginfod> {
        self.debuginfod.as_ref()
    }

    /// The debuginfod client's counts, when one is set.
    pub fn debuginfod_stats(&self) -> Option<debuginfod::FetchStats> {
        self.debuginfod.as_ref().map(|d| d.stats())
    }

    /// Searches these directories too (after [`DEFAULT_DEBUG_DIR`]) for
    /// separate debug files by build ID.
    pub fn add_debug_dirs(&mut self, dirs: &[std::path::PathBuf]) {
        self.debug_dirs.extend(dirs.iter().cloned());
    }

    /// The separate debug file of a binary, found by its build ID in the
    /// debug directories (looked up once per binary). Only a file only
    /// root can change is used (its path is then safe to hand to blazesym,
    /// which reads its DWARF).
    fn debug_file(&mut self, procs: &ProcessTable, id: BinaryId) -> Option<DebugFile> {
        if let Some(found) = &self.names[id].debug {
            return found.clone();
        }
        let bin = procs.binary(id);
        let segments = bin.file().map(load_segments).unwrap_or_default();
        let found = bin
            .build_id
            .as_deref()
            .filter(|b| b.len() > 2 && !segments.is_empty())
            .and_then(|b| {
                let fetched = self.debuginfod.as_ref().map(|d| d.cached_path(b));
                let local = self.debug_dirs.iter().map(|dir| {
                    dir.join(".build-id")
                        .join(&b[..2])
                        .join(format!("{}.debug", &b[2..]))
                });
                let fetched_path = fetched.clone();
                local
                    .chain(fetched)
                    .find_map(|path| {
                        let f = untrusted::open_regular(&path).ok()?;
                        if !untrusted::root_controlled(&f) {
                            untrusted::count(What::DebugFile, Refusal::NotOwner);
                            return None;
                        }
                        let real = std::fs::read_link(fd_path(&f)).ok()?;
                        Some(DebugFile {
                            path: real.to_str()?.to_string(),
                            segments: segments.clone(),
                            trusted: true,
                            fetched: fetched_path.as_ref() == Some(&path),
                            _held: None,
                        })
                    })
                    .or_else(|| container_debug_file(procs, id, b, &segments))
            });
        if let Some(f) = &found {
            self.debug_files += 1;
            if f.fetched {
                if let Some(d) = &self.debuginfod {
                    d.count_hit();
                }
            }
        }
        self.names[id].debug = Some(found.clone());
        found
    }

    /// Drops what was parsed of files the table closed and the names of
    /// binaries it forgot. Runs before anything is parsed, so no parse
    /// outlives its file (a descriptor number may name another file next).
    fn sync(&mut self, procs: &mut ProcessTable) {
        for r in procs.take_releases() {
            match r {
                Release::Closed { id, fd_path } => {
                    self.evict(&fd_path);
                    if let Some(n) = self.names.get_mut(id) {
                        if n.parsed.as_deref() == Some(&*fd_path) {
                            n.parsed = None;
                        }
                    }
                }
                Release::Forgotten(id) => {
                    self.wants_debug.remove(&id);
                    if let Some(Some(Some((mini, _)))) = self.names.get(id).map(|n| &n.mini) {
                        let path = fd_path(mini);
                        self.evict(&path);
                    }
                    if let Some(path) = self.names.get_mut(id).and_then(|n| n.parsed.take()) {
                        self.evict(&path);
                    }
                    if let Some(n) = self.names.get_mut(id) {
                        *n = Names::default();
                    }
                }
            }
        }
    }

    fn evict(&mut self, fd_path: &str) {
        let _ = self.blaze.evict(&blazesym::symbolize::evict::Evict::Elf(
            blazesym::symbolize::evict::Elf::new(fd_path),
        ));
    }

    fn ensure_names(&mut self, id: BinaryId) {
        if self.names.len() <= id {
            self.names.resize_with(id + 1, Names::default);
        }
    }

    /// Whether blazesym may index the binary: root-controlled files
    /// always; others only while their symbol tables are within bounds
    /// (checked just before each first parse).
    fn indexable(&mut self, procs: &mut ProcessTable, id: BinaryId) -> bool {
        let b = procs.binary(id);
        if b.trusted() || self.names.get(id).is_some_and(|n| n.parsed.is_some()) {
            return true;
        }
        let Some(f) = b.file() else { return false };
        match untrusted::elf_tables_within_limits(f) {
            Ok(()) => true,
            Err(why) => {
                untrusted::count(What::Binary, why);
                procs.mark_broken(id);
                false
            }
        }
    }

    /// Symbolizes file offsets of one binary in one batch, filling its cache.
    pub fn symbolize_binary(
        &mut self,
        procs: &mut ProcessTable,
        id: BinaryId,
        offsets: &mut Vec<u64>,
    ) {
        self.ensure_names(id);
        let cache = &self.names[id].cache;
        if !uncached(
            offsets,
            |o| cache.contains_key(o),
            &mut self.lookups,
            &mut self.misses,
        ) {
            return;
        }
        let n = offsets.len();
        let results: Vec<Frames> = if procs.binary(id).vdso {
            match own_vdso_start() {
                Some(base) => {
                    let addrs: Vec<u64> = offsets.iter().map(|o| base + o).collect();
                    let src = Source::Process(ProcSource::new(blazesym::Pid::Slf));
                    self.run(&src, Input::AbsAddr(&addrs[..]))
                        .unwrap_or_else(|_| vec![Frames::from([]); n])
                }
                None => vec![Frames::from([]); n],
            }
        } else if procs.open(id).is_some() && {
            // Opening may have closed others: drop their parses first.
            self.sync(procs);
            self.indexable(procs, id)
        } {
            // A separate debug file (only root can change it) is asked by
            // address: its sections are laid out apart from the binary's.
            let (path, trusted, addrs, source) = match self.debug_file(procs, id) {
                Some(debug) => {
                    let addrs: Vec<u64> = offsets
                        .iter()
                        .map(|&o| to_vaddr(&debug.segments, o))
                        .collect();
                    let source = if debug.fetched {
                        NameSource::Debuginfod
                    } else {
                        NameSource::DebugFile
                    };
                    (debug.path, debug.trusted, Some(addrs), source)
                }
                None => {
                    let b = procs.binary(id);
                    let path = fd_path(b.file().expect("opened"));
                    (path, b.trusted(), None, NameSource::Own)
                }
            };
            let mut elf = Elf::new(&path);
            elf.debug_syms = trusted;
            let src = Source::Elf(elf);
            let input = match &addrs {
                Some(a) => Input::VirtOffset(&a[..]),
                None => Input::FileOffset(&offsets[..]),
            };
            let outcome = untrusted::guarded(|| self.run(&src, input));
            match outcome {
                Ok(Ok(r)) => {
                    self.names[id].parsed = Some(path);
                    self.named
                        .add(source, r.iter().filter(|f| !f.is_empty()).count());
                    if addrs.is_none() && r.iter().any(|f| f.is_empty()) {
                        // Stripped: names its .dynsym lacks may be in its
                        // MiniDebugInfo.
                        self.fill_from_minidebug(procs, id, offsets, r)
                    } else {
                        r
                    }
                }
                failed => {
                    // Truncated under blazesym (counted as a refusal) or
                    // not a readable ELF file: drop everything read from
                    // it; its frames count as an unreadable binary's.
                    if let Err(why) = failed {
                        untrusted::count(What::Binary, why);
                    }
                    self.evict(&path);
                    self.names[id].parsed = None;
                    procs.mark_broken(id);
                    vec![Frames::from([]); n]
                }
            }
        } else {
            vec![Frames::from([]); n]
        };
        self.sync(procs);
        if self.debuginfod.is_some()
            && results.iter().any(|f| f.is_empty())
            && matches!(self.names[id].debug, Some(None))
            && procs.binary(id).build_id.is_some()
        {
            self.wants_debug.insert(id);
        }
        let epoch = self.epoch;
        let names = &mut self.names[id];
        names.used = epoch;
        for (o, frames) in offsets.iter().zip(results) {
            names.cache.insert(*o, frames);
        }
    }

    /// Cached frames of a binary's file offset (after `symbolize_binary`).
    pub fn binary_frames(&self, id: BinaryId, offset: u64) -> Frames {
        self.names
            .get(id)
            .and_then(|n| n.cache.get(&offset))
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
    /// from its perf map ([`ProcessTable::open_perf_map`]) in one pass,
    /// filling the cache [`jit_name`] reads.
    ///
    /// [`jit_name`]: Self::jit_name
    pub fn symbolize_jit(&mut self, procs: &ProcessTable, pid: u32, addrs: &mut Vec<u64>) {
        addrs.sort_unstable();
        addrs.dedup();
        addrs.retain(|a| !self.jit.contains_key(&(pid, *a)));
        if addrs.is_empty() {
            return;
        }
        let budget = untrusted::PERF_MAP_BUDGET_BYTES.saturating_sub(self.perf_map_bytes);
        let names = match procs.open_perf_map(pid) {
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
        let epoch = self.epoch;
        let idle: Vec<String> = self
            .names
            .iter_mut()
            .filter(|n| epoch.saturating_sub(n.used) > idle)
            .filter_map(|n| n.parsed.take())
            .collect();
        for path in idle {
            self.evict(&path);
        }
    }

    /// Cache sizes and counts, with the process table's.
    pub fn stats(&self, procs: &ProcessTable) -> SymStats {
        let t = procs.stats();
        SymStats {
            processes: t.processes,
            binaries: t.binaries,
            cached_addresses: self.kernel.len()
                + self.names.iter().map(|n| n.cache.len()).sum::<usize>(),
            lookups: self.lookups,
            misses: self.misses,
            open_files: t.open_files,
            unnamed: self.unnamed,
            debug_files: self.debug_files,
            minidebug_files: self.minidebug_files,
            named: self.named,
        }
    }

    fn run(&self, src: &Source<'_>, input: Input<&[u64]>) -> blazesym::Result<Vec<Frames>> {
        let syms = self.blaze.symbolize(src, input)?;
        Ok(syms.into_iter().map(|s| to_frames(&s)).collect())
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

/// The debug file of a binary mapped in a container (or one others can
/// change), inside its process's root: by build ID under `/usr/lib/debug/.build-id/`, else by
/// its `.gnu_debuglink` name beside the binary, in its `.debug/` and under
/// `/usr/lib/debug/` + its directory, as gdb looks. Each is opened there
/// under the safe-open rules, as readable by the process's own user. Others
/// control it: it must carry the binary's build ID (which also stands for
/// the link's CRC) and symbol tables within bounds, and only its symbol
/// tables are read (no DWARF).
fn container_debug_file(
    procs: &ProcessTable,
    id: BinaryId,
    build_id: &str,
    segments: &[(u64, u64, u64)],
) -> Option<DebugFile> {
    let (pid, creds, bin_path) = procs.foreign_mapper(id)?;
    let creds = creds.or_else(|| untrusted::Creds::of(pid).ok())?;
    let mut candidates = vec![format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &build_id[..2],
        &build_id[2..]
    )];
    let link = procs.binary(id).file().and_then(minidebug::debuglink);
    let dir = std::path::Path::new(&*bin_path).parent();
    if let (Some(link), Some(dir)) = (link, dir.and_then(|d| d.to_str())) {
        candidates.push(format!("{dir}/{link}"));
        candidates.push(format!("{dir}/.debug/{link}"));
        candidates.push(format!("/usr/lib/debug{dir}/{link}"));
    }
    let policy = crate::untrusted::Policy {
        no_symlinks: false,
        owner_or_root: false,
        max_bytes: 1 << 30,
    };
    candidates.into_iter().find_map(|path| {
        let f = untrusted::open_in_root(
            crate::untrusted::Root::Process(pid),
            &path,
            &creds,
            policy,
            What::DebugFile,
        )
        .ok()?;
        let fd = fd_path(&f);
        let same =
            untrusted::guarded(|| blazesym::helper::read_elf_build_id(std::path::Path::new(&fd)))
                .ok()
                .and_then(|r| r.ok().flatten())
                .is_some_and(|got| {
                    got.iter().map(|x| format!("{x:02x}")).collect::<String>() == build_id
                });
        if !same {
            untrusted::count(What::DebugFile, Refusal::Changed);
            return None;
        }
        if let Err(why) = untrusted::elf_tables_within_limits(&f) {
            untrusted::count(What::DebugFile, why);
            return None;
        }
        Some(DebugFile {
            path: fd,
            segments: segments.to_vec(),
            trusted: false,
            fetched: false,
            _held: Some(Arc::new(f)),
        })
    })
}

/// The loadable segments (file offset, virtual address, file size) of an
/// ELF64 file, from its program headers (read with two bounded reads; a
/// malformed file has none).
fn load_segments(file: &std::fs::File) -> Vec<(u64, u64, u64)> {
    use std::os::unix::fs::FileExt;
    let mut eh = [0u8; 64];
    if file.read_exact_at(&mut eh, 0).is_err() || eh[..4] != *b"\x7fELF" || eh[4] != 2 {
        return Vec::new();
    }
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]) as usize;
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default());
    let (phoff, phentsize, phnum) = (u64_at(&eh, 0x20), u16_at(&eh, 0x36), u16_at(&eh, 0x38));
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return Vec::new();
    }
    let mut ph = vec![0u8; phentsize * phnum];
    if file.read_exact_at(&mut ph, phoff).is_err() {
        return Vec::new();
    }
    ph.chunks_exact(phentsize)
        .filter(|p| u32::from_le_bytes([p[0], p[1], p[2], p[3]]) == 1)
        .map(|p| (u64_at(p, 8), u64_at(p, 16), u64_at(p, 32)))
        .collect()
}

/// The virtual address of a file offset, by the segment holding it (the
/// offset itself when none does).
fn to_vaddr(segments: &[(u64, u64, u64)], offset: u64) -> u64 {
    segments
        .iter()
        .find(|&&(off, _, size)| offset >= off && offset - off < size)
        .map_or(offset, |&(off, vaddr, _)| vaddr + (offset - off))
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
