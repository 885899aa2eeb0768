//! unwind: the unwind tables the BPF sampler walks user stacks with.
//!
//! Tables are built once per binary (device + inode), loaded into the
//! sampler's `unwind_tables` map as one array each, and shared by every
//! process that maps the binary. Each process gets a `proc_unwind` entry
//! listing its executable mappings and their tables. A table no process
//! references is kept for a while (a program run again and again reuses it),
//! then freed; the total is bounded by a memory budget.
//!
//! Tables are built on a background thread: a big binary takes tens of
//! milliseconds, and the event loop must keep capturing short-lived
//! processes meanwhile. Until its tables arrive a process unwinds with frame
//! pointers, then it is registered again.

pub mod table;

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use libbpf_rs::{MapFlags, MapHandle, MapType};

use crate::process::{FileKey, ProcessTable};
use crate::sample::abi::{
    self, ProcUnwind, UnwindMapping, MAPPING_SLOTS, MAX_MAPPINGS, MAX_TABLES,
};
use crate::sample::Sampler;
pub use table::Table;

/// Unreferenced tables are freed after this many [`Unwinder::gc`] calls.
const IDLE_GCS: u32 = 4;
/// A process is re-read for new mappings at most this often at first; each
/// re-read that finds nothing new doubles the wait (code outside every
/// mapping may be a wild frame-pointer guess, not a new library), up to
/// [`MAX_REFRESH_INTERVAL`].
const REFRESH_INTERVAL: Duration = Duration::from_millis(10);
const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// Counters for summaries and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnwindStats {
    /// Tables loaded in the kernel now.
    pub tables: usize,
    /// Rows in them.
    pub rows: u64,
    /// Kernel memory they take.
    pub bytes: u64,
    /// Largest `bytes` seen.
    pub peak_bytes: u64,
    /// Processes with mappings registered.
    pub processes: usize,
    /// Tables built so far, and the time spent building them.
    pub built: u64,
    /// Time spent building tables.
    pub build_time: Duration,
    /// Binaries without usable CFI (frame pointers for them): no
    /// `.eh_frame`/`.debug_frame`, not x86-64, or past the read bounds.
    pub no_cfi: u64,
    /// Tables the kernel refused to take (map creation or fill failed).
    pub load_failed: u64,
    /// Tables not loaded because the memory budget was used up.
    pub over_budget: u64,
    /// Processes not registered: the shared mappings array was full.
    pub mappings_full: u64,
    /// Process registrations written (first sample, exec, new tables).
    pub registrations: u64,
    /// Re-reads of a process's mappings because code ran outside them.
    pub refreshes: u64,
}

struct Registered {
    /// The mappings' start addresses, to tell whether a re-read found
    /// anything new.
    starts: Vec<u64>,
    keys: Vec<FileKey>,
    first: u32,
    count: u32,
}

struct Slot {
    /// Id in `unwind_tables`; 0 while not loaded.
    id: u32,
    /// The loaded table's placement (its rows live in the kernel only).
    table: Option<table::Placement>,
    handle: Option<MapHandle>,
    refs: u32,
    idle: u32,
    /// No usable CFI: not read again.
    failed: bool,
    /// Queued on the builder thread.
    building: bool,
}

type Built = (FileKey, anyhow::Result<Table>, Duration);

/// Why a binary's table is not in the kernel (yet): its frames are walked
/// with frame pointers meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTable {
    /// Queued on the builder thread; the process is registered again when
    /// it is loaded.
    Building,
    /// The binary's file could not be opened (gone, refused).
    Unreadable,
    /// No usable CFI (remembered: the file is not read again).
    NoCfi,
    /// The memory budget (`--unwind-memory`) is used up.
    OverBudget,
    /// The kernel refused the table (remembered).
    LoadFailed,
}

/// Whether a binary's table is loaded.
type Loaded = Result<(), NoTable>;

impl Slot {
    fn empty() -> Slot {
        Slot {
            id: 0,
            table: None,
            handle: None,
            refs: 0,
            idle: 0,
            failed: false,
            building: false,
        }
    }

    /// The settled outcome of this slot, if any (None: not tried yet).
    fn state(&self) -> Option<Loaded> {
        if self.id != 0 {
            Some(Ok(()))
        } else if self.failed {
            Some(Err(NoTable::NoCfi))
        } else if self.building {
            Some(Err(NoTable::Building))
        } else {
            None
        }
    }
}

/// The vDSO has no file: a key no file can have.
const VDSO_KEY: FileKey = (-1, -1, 0);

/// A copy of this process's vDSO image.
fn own_vdso() -> Option<Vec<u8>> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let line = maps.lines().find(|l| l.ends_with("[vdso]"))?;
    let (a, b) = line.split_whitespace().next()?.split_once('-')?;
    let start = usize::from_str_radix(a, 16).ok()?;
    let end = usize::from_str_radix(b, 16).ok()?;
    // SAFETY: the kernel maps the vDSO readable for the life of the
    // process; the range is exactly its mapping.
    Some(unsafe { std::slice::from_raw_parts(start as *const u8, end - start) }.to_vec())
}

fn mapping_starts(p: &crate::process::Process) -> Vec<u64> {
    p.current().map(|m| m.start).collect()
}

/// Owns the unwind tables of one sampler.
pub struct Unwinder {
    slots: HashMap<FileKey, Slot>,
    procs: HashMap<u32, Registered>,
    /// Free runs (first, len) of the sampler's `unwind_mappings` array.
    free: Vec<(u32, u32)>,
    /// When each process was last registered, and the wait before the
    /// next re-read for new mappings.
    refreshed: HashMap<u32, (Instant, Duration)>,
    pending: Vec<u32>,
    /// Unused slots of the sampler's `unwind_tables` array (0 means none).
    free_ids: Vec<u32>,
    budget: u64,
    stats: UnwindStats,
    /// Processes waiting for a table being built.
    waiting: HashMap<FileKey, Vec<u32>>,
    jobs: std::sync::mpsc::Sender<(FileKey, File)>,
    done: std::sync::mpsc::Receiver<Built>,
    blocking: bool,
}

impl Unwinder {
    /// An unwinder whose tables may take up to `budget` bytes of kernel memory.
    pub fn new(budget: u64) -> Unwinder {
        let (jobs, todo) = std::sync::mpsc::channel::<(FileKey, File)>();
        let (finished, done) = std::sync::mpsc::channel();
        // Ends when the Unwinder (the job sender) is dropped.
        let _ = std::thread::Builder::new()
            .name("ember-unwind".into())
            .spawn(move || {
                for (key, file) in todo {
                    let t0 = Instant::now();
                    let t = Table::build(&file);
                    if finished.send((key, t, t0.elapsed())).is_err() {
                        break;
                    }
                }
            });
        Unwinder {
            waiting: HashMap::new(),
            jobs,
            done,
            slots: HashMap::new(),
            procs: HashMap::new(),
            free: vec![(0, MAPPING_SLOTS)],
            refreshed: HashMap::new(),
            pending: Vec::new(),
            free_ids: (1..MAX_TABLES).rev().collect(),
            budget,
            stats: UnwindStats::default(),
            blocking: false,
        }
    }

    /// Builds the tables of processes seen in events on the caller's thread
    /// before registering them, instead of in the background. For a few
    /// followed processes (`record -- cmd`): their first samples unwind
    /// fully, at the price of a few milliseconds per new binary in the
    /// event loop, which a host-wide agent cannot afford.
    pub fn set_blocking(&mut self, blocking: bool) {
        self.blocking = blocking;
    }

    /// Builds and loads the table of a file ahead of time (e.g. the program
    /// `ember record -- cmd` is about to run), so its first samples unwind.
    pub fn preload(&mut self, sampler: &Sampler, path: &std::path::Path) {
        let Ok(file) = crate::untrusted::open_regular(path) else {
            return;
        };
        let Ok(meta) = file.metadata() else { return };
        let dev = meta.dev();
        let key: FileKey = (libc::major(dev) as i32, libc::minor(dev) as i32, meta.ino());
        if self.ensure_now(sampler, key, &file).is_ok() {
            // Held by nobody yet: freed by gc if no process maps it.
            if let Some(s) = self.slots.get_mut(&key) {
                s.idle = 0;
            }
        }
    }

    /// Preloads the tables of the shared libraries ember itself maps (the
    /// C library and the dynamic loader every child maps too).
    pub fn preload_own_libraries(&mut self, sampler: &Sampler) {
        // Loading a table costs an RCU grace period (10-20 ms of wall
        // time for the map-in-map update): do the vDSO's now, not while
        // the new process already runs.
        let _ = self.ensure_vdso(sampler);
        let Ok(maps) = crate::process::maps::read_mappings(std::process::id()) else {
            return;
        };
        let me = std::env::current_exe().ok();
        for m in maps {
            let path = std::path::Path::new(&*m.path);
            if m.file.is_some() && me.as_deref() != Some(path) && path.is_absolute() {
                self.preload(sampler, path);
            }
        }
    }

    /// Handles a sampler event after the process table captured the process:
    /// registers its mappings (rate-limited for new-mapping events).
    pub fn on_event(
        &mut self,
        sampler: &Sampler,
        procs: &mut ProcessTable,
        e: crate::sample::ProcessEvent,
    ) {
        if e.new_mapping {
            let now = Instant::now();
            let due = self
                .refreshed
                .get(&e.pid)
                .is_none_or(|(t, wait)| now.duration_since(*t) >= *wait);
            if !due {
                if !self.pending.contains(&e.pid) {
                    self.pending.push(e.pid);
                }
                return;
            }
            procs.refresh(e.pid);
            self.stats.refreshes += 1;
        }
        if self.blocking {
            self.register_now(sampler, procs, e.pid);
        } else {
            self.register(sampler, procs, e.pid);
        }
    }

    /// How long until the next deferred refresh is due, if one waits: the
    /// owner's poll should wake by then.
    pub fn next_due(&self) -> Option<Duration> {
        let now = Instant::now();
        self.pending
            .iter()
            .filter_map(|pid| self.refreshed.get(pid))
            .map(|(t, wait)| (*t + *wait).saturating_duration_since(now))
            .min()
    }

    /// Processes deferred new-mapping refreshes that are now due. Call
    /// regularly (each loop iteration).
    pub fn tick(&mut self, sampler: &Sampler, procs: &mut ProcessTable) {
        while let Ok((key, built, took)) = self.done.try_recv() {
            if let Some(s) = self.slots.get_mut(&key) {
                s.building = false;
            }
            let _ = self.install(sampler, key, built, took);
            for pid in self.waiting.remove(&key).unwrap_or_default() {
                if self.procs.contains_key(&pid) {
                    self.register(sampler, procs, pid);
                }
            }
        }
        if self.pending.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut due = Vec::new();
        self.pending.retain(|pid| {
            let ready = self
                .refreshed
                .get(pid)
                .is_none_or(|(t, wait)| now.duration_since(*t) >= *wait);
            if ready {
                due.push(*pid);
            }
            !ready
        });
        for pid in due {
            procs.refresh(pid);
            self.stats.refreshes += 1;
            self.register(sampler, procs, pid);
        }
    }

    /// Builds every table a process needs on this thread, then registers
    /// it: for a process already running when profiling starts (`--pid`),
    /// so its first samples unwind fully instead of waiting for the
    /// background builder.
    pub fn register_now(&mut self, sampler: &Sampler, procs: &mut ProcessTable, pid: u32) {
        let Some(proc) = procs.process(pid) else {
            return;
        };
        let keys: Vec<FileKey> = proc
            .current()
            .take(MAX_MAPPINGS)
            .filter(|m| !m.vdso)
            .filter_map(|m| m.file)
            .collect();
        for key in keys {
            if let Some(f) = procs.file_of(key).and_then(|f| f.try_clone().ok()) {
                let _ = self.ensure_now(sampler, key, &f);
            }
        }
        self.register(sampler, procs, pid);
    }

    /// Writes a process's mappings (as the process table captured them) and
    /// their tables into the kernel, building tables not yet built.
    pub fn register(&mut self, sampler: &Sampler, procs: &mut ProcessTable, pid: u32) {
        let Some(proc) = procs.process(pid) else {
            return;
        };
        if proc.exited {
            return;
        }
        let proc = proc.clone();
        let same = self
            .procs
            .get(&pid)
            .is_some_and(|r| r.starts == mapping_starts(&proc));
        let wait = match self.refreshed.get(&pid) {
            Some((_, w)) if same => (*w * 2).min(MAX_REFRESH_INTERVAL),
            _ => REFRESH_INTERVAL,
        };
        self.refreshed.insert(pid, (Instant::now(), wait));
        self.stats.registrations += 1;
        let mut entries: Vec<UnwindMapping> =
            Vec::with_capacity(proc.mappings.len().min(MAX_MAPPINGS));
        let mut keys = Vec::new();
        // Not the old image's after an exec: the sampler dropped the
        // process's tables then, and they would only hold its slots.
        for m in proc.current().take(MAX_MAPPINGS) {
            let (mut table_id, mut pages, mut bias) = (0u32, 0u32, 0u64);
            let key = if m.vdso { Some(VDSO_KEY) } else { m.file };
            if let Some(key) = key {
                let loaded = if m.vdso {
                    self.ensure_vdso(sampler)
                } else {
                    self.ensure_async(key, pid, || {
                        procs.file_of(key).and_then(|f| f.try_clone().ok())
                    })
                };
                if loaded.is_ok() {
                    let slot = &self.slots[&key];
                    let t = slot.table.as_ref().expect("a loaded slot has its table");
                    if let Some(b) = t.bias(m.start, m.offset) {
                        table_id = slot.id;
                        pages = t.pages;
                        bias = b;
                    }
                    keys.push(key);
                }
            }
            entries.push(UnwindMapping {
                start: m.start,
                end: m.end,
                bias,
                table: table_id,
                pages,
            });
        }
        let count = entries.len() as u32;
        let Some(first) = self.alloc(count.max(1)) else {
            self.stats.mappings_full += 1;
            return;
        };
        let slots: Vec<u32> = (first..first + count).collect();
        if count > 0 && !abi::update_batch(sampler.unwind_mappings_map(), &slots, &entries) {
            self.dealloc(first, count.max(1));
            return;
        }
        keys.sort_unstable();
        keys.dedup();
        for k in &keys {
            if let Some(s) = self.slots.get_mut(k) {
                s.refs += 1;
                s.idle = 0;
            }
        }
        let value = ProcUnwind {
            first,
            count,
            stale: 0,
            _pad: 0,
        };
        // A process that exited meanwhile leaves an entry the exit hook
        // cannot delete any more; gc removes it with the process.
        let _ = abi::update(sampler.proc_unwind_map(), &pid, &value, MapFlags::ANY);
        let reg = Registered {
            starts: mapping_starts(&proc),
            keys,
            first,
            count: count.max(1),
        };
        if let Some(old) = self.procs.insert(pid, reg) {
            self.release(&old);
        }
        self.stats.processes = self.procs.len();
    }

    /// First-fit allocation of `n` consecutive mapping slots.
    fn alloc(&mut self, n: u32) -> Option<u32> {
        let i = self.free.iter().position(|&(_, len)| len >= n)?;
        let (first, len) = self.free[i];
        if len == n {
            self.free.remove(i);
        } else {
            self.free[i] = (first + n, len - n);
        }
        Some(first)
    }

    fn dealloc(&mut self, first: u32, n: u32) {
        let i = self.free.partition_point(|&(f, _)| f < first);
        self.free.insert(i, (first, n));
        // Merge with the neighbours so runs do not fragment for ever.
        if i + 1 < self.free.len() && self.free[i].0 + self.free[i].1 == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == self.free[i].0 {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }

    /// Forgets a process that exited.
    pub fn forget(&mut self, sampler: &Sampler, pid: u32) {
        let _ = abi::delete(sampler.proc_unwind_map(), &pid);
        if let Some(old) = self.procs.remove(&pid) {
            self.release(&old);
        }
        self.refreshed.remove(&pid);
        self.pending.retain(|p| *p != pid);
        for w in self.waiting.values_mut() {
            w.retain(|p| *p != pid);
        }
        self.stats.processes = self.procs.len();
    }

    fn release(&mut self, old: &Registered) {
        for k in &old.keys {
            if let Some(s) = self.slots.get_mut(k) {
                s.refs = s.refs.saturating_sub(1);
            }
        }
        self.dealloc(old.first, old.count);
    }

    /// Frees tables no process has referenced for a few calls. Call once
    /// per window/drain.
    pub fn gc(&mut self, sampler: &Sampler) {
        let mut drop_keys = Vec::new();
        for (k, s) in self.slots.iter_mut() {
            if s.refs == 0 && !s.failed && !s.building {
                s.idle += 1;
                if s.idle > IDLE_GCS {
                    drop_keys.push(*k);
                }
            }
        }
        for k in drop_keys {
            self.unload(sampler, k);
            self.slots.remove(&k);
        }
    }

    fn unload(&mut self, sampler: &Sampler, key: FileKey) {
        if let Some(s) = self.slots.get_mut(&key) {
            if s.id != 0 {
                let _ = abi::delete(sampler.unwind_tables_map(), &s.id);
                self.free_ids.push(s.id);
                let t = s.table.take().unwrap_or_default();
                self.stats.tables -= 1;
                self.stats.rows -= t.rows;
                self.stats.bytes -= t.bytes;
                s.id = 0;
                s.handle = None;
            }
        }
    }

    /// The vDSO's table, built from ember's own copy: every process on the
    /// host maps the same image.
    fn ensure_vdso(&mut self, sampler: &Sampler) -> Loaded {
        if let Some(s) = self.slots.get(&VDSO_KEY) {
            if let Some(state) = s.state() {
                return state;
            }
        }
        let t0 = Instant::now();
        let built = own_vdso()
            .ok_or_else(|| anyhow::anyhow!("no vDSO"))
            .and_then(|image| Table::build_from_bytes(&image));
        self.install(sampler, VDSO_KEY, built, t0.elapsed())
    }

    /// Whether the binary's table is loaded; if not, queues its build
    /// (once) and notes that `pid` waits for it.
    fn ensure_async(
        &mut self,
        key: FileKey,
        pid: u32,
        file: impl FnOnce() -> Option<File>,
    ) -> Loaded {
        let slot = self.slots.entry(key).or_insert_with(Slot::empty);
        match slot.state() {
            Some(Err(NoTable::Building)) | None => {}
            Some(settled) => return settled,
        }
        if !slot.building {
            let Some(f) = file() else {
                return Err(NoTable::Unreadable);
            };
            if self.jobs.send((key, f)).is_err() {
                // The builder thread is gone: build nothing more.
                return Err(NoTable::Unreadable);
            }
            slot.building = true;
        }
        let w = self.waiting.entry(key).or_default();
        if !w.contains(&pid) {
            w.push(pid);
        }
        Err(NoTable::Building)
    }

    /// Builds and loads the binary's table on this thread.
    fn ensure_now(&mut self, sampler: &Sampler, key: FileKey, file: &File) -> Loaded {
        if let Some(state) = self.slots.get(&key).and_then(Slot::state) {
            return state;
        }
        let t0 = Instant::now();
        let built = Table::build(file);
        self.install(sampler, key, built, t0.elapsed())
    }

    /// Loads a built table into the kernel.
    fn install(
        &mut self,
        sampler: &Sampler,
        key: FileKey,
        built: anyhow::Result<Table>,
        took: Duration,
    ) -> Loaded {
        self.stats.built += 1;
        self.stats.build_time += took;
        let table = match built {
            Ok(t) if !t.rows.is_empty() => t,
            _ => {
                self.stats.no_cfi += 1;
                self.mark_failed(key);
                return Err(NoTable::NoCfi);
            }
        };
        let need = table.bytes();
        if self.stats.bytes + need > self.budget {
            self.evict_unreferenced(sampler, need);
        }
        if self.stats.bytes + need > self.budget {
            self.stats.over_budget += 1;
            if let Some(s) = self.slots.get_mut(&key) {
                s.building = false;
            }
            return Err(NoTable::OverBudget);
        }
        let (id, handle) = match self.load(sampler, &table) {
            Ok(loaded) => loaded,
            Err(why) => {
                self.stats.load_failed += 1;
                self.mark_failed(key);
                if self.stats.load_failed == 1 {
                    eprintln!(
                        "ember: the kernel refused an unwind table ({why}); those binaries are walked with frame pointers"
                    );
                }
                return Err(NoTable::LoadFailed);
            }
        };
        self.stats.tables += 1;
        self.stats.rows += table.rows.len() as u64;
        self.stats.bytes += need;
        self.stats.peak_bytes = self.stats.peak_bytes.max(self.stats.bytes);
        let slot = self.slots.entry(key).or_insert_with(Slot::empty);
        slot.id = id;
        slot.building = false;
        // The rows are in the kernel now; keep only where they apply.
        slot.table = Some(table.placement());
        slot.handle = Some(handle);
        Ok(())
    }

    // A binary without usable CFI is remembered so it is not re-read.
    fn mark_failed(&mut self, key: FileKey) {
        let slot = self.slots.entry(key).or_insert_with(Slot::empty);
        slot.failed = true;
        slot.building = false;
    }

    fn evict_unreferenced(&mut self, sampler: &Sampler, need: u64) {
        let mut idle: Vec<(u32, FileKey)> = self
            .slots
            .iter()
            .filter(|(_, s)| s.refs == 0 && s.id != 0)
            .map(|(k, s)| (s.idle, *k))
            .collect();
        idle.sort_unstable_by(|a, b| b.cmp(a));
        for (_, k) in idle {
            if self.stats.bytes + need <= self.budget {
                break;
            }
            self.unload(sampler, k);
            self.slots.remove(&k);
        }
    }

    fn load(&mut self, sampler: &Sampler, table: &Table) -> anyhow::Result<(u32, MapHandle)> {
        let opts = libbpf_sys::bpf_map_create_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as _,
            map_flags: libbpf_sys::BPF_F_INNER_MAP | libbpf_sys::BPF_F_MMAPABLE,
            ..Default::default()
        };
        let index = table.page_index();
        let n = (index.len() + table.rows.len()) as u32;
        let id = self
            .free_ids
            .pop()
            .ok_or_else(|| anyhow::anyhow!("all table ids in use"))?;
        let loaded = MapHandle::create(MapType::Array, Some("ember_unwind"), 4, 8, n, &opts)
            .map_err(anyhow::Error::from)
            .and_then(|handle| {
                fill_mmapable(&handle, &[&index, &table.rows])?;
                let fd = handle.as_fd().as_raw_fd() as u32;
                abi::update(sampler.unwind_tables_map(), &id, &fd, MapFlags::ANY)?;
                Ok(handle)
            });
        match loaded {
            Ok(handle) => Ok((id, handle)),
            Err(e) => {
                self.free_ids.push(id);
                Err(e)
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> UnwindStats {
        self.stats
    }
}

/// Fills an mmapable array of u64 with `parts` back to back, through a
/// shared mapping: a memcpy instead of the kernel copying row by row (the
/// per-row batch update was about 17% of a short `record --all`'s CPU).
fn fill_mmapable(map: &impl AsFd, parts: &[&[u64]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len() * 8).sum();
    if len == 0 {
        return Ok(());
    }
    // SAFETY: maps the array's value area (the kernel rounds it to pages);
    // writes stay within `len` bytes, which the array holds, and the
    // mapping is removed before returning.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.as_fd().as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let mut dst = p as *mut u64;
        for part in parts {
            std::ptr::copy_nonoverlapping(part.as_ptr(), dst, part.len());
            dst = dst.add(part.len());
        }
        libc::munmap(p, len);
    }
    Ok(())
}

/// One binary's table, as [`survey`] reports it.
#[derive(Debug, Clone)]
pub struct SurveyEntry {
    /// Path as a process maps it.
    pub path: String,
    /// Rows (0 if the binary has no usable CFI).
    pub rows: usize,
    /// Kernel memory once loaded.
    pub bytes: u64,
    /// Time to build.
    pub build_time: Duration,
    /// Why there is no table, if there is none.
    pub error: Option<String>,
}

/// Builds the table of every distinct binary mapped executable by `pids`
/// (every process when empty), without loading anything: what ember's
/// tables cost on this host.
pub fn survey(pids: &[u32]) -> Vec<SurveyEntry> {
    let pids: Vec<u32> = if pids.is_empty() {
        procfs::process::all_processes()
            .map(|it| it.filter_map(|p| p.ok()).map(|p| p.pid as u32).collect())
            .unwrap_or_default()
    } else {
        pids.to_vec()
    };
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for pid in pids {
        let Ok(maps) = crate::process::maps::read_mappings(pid) else {
            continue;
        };
        for m in maps {
            let Some(key) = m.file else { continue };
            if !seen.insert(key) {
                continue;
            }
            let Ok(file) = crate::untrusted::open_mapped(pid, m.start, m.end, key) else {
                continue;
            };
            let t0 = Instant::now();
            let built = Table::build(&file);
            let build_time = t0.elapsed();
            let (rows, bytes, error) = match built {
                Ok(t) => (t.rows.len(), t.bytes(), None),
                Err(e) => (0, 0, Some(e.to_string())),
            };
            out.push(SurveyEntry {
                path: m.path.to_string(),
                rows,
                bytes,
                build_time,
                error,
            });
        }
    }
    out
}
