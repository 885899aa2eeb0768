//! process: the processes a capture session sees and the binaries they map.
//!
//! One [`ProcessTable`] per session owns what ember knows of every profiled
//! process (its executable mappings, start time, credentials, namespaces)
//! and of every binary those mappings name: its identity on disk (device
//! and inode), its build ID and the open file it is read through. The
//! symbolizer and the unwinder only read it. It holds the one exit rule
//! ([`maps::is_live`]) and the one way binaries are opened: through
//! [`crate::untrusted`], `/proc/PID/map_files` first (the very file
//! mapped), else by path inside the process's root, checked to be the
//! file with the mapping's device and inode. Open binaries are bounded by
//! a file descriptor budget: the least recently used are closed first and
//! reopened through a live process that maps them when needed.
//!
//! Files closed or binary slots reused are reported as [`Release`]s, which
//! the symbolizer takes ([`ProcessTable::take_releases`]) before it parses
//! anything, so no parsed state outlives its file.

pub mod maps;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;

use crate::sample::mappings::MapEvent;
use crate::untrusted::{self, Policy, Refusal, Root, What};

/// Most processes known from the kernel's mmap records only (not yet
/// announced by the sampler) kept at once; they are forgotten at the
/// second garbage collection that finds them not sampled.
pub const MAX_UNSAMPLED: usize = 4096;

pub use maps::{is_live, FileKey, Mapping, Process};

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
    /// Only root can change it and it lives in ember's mount namespace:
    /// its DWARF may be read and its debug links followed.
    dwarf: bool,
    /// The file changed under ember while read: never read again.
    broken: bool,
    /// Last use, for closing the least recently used file.
    touched: u64,
    /// It was opened at least once (closing it for the budget does not
    /// make it unknown).
    opened_once: bool,
}

impl Binary {
    fn new(path: Arc<str>, key: Option<FileKey>, file: Option<File>, vdso: bool) -> Binary {
        Binary {
            path,
            build_id: None,
            vdso,
            key,
            file,
            dwarf: false,
            broken: false,
            touched: 0,
            opened_once: false,
        }
    }

    /// Whether ember could read the file (it may still lack symbols).
    pub fn readable(&self) -> bool {
        self.vdso || (self.key.is_some() && !self.broken && self.file.is_some())
    }

    /// Whether DWARF may be read and debug links followed (root-controlled
    /// files in ember's own mount namespace only).
    pub fn trusted(&self) -> bool {
        self.dwarf
    }

    /// The open file, when held.
    pub fn file(&self) -> Option<&File> {
        self.file.as_ref()
    }
}

/// Binary handle: an index into the table, reused after the binary is
/// forgotten (reported as [`Release::Forgotten`]).
pub type BinaryId = usize;

/// Something readers of a binary must drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The binary's file was closed; what was parsed through `fd_path`
    /// must go (the descriptor number may be reused by another file).
    Closed {
        /// The binary.
        id: BinaryId,
        /// The path the file was read by (`/proc/self/fd/N`).
        fd_path: String,
    },
    /// The binary was forgotten (its id will name another binary), or
    /// became readable: what was cached of it must go.
    Forgotten(BinaryId),
}

/// Counts for the summary and `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TableStats {
    /// Processes tracked.
    pub processes: usize,
    /// Binary slots (in use or free).
    pub binaries: usize,
    /// Binary files held open.
    pub open_files: usize,
    /// Mapping records ignored: too many processes the sampler had not
    /// announced.
    pub records_dropped: u64,
}

/// Every process and binary of a capture session.
pub struct ProcessTable {
    processes: HashMap<u32, Process>,
    binaries: Vec<Binary>,
    /// Slots of binaries forgotten, reused before the table grows.
    free: Vec<BinaryId>,
    by_file: HashMap<FileKey, BinaryId>,
    vdso_binary: Option<BinaryId>,
    open_files: usize,
    fd_budget: usize,
    tick: u64,
    releases: Vec<Release>,
    /// Processes known from records only, and records ignored past
    /// [`MAX_UNSAMPLED`].
    unsampled: usize,
    records_dropped: u64,
}

impl Default for ProcessTable {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessTable {
    /// An empty table, with a descriptor budget from the process's limit.
    pub fn new() -> ProcessTable {
        ProcessTable {
            processes: HashMap::new(),
            binaries: Vec::new(),
            free: Vec::new(),
            by_file: HashMap::new(),
            vdso_binary: None,
            open_files: 0,
            fd_budget: untrusted::binary_fd_budget(),
            tick: 0,
            releases: Vec::new(),
            unsampled: 0,
            records_dropped: 0,
        }
    }

    /// An empty table that holds at most `budget` binary files open (at
    /// least one).
    pub fn with_fd_budget(budget: usize) -> ProcessTable {
        ProcessTable {
            fd_budget: budget.max(1),
            ..ProcessTable::new()
        }
    }

    /// Captures (or refreshes) a process's mappings and opens its binaries.
    /// Call it as soon as a process is first seen, while it lives.
    pub fn capture(&mut self, pid: u32) {
        self.capture_inner(pid, false);
    }

    /// Captures a process the sampler announced (first sample or exec:
    /// after an exec the old image is gone).
    pub fn on_event(&mut self, e: crate::sample::ProcessEvent) {
        self.capture_inner(e.pid, e.exec);
    }

    /// Takes in what the kernel reported of a mapping, exec or fork (see
    /// [`crate::sample::mappings`]): a process's mappings are known, and
    /// its binaries opened, even when it exits before `/proc` is read.
    pub fn on_map_event(&mut self, e: MapEvent) {
        match e {
            MapEvent::Mmap {
                pid,
                start,
                len,
                pgoff,
                dev,
                ino,
                path,
            } => {
                let m = Mapping::new(start, start.saturating_add(len), pgoff, dev, ino, &path);
                if m.end <= m.start || !self.recorded(pid) {
                    return;
                }
                let p = &self.processes[&pid];
                if p.mappings.len() >= maps::MAX_EXEC_MAPPINGS {
                    return;
                }
                let same_ns = p.same_mount_ns;
                if let Some(key) = m.file {
                    self.register_binary(pid, key, &m, same_ns);
                } else if m.vdso && self.vdso_binary.is_none() {
                    let id = self.add_binary(Binary::new(m.path.clone(), None, None, true));
                    self.vdso_binary = Some(id);
                }
                if let Some(p) = self.processes.get_mut(&pid) {
                    p.insert(m);
                }
            }
            MapEvent::Exec { pid } => {
                // The old image's mappings stay until new ones overlap
                // them: samples taken inside execve (after the new image
                // is set up, before the old registers are replaced) still
                // point into the old one.
                if self.recorded(pid) {
                    if let Some(p) = self.processes.get_mut(&pid) {
                        p.exec_recorded = true;
                        p.retire();
                    }
                }
            }
            MapEvent::Fork { pid, ppid } => {
                let Some(parent) = self.processes.get(&ppid) else {
                    return;
                };
                if self.processes.contains_key(&pid) {
                    return;
                }
                let mappings = parent.mappings.clone();
                if self.recorded(pid) {
                    if let Some(p) = self.processes.get_mut(&pid) {
                        p.mappings = mappings;
                    }
                }
            }
        }
    }

    /// Makes sure `pid` has an entry for the kernel's records, within the
    /// bound on processes the sampler has not announced; false past it.
    fn recorded(&mut self, pid: u32) -> bool {
        if self.processes.contains_key(&pid) {
            return true;
        }
        if self.unsampled >= MAX_UNSAMPLED {
            self.records_dropped += 1;
            return false;
        }
        self.unsampled += 1;
        // Only what telling a reused pid apart and reading DWARF need: the
        // rest is read when the sampler announces it.
        self.processes.insert(
            pid,
            Process {
                ns_pid: pid,
                start_time: maps::start_time(pid).unwrap_or(0),
                same_mount_ns: maps::same_mount_ns(pid).unwrap_or(false),
                ..Default::default()
            },
        );
        true
    }

    fn capture_inner(&mut self, pid: u32, replace: bool) {
        let started = maps::start_time(pid).unwrap_or(0);
        // From here on it is a process of the session's, not only one the
        // kernel's records told of.
        if self.processes.get(&pid).is_some_and(|p| !p.sampled) {
            self.unsampled -= 1;
        }
        let Ok(found) = maps::read_mappings(pid) else {
            let p = self.processes.entry(pid).or_insert_with(|| Process {
                ns_pid: pid,
                ..Default::default()
            });
            p.exited = true;
            if !p.sampled {
                p.sampled = true;
                p.gone_seen = false;
            }
            return;
        };
        let same_ns = maps::same_mount_ns(pid);
        for m in &found {
            if let Some(key) = m.file {
                self.register_binary(pid, key, m, same_ns == Some(true));
            } else if m.vdso && self.vdso_binary.is_none() {
                let id = self.add_binary(Binary::new(m.path.clone(), None, None, true));
                self.vdso_binary = Some(id);
            }
        }
        let ns_pid = maps::ns_pid(pid);
        let creds = untrusted::Creds::of(pid).ok();
        let p = self.processes.entry(pid).or_default();
        // A reused pid is another process: nothing of the old one applies
        // (an unknown start time is a process known from records only).
        // After an exec the old image is gone, unless the kernel's records
        // already replaced it.
        if (replace && !p.exec_recorded) || (p.start_time != started && p.start_time != 0) {
            p.mappings.clear();
        }
        if replace {
            p.exec_recorded = false;
        }
        if !p.sampled {
            p.sampled = true;
            p.gone_seen = false;
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
        p.merge(found);
        p.mappings.truncate(maps::MAX_EXEC_MAPPINGS);
    }

    /// Re-reads a live process, to pick up libraries loaded since it was
    /// captured.
    pub fn refresh(&mut self, pid: u32) {
        if !self.processes.get(&pid).is_some_and(|p| p.exited) {
            self.capture(pid);
        }
    }

    /// Applies the one exit rule ([`is_live`]) to every tracked process and
    /// returns the processes found gone that were not reported before.
    /// They stay (samples drained later still need their mappings) until
    /// [`forget_exited`](Self::forget_exited).
    pub fn mark_exited(&mut self) -> Vec<u32> {
        let mut newly = Vec::new();
        for (&pid, p) in self.processes.iter_mut() {
            if !p.exited && !is_live(pid, Some(p.start_time), false) {
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
    /// just after an exit still symbolize), and forgets binaries no tracked
    /// process maps any more: memory and descriptors stay bounded under
    /// process churn. Call once per window, after
    /// [`mark_exited`](Self::mark_exited). Without `sampled_too`, only
    /// processes the sampler never announced go (a recording keeps every
    /// sampled process for its one build at the end). Returns the pids
    /// forgotten.
    pub fn forget_exited(&mut self, sampled_too: bool) -> Vec<u32> {
        let mut gone = Vec::new();
        for (&pid, p) in self.processes.iter_mut() {
            // Known from the kernel's records only: kept for one round,
            // long enough for a process that runs to be announced; one that
            // does not run costs nothing past it (if it runs later, it is
            // read from /proc while it lives).
            let idle = !p.sampled;
            if (p.exited || idle) && p.gone_seen && (sampled_too || idle) {
                gone.push(pid);
                continue;
            }
            p.gone_seen = p.exited || idle;
        }
        for pid in &gone {
            if self.processes.remove(pid).is_some_and(|p| !p.sampled) {
                self.unsampled -= 1;
            }
        }
        let live: HashSet<FileKey> = self
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
            self.releases.push(Release::Forgotten(id));
        }
        gone
    }

    /// Takes what readers must drop since the last call: call before
    /// reading any binary through a path of its descriptor.
    pub fn take_releases(&mut self) -> Vec<Release> {
        std::mem::take(&mut self.releases)
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

    fn close_file(&mut self, id: BinaryId) {
        if let Some(f) = self.binaries[id].file.take() {
            self.releases.push(Release::Closed {
                id,
                fd_path: fd_path(&f),
            });
            self.open_files -= 1;
        }
    }

    /// Closes a binary for good: it changed under a reader (truncated,
    /// or its symbol tables out of bounds), so nothing of it is read again.
    pub fn mark_broken(&mut self, id: BinaryId) {
        self.close_file(id);
        self.binaries[id].broken = true;
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

    /// Registers the binary a process maps at `m` and opens it. A binary
    /// seen before is opened again only if it never could be (its first
    /// process was gone, or in a root ember could not enter): this one
    /// may let ember in.
    fn register_binary(&mut self, pid: u32, key: FileKey, m: &Mapping, same_ns: bool) {
        let known = self.by_file.get(&key).copied();
        if let Some(id) = known {
            let b = &self.binaries[id];
            if b.opened_once || b.broken {
                return;
            }
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
        if known.is_some() && file.is_none() && !broken {
            return;
        }
        if file.is_some() {
            self.open_files += 1;
        }
        self.tick += 1;
        let mut b = Binary::new(m.path.clone(), Some(key), file, false);
        b.opened_once = b.file.is_some();
        b.build_id = build_id;
        b.dwarf = dwarf;
        b.broken = broken;
        b.touched = self.tick;
        match known {
            Some(id) => {
                self.binaries[id] = b;
                // Names cached while it was unreadable are empty: drop them.
                self.releases.push(Release::Forgotten(id));
            }
            None => {
                let id = self.add_binary(b);
                self.by_file.insert(key, id);
            }
        }
    }

    /// The open file of a binary, reopened (through a live process that
    /// maps it) if it was closed for the descriptor budget; None when it
    /// cannot be read.
    pub fn open(&mut self, id: BinaryId) -> Option<&File> {
        if self.binaries[id].file.is_none() && !self.reopen(id) {
            return None;
        }
        self.tick += 1;
        self.binaries[id].touched = self.tick;
        self.binaries[id].file.as_ref()
    }

    /// A live process that maps the binary, with its mapping.
    fn live_mapper(&self, key: FileKey) -> Option<(u32, &Process, &Mapping)> {
        self.processes.iter().find_map(|(&pid, p)| {
            if p.exited {
                return None;
            }
            p.mappings
                .iter()
                .find(|m| m.file == Some(key))
                .map(|m| (pid, p, m))
        })
    }

    /// A live process that maps the binary, when the binary's debug files
    /// must be looked up inside that process's root (it lives in another
    /// mount namespace, a container's, or others can change the binary),
    /// with its credentials and the binary's path there.
    pub fn foreign_mapper(
        &self,
        id: BinaryId,
    ) -> Option<(u32, Option<untrusted::Creds>, Arc<str>)> {
        let b = &self.binaries[id];
        let key = b.key?;
        let (pid, p, m) = self.live_mapper(key)?;
        // blazesym follows the debug links of binaries only root can
        // change in ember's own namespace; every other binary is looked up
        // here, inside its process's root.
        (!p.same_mount_ns || !b.dwarf).then(|| (pid, p.creds.clone(), m.path.clone()))
    }

    fn reopen(&mut self, id: BinaryId) -> bool {
        let b = &self.binaries[id];
        let Some(key) = b.key.filter(|_| !b.broken) else {
            return false;
        };
        let found = self.live_mapper(key).map(|(pid, _, m)| (pid, m.clone()));
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

    /// The open file of the binary with this identity (see
    /// [`open`](Self::open)), for the unwind table builder.
    pub fn file_of(&mut self, key: FileKey) -> Option<&File> {
        let id = *self.by_file.get(&key)?;
        self.open(id)
    }

    /// The processes captured and not exited, in no order.
    pub fn live_pids(&self) -> Vec<u32> {
        self.processes
            .iter()
            .filter(|(_, p)| !p.exited)
            .map(|(&pid, _)| pid)
            .collect()
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

    /// The process's perf map (`/tmp/perf-PID.map`, PID as the process
    /// sees itself), opened inside its root without following links; it
    /// must belong to the process's user or root, as perf requires. After
    /// the process exited, only if it shared ember's root.
    pub fn open_perf_map(&self, pid: u32) -> Option<File> {
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

    /// Counts for the summary and `/metrics`.
    pub fn stats(&self) -> TableStats {
        TableStats {
            processes: self.processes.len(),
            binaries: self.binaries.len(),
            open_files: self.open_files,
            records_dropped: self.records_dropped,
        }
    }
}

/// The path a held file is read by.
pub fn fd_path(f: &File) -> String {
    format!("/proc/self/fd/{}", f.as_raw_fd())
}
