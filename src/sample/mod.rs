//! sample: the BPF sampler. Loads `bpf/profiler.bpf.c`, attaches it to a
//! sampling perf event on every online CPU, and exposes the maps the drain
//! reads. Nothing here allocates per sample: the kernel aggregates.
//!
//! [`abi`] holds the Rust side of every type shared with the BPF program,
//! checked against the skeleton's generated types at compile time;
//! [`stats`] is the one table of the program's counters.

pub mod abi;
pub mod mappings;
pub mod perf;
pub mod probe;
pub mod stats;
pub mod waits;

#[allow(clippy::all, missing_docs, dead_code, non_camel_case_types)]
mod skel {
    include!(concat!(env!("OUT_DIR"), "/profiler.skel.rs"));
}

/// The same program built for Linux 5.10-5.16 (see [`probe`]).
#[allow(clippy::all, missing_docs, dead_code, non_camel_case_types)]
mod skel_compat {
    include!(concat!(env!("OUT_DIR"), "/profiler_compat.skel.rs"));
}

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{Link, MapFlags, MapMut, ProgramMut};

use abi::{
    EventKind, ProcEvent, ProcUnwind, StackTrace, UnwindMapping, FILTER_FOLLOW, FILTER_PROFILE,
};
pub use abi::{
    SampleKey, MAX_DEPTH, SAMPLE_KERNEL_LOST, SAMPLE_MAP_FULL, SAMPLE_PY_TRUNCATED,
    SAMPLE_TRUNCATED, SAMPLE_USER_LOST, STACK_TRACE_SIZE,
};
pub use perf::Event;
pub use probe::Variant;
pub use stats::KernelStats;

/// A process the sampler announced: its first sample, an exec, or code
/// running outside the mappings ember knows.
#[derive(Debug, Clone, Copy)]
pub struct ProcessEvent {
    /// The process.
    pub pid: u32,
    /// It replaced its image (exec) rather than being new.
    pub exec: bool,
    /// It runs code in a mapping ember has not seen (e.g. after `dlopen`).
    pub new_mapping: bool,
}

/// The sampler's new-process notifications, polled by the owner thread.
pub struct ProcessEvents {
    rb: libbpf_rs::RingBuffer<'static>,
    pending: std::rc::Rc<std::cell::RefCell<Vec<ProcessEvent>>>,
}

impl ProcessEvents {
    /// Waits up to `timeout` for events (returns at once when some arrive).
    pub fn poll(&self, timeout: Duration) {
        let _ = self.rb.poll(timeout);
    }

    /// Takes what the ring buffer holds without waiting.
    pub fn consume(&self) {
        let _ = self.rb.consume();
    }

    /// The events received since the last call.
    pub fn take(&self) -> Vec<ProcessEvent> {
        std::mem::take(&mut *self.pending.borrow_mut())
    }
}

/// Which processes to sample.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Every process on the host, kernel threads included.
    All,
    /// These processes (all their threads); with `follow`, processes forked
    /// by them later too. `parents` are only followed, never profiled.
    Pids {
        /// Processes profiled from the start.
        pids: Vec<u32>,
        /// Processes whose children are followed but which are not
        /// profiled themselves.
        parents: Vec<u32>,
        /// Follow forks of profiled processes.
        follow: bool,
    },
}

/// Sampler settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Samples per second per CPU.
    pub frequency: u64,
    /// The sampling event asked for.
    pub event: Event,
    /// What to sample.
    pub targets: Targets,
    /// Capture kernel stacks.
    pub kernel_stacks: bool,
    /// Entries in each generation's count map.
    pub count_map_entries: u32,
    /// Entries in each generation's stack map.
    pub stack_map_entries: u32,
    /// Walk user stacks with unwind tables (`.eh_frame`), falling back to
    /// frame pointers; false: frame pointers only.
    pub unwind_tables: bool,
    /// Most user frames walked with unwind tables (1 to
    /// [`abi::MAX_USER_DEPTH`]); frame pointers alone stop at
    /// [`abi::MAX_DEPTH`], the kernel's limit.
    pub max_user_depth: u32,
    /// Walk the frames of CPython processes registered through
    /// [`Sampler::set_python_process`].
    pub python: bool,
    /// Record where threads wait (off-CPU time); None: CPU only.
    pub off_cpu: Option<OffCpu>,
    /// Which build of the BPF program to load.
    pub variant: Variant,
}

/// How off-CPU time is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffCpu {
    /// Waits shorter than this are not recorded.
    pub threshold: Duration,
    /// Record one wait in N, scaled by N.
    pub sample: u32,
}

impl Default for OffCpu {
    fn default() -> Self {
        OffCpu {
            threshold: Duration::from_micros(4),
            sample: 1,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            frequency: 99,
            event: Event::CpuClock,
            targets: Targets::All,
            kernel_stacks: true,
            count_map_entries: 16384,
            stack_map_entries: 8192,
            unwind_tables: true,
            max_user_depth: abi::MAX_USER_DEPTH as u32,
            python: true,
            off_cpu: None,
            variant: Variant::Auto,
        }
    }
}

/// A loaded and attached sampler.
pub struct Sampler {
    maps: Maps,
    progs: Progs,
    generation_cell: *mut u32,
    // The .bss's offcpu_window (see begin and stop).
    window_cell: *mut [u64; 2],
    // The .bss's seeds_pending (see seed_waits).
    seeds_cell: *mut u32,
    variant: Variant,
    off_cpu: bool,
    python: bool,
    table_unwind: bool,
    _links: Vec<Link>,
    off_cpu_links: Vec<Link>,
    perf_links: Vec<Link>,
    event: Event,
    generation: u32,
    cpus: usize,
    // What the py_epoch map holds (see bump_py_epoch).
    py_epoch: std::sync::atomic::AtomicU32,
    // The host's context switches (/proc/stat ctxt) when sampling began.
    switches_at_start: u64,
}

/// Context switches on the host since boot (`ctxt` in /proc/stat; one per
/// run of the off-CPU program, which the kernel's sched_switch tracepoint
/// fires at exactly when it counts one).
fn host_switches() -> u64 {
    let text = crate::untrusted::read_proc("/proc/stat").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("ctxt "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The loaded object's maps, whichever variant it is (both builds define
/// the same maps with the same types; the skeleton is leaked for the
/// sampler's life, one allocation per sampler).
struct Maps {
    counts: [&'static MapMut<'static>; 2],
    stacks: [&'static MapMut<'static>; 2],
    offcpu: [&'static MapMut<'static>; 2],
    offcpu_thread: &'static MapMut<'static>,
    filter: &'static MapMut<'static>,
    events: &'static MapMut<'static>,
    stats: &'static MapMut<'static>,
    cpu_state: &'static MapMut<'static>,
    unwind_tables: &'static MapMut<'static>,
    proc_unwind: &'static MapMut<'static>,
    unwind_mappings: &'static MapMut<'static>,
    py_layouts: &'static MapMut<'static>,
    py_procs: &'static MapMut<'static>,
    py_epoch: &'static MapMut<'static>,
    /// Every map, for the memory they hold.
    all: Vec<&'static MapMut<'static>>,
}

struct Progs {
    on_sample: &'static ProgramMut<'static>,
    on_switch: &'static ProgramMut<'static>,
    on_fork: &'static ProgramMut<'static>,
    on_exec: &'static ProgramMut<'static>,
    on_exit: &'static ProgramMut<'static>,
    /// The task iterator that lists open waits, when threads' off-CPU
    /// states are in task storage (else they are listed from
    /// `offcpu_thread`).
    offcpu_open_waits: Option<&'static ProgramMut<'static>>,
    /// The task iterator that moves seeded waits into task storage.
    offcpu_adopt_seeds: Option<&'static ProgramMut<'static>>,
}

/// Opens, configures and loads one variant's skeleton; evaluates to
/// `(Maps, Progs, *mut generation, *mut offcpu_window)`. A macro because each build has its own
/// generated skeleton types, with the same fields.
macro_rules! load_variant {
    (@modern modern) => { true };
    (@modern compat) => { false };
    (@iter_autoload modern, $open:ident, $on:expr) => {{
        $open.progs.offcpu_open_waits.set_autoload($on);
        $open.progs.offcpu_adopt_seeds.set_autoload($on);
    }};
    (@iter_autoload compat, $open:ident, $on:expr) => {};
    (@iter modern, $p:ident) => { (Some(&$p.offcpu_open_waits), Some(&$p.offcpu_adopt_seeds)) };
    (@iter compat, $p:ident) => { (None, None) };
    (@task_map modern, $m:ident) => { Some(&$m.offcpu_task) };
    (@task_map compat, $m:ident) => { None };
    ($module:ident, $builder:ident, $cfg:expr, $variant:expr, $kind:ident) => {{
        let cfg: &Config = $cfg;
        // Threads' off-CPU states in task storage: the modern build, 6.6+.
        let task_storage =
            cfg.off_cpu.is_some() && load_variant!(@modern $kind) && task_storage_in_switch();
        let object = Box::leak(Box::new(MaybeUninit::uninit()));
        let mut open = $module::$builder::default()
            .open(object)
            .context("opening the BPF object failed")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.filter_enabled = matches!(cfg.targets, Targets::Pids { .. });
        rodata.kernel_stacks = cfg.kernel_stacks;
        rodata.include_idle = false;
        rodata.table_unwind = cfg.unwind_tables;
        rodata.max_user_depth = cfg.max_user_depth.clamp(1, abi::MAX_USER_DEPTH as u32);
        rodata.python = cfg.python;
        if let Some(o) = cfg.off_cpu {
            rodata.off_cpu = true;
            rodata.off_cpu_threshold_ns = o.threshold.as_nanos().min(u64::MAX as u128) as u64;
            rodata.off_cpu_sample = o.sample.max(1);
            rodata.self_tgid = std::process::id();
            rodata.off_cpu_task_storage = task_storage;
            if let Some((lo, hi)) = probe::traceiter_sched_switch() {
                rodata.traceiter_lo = lo;
                rodata.traceiter_hi = hi;
            }
        }
        if task_storage {
            // Only seeded waits are left in it: allocated as written.
            open.maps
                .offcpu_thread
                .set_type(libbpf_rs::MapType::Hash)?;
            open.maps
                .offcpu_thread
                .set_map_flags(libbpf_sys::BPF_F_NO_PREALLOC)?;
        }
        load_variant!(@iter_autoload $kind, open, task_storage);
        for m in [
            &mut open.maps.counts0,
            &mut open.maps.counts1,
            &mut open.maps.offcpu0,
            &mut open.maps.offcpu1,
        ] {
            m.set_max_entries(cfg.count_map_entries)?;
        }
        if cfg.off_cpu.is_none() {
            // Not loaded (verifying it takes most of a second), not attached:
            // no memory for what its maps would hold.
            open.progs.on_switch.set_autoload(false);
            for m in [&mut open.maps.offcpu0, &mut open.maps.offcpu1] {
                m.set_max_entries(1)?;
            }
            open.maps.offcpu_thread.set_max_entries(1)?;
            open.maps.offcpu_sites.set_max_entries(1)?;
        }
        for m in [&mut open.maps.stacks0, &mut open.maps.stacks1] {
            m.set_max_entries(cfg.stack_map_entries)?;
        }
        let skel = open.load().map_err(|e| {
            anyhow::anyhow!(
                "the kernel (Linux {}) refused ember's BPF program, {} variant ({e})",
                probe::kernel_release(),
                $variant
            )
        })?;
        let skel = Box::leak(Box::new(skel));
        let bss = skel
            .maps
            .bss_data
            .as_deref_mut()
            .context("the BPF object has no .bss")?;
        let generation: *mut u32 = &mut bss.generation;
        let window: *mut [u64; 2] = &mut bss.offcpu_window;
        let seeds: *mut u32 = &mut bss.seeds_pending;
        let skel = &*skel;
        let m = &skel.maps;
        let task_map: Option<&'static MapMut<'static>> = load_variant!(@task_map $kind, m);
        let mut all: Vec<&'static MapMut<'static>> = vec![
            &m.counts0,
            &m.counts1,
            &m.offcpu0,
            &m.offcpu1,
            &m.offcpu_thread,
            &m.offcpu_sites,
            &m.stacks0,
            &m.stacks1,
            &m.filter,
            &m.known,
            &m.events,
            &m.scratch,
            &m.user_scratch,
            &m.stats,
            &m.unwind_tables,
            &m.proc_unwind,
            &m.unwind_mappings,
            &m.py_layouts,
            &m.py_procs,
            &m.py_threads,
            &m.py_buf,
            &m.py_epoch,
            &m.offcpu_walk,
            &m.offcpu_blank,
            &m.cpu_state,
        ];
        all.extend(task_map);
        let maps = Maps {
            counts: [&m.counts0, &m.counts1],
            stacks: [&m.stacks0, &m.stacks1],
            offcpu: [&m.offcpu0, &m.offcpu1],
            offcpu_thread: &m.offcpu_thread,
            filter: &m.filter,
            events: &m.events,
            stats: &m.stats,
            cpu_state: &m.cpu_state,
            unwind_tables: &m.unwind_tables,
            proc_unwind: &m.proc_unwind,
            unwind_mappings: &m.unwind_mappings,
            py_layouts: &m.py_layouts,
            py_procs: &m.py_procs,
            py_epoch: &m.py_epoch,
            all,
        };
        let p = &skel.progs;
        let (offcpu_open_waits, offcpu_adopt_seeds) = if task_storage {
            load_variant!(@iter $kind, p)
        } else {
            (None, None)
        };
        let progs = Progs {
            on_sample: &p.on_sample,
            on_switch: &p.on_switch,
            on_fork: &p.on_fork,
            on_exec: &p.on_exec,
            on_exit: &p.on_exit,
            offcpu_open_waits,
            offcpu_adopt_seeds,
        };
        (maps, progs, generation, window, seeds)
    }};
}

/// Time spent in one of the sampler's BPF programs, as the program
/// measures itself with the clock (the kernel's BPF run-time statistics
/// would slow every BPF program on the host; see `struct cpu_state` in
/// bpf/ember.h).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BpfCost {
    /// Program runs (samples taken on any CPU, idle included; or context
    /// switches).
    pub runs: u64,
    /// Runs that timed themselves: every sample, about 1 switch in 64.
    pub timed: u64,
    /// Nanoseconds spent in the timed runs.
    pub nanos: u64,
}

impl BpfCost {
    /// Mean nanoseconds per run (0 when no run was timed).
    pub fn per_run_ns(&self) -> f64 {
        if self.timed == 0 {
            return 0.0;
        }
        self.nanos as f64 / self.timed as f64
    }

    /// Nanoseconds spent in all runs, timed or not (the timed runs' mean
    /// times the runs).
    pub fn total_ns(&self) -> u64 {
        (self.per_run_ns() * self.runs as f64) as u64
    }
}

impl Sampler {
    /// Loads the BPF program (the variant the kernel supports, or the one
    /// asked for), fills the filter and attaches to every CPU.
    pub fn start(cfg: &Config) -> Result<Sampler> {
        let mut variant = probe::Features::probe().choose(cfg.variant)?;
        type Loaded = (Maps, Progs, *mut u32, *mut [u64; 2], *mut u32);
        let load = |variant: Variant| -> Result<Loaded> {
            Ok(match variant {
                Variant::Compat => {
                    load_variant!(skel_compat, ProfilerCompatSkelBuilder, cfg, variant, compat)
                }
                _ => load_variant!(skel, ProfilerSkelBuilder, cfg, variant, modern),
            })
        };
        let (maps, progs, generation_cell, window_cell, seeds_cell) = match load(variant) {
            Ok(loaded) => loaded,
            // Chosen, not asked for: a verifier that refuses the modern
            // build (its limits differ between kernels) may take the
            // compat one.
            Err(modern) if cfg.variant == Variant::Auto && variant == Variant::Modern => {
                variant = Variant::Compat;
                load(variant).map_err(|compat| {
                    anyhow::anyhow!(
                        "{modern:#}; {compat:#}: run ember on Linux 5.10 or newer with BTF, and report this kernel if it is one"
                    )
                })?
            }
            Err(e) if cfg.variant == Variant::Auto => {
                bail!("{e:#}: run ember on Linux 5.10 or newer with BTF, and report this kernel if it is one")
            }
            Err(e) => bail!("{e:#}: try --bpf-variant auto"),
        };
        check_maps(&maps)?;

        if let Targets::Pids {
            pids,
            parents,
            follow,
        } = &cfg.targets
        {
            let flags = FILTER_PROFILE | if *follow { FILTER_FOLLOW } else { 0 };
            for pid in pids {
                abi::update(maps.filter, pid, &flags, MapFlags::ANY)?;
            }
            for pid in parents {
                abi::update(maps.filter, pid, &FILTER_FOLLOW, MapFlags::ANY)?;
            }
        }

        let mut links = Vec::new();
        if matches!(cfg.targets, Targets::Pids { follow: true, .. }) {
            links.push(
                progs
                    .on_fork
                    .attach()
                    .context("attaching to sched_process_fork failed")?,
            );
        }
        links.push(
            progs
                .on_exec
                .attach()
                .context("attaching to sched_process_exec failed")?,
        );
        links.push(
            progs
                .on_exit
                .attach()
                .context("attaching to sched_process_exit failed")?,
        );
        let mut off_cpu_links = Vec::new();
        if cfg.off_cpu.is_some() {
            off_cpu_links.push(
                progs
                    .on_switch
                    .attach()
                    .context("attaching to sched_switch failed")?,
            );
        }
        let mut perf_links = Vec::new();

        let switches_at_start = host_switches();
        let cpus = perf::online_cpus().context("reading the online CPUs failed")?;
        let mut event = cfg.event;
        for &cpu in &cpus {
            let fd = match perf::open(event, cpu, cfg.frequency) {
                Ok(fd) => fd,
                Err(e)
                    if event == Event::Cycles
                        && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EOPNOTSUPP | libc::ENODEV)) =>
                {
                    // No hardware PMU (typical in VMs): the software clock works everywhere.
                    event = Event::CpuClock;
                    perf::open(event, cpu, cfg.frequency)?
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => bail!(
                    "the kernel refused a sampling frequency of {} Hz; check /proc/sys/kernel/perf_event_max_sample_rate and use a lower --frequency",
                    cfg.frequency
                ),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => continue, // CPU went offline
                Err(e) => return Err(e).with_context(|| format!("opening the {} perf event on CPU {cpu} failed", event.name())),
            };
            match progs.on_sample.attach_perf_event(fd) {
                Ok(link) => perf_links.push(link),
                Err(e) => {
                    // SAFETY: fd is ours until libbpf takes it, which failed.
                    unsafe { libc::close(fd) };
                    return Err(e).context("attaching the sampler to a perf event failed");
                }
            }
        }
        let mut sampler = Sampler {
            maps,
            progs,
            generation_cell,
            window_cell,
            seeds_cell,
            variant,
            off_cpu: cfg.off_cpu.is_some(),
            python: cfg.python,
            table_unwind: cfg.unwind_tables,
            _links: links,
            off_cpu_links,
            perf_links,
            event,
            generation: 0,
            cpus: cpus.len(),
            py_epoch: Default::default(),
            switches_at_start,
        };
        sampler.begin();
        Ok(sampler)
    }

    /// Starts profiling one more process (with a PID filter).
    pub fn add_target(&self, pid: u32) -> Result<()> {
        abi::update(self.maps.filter, &pid, &FILTER_PROFILE, MapFlags::ANY)
            .with_context(|| format!("adding PID {pid} to the sampler's filter failed"))
    }

    /// Marks now (CLOCK_MONOTONIC ns, returned) as the start of the
    /// recording for off-CPU time: waits that began before count from
    /// here. [`start`](Self::start) marks its own end; a recording marks
    /// the moment its targets are set up.
    pub fn begin(&mut self) -> u64 {
        let now = waits::monotonic_ns();
        // SAFETY: as in flip_generation (a live mmap of the .bss).
        unsafe { std::ptr::write_volatile(&mut (*self.window_cell)[0], now) };
        now
    }

    /// Stops sampling (the maps stay readable), so a last drain and the
    /// counters agree exactly. Returns when the recording ended
    /// (CLOCK_MONOTONIC ns): off-CPU time is clipped to it, not to when
    /// the programs were detached (which may take a while).
    pub fn stop(&mut self) -> u64 {
        let now = waits::monotonic_ns();
        // SAFETY: as in flip_generation.
        unsafe { std::ptr::write_volatile(&mut (*self.window_cell)[1], now) };
        self.perf_links.clear();
        self.off_cpu_links.clear();
        wait_for_bpf_programs();
        now
    }

    /// Whether off-CPU time is recorded.
    pub fn off_cpu(&self) -> bool {
        self.off_cpu
    }

    /// The build of the BPF program that runs.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The off-CPU count map of generation `g`.
    pub fn off_cpu_map(&self, g: usize) -> &libbpf_rs::MapMut<'static> {
        self.maps.offcpu[g & 1]
    }

    /// Notes threads as off CPU since `since_ns` (CLOCK_MONOTONIC) with
    /// the key (names and stacks) userspace found for them: waits that
    /// began before the recording count from its start.
    pub fn seed_waits(&self, waits: &[SampleKey], since_ns: u64) {
        if waits.is_empty() {
            return;
        }
        // With task storage a thread with no state is looked for among
        // the seeds only while this is set: set before they are written.
        // SAFETY: the .bss is mapped for the sampler's life; a u32 store.
        unsafe { std::ptr::write_volatile(self.seeds_cell, 1) };
        for k in waits {
            // The key in memo entry 0 (cur), not to be reused (gen 0).
            let mut st = abi::OffCpuState {
                since: since_ns,
                weight: 1,
                ..Default::default()
            };
            st.memo[0].key = (*k).into();
            let _ = abi::update(self.maps.offcpu_thread, &k.tid, &st, MapFlags::NO_EXIST);
        }
        if let Some(adopt) = self.progs.offcpu_adopt_seeds {
            // Moved into the threads' task storage: then no switch need
            // look among them. If the iterator fails they stay (looked up).
            if run_iterator(adopt) {
                // SAFETY: as above.
                unsafe { std::ptr::write_volatile(self.seeds_cell, 0) };
            }
        }
    }

    /// The waits still open after [`stop`](Self::stop): each thread's key
    /// (its stacks are in the stack maps, or were seeded), since when it
    /// waits (CLOCK_MONOTONIC ns) and its weight.
    pub fn open_waits(&self) -> Vec<(SampleKey, u64, u64)> {
        if let Some(iter) = self.progs.offcpu_open_waits {
            return open_waits_by_iterator(iter);
        }
        use libbpf_rs::MapCore;
        let m = self.maps.offcpu_thread;
        let mut out = Vec::new();
        for k in m.keys() {
            if let Ok(Some(v)) = m.lookup(&k, MapFlags::ANY) {
                if let Some(st) = abi::read::<abi::OffCpuState>(&v) {
                    if st.since != 0 {
                        let memo = &st.memo[st.cur as usize % st.memo.len()];
                        out.push((
                            SampleKey::from(memo.key),
                            st.since,
                            u64::from(st.weight.max(1)),
                        ));
                    }
                }
            }
        }
        out
    }

    /// The event actually used (cycles may have fallen back to cpu-clock).
    pub fn event(&self) -> Event {
        self.event
    }

    /// Number of CPUs sampled.
    pub fn cpus(&self) -> usize {
        self.cpus
    }

    /// Starts a new generation and waits until no sample can still write to
    /// the previous one. Returns the index (0 or 1) of the generation to drain.
    pub fn flip_generation(&mut self) -> usize {
        let old = (self.generation & 1) as usize;
        self.generation = self.generation.wrapping_add(1);
        // SAFETY: the .bss is a live mmap shared with the kernel, leaked
        // with the skeleton; a volatile store makes the new value visible to
        // the next BPF invocation.
        unsafe { std::ptr::write_volatile(self.generation_cell, self.generation) };
        wait_for_bpf_programs();
        old
    }

    /// The count map of generation `g`.
    pub fn counts_map(&self, g: usize) -> &libbpf_rs::MapMut<'static> {
        self.maps.counts[g & 1]
    }

    /// The stack map of generation `g`.
    pub fn stacks_map(&self, g: usize) -> &libbpf_rs::MapMut<'static> {
        self.maps.stacks[g & 1]
    }

    /// The map of unwind tables (table id -> inner array of rows).
    pub fn unwind_tables_map(&self) -> &libbpf_rs::MapMut<'static> {
        self.maps.unwind_tables
    }

    /// The map of per-process executable mappings for the unwinder.
    pub fn proc_unwind_map(&self) -> &libbpf_rs::MapMut<'static> {
        self.maps.proc_unwind
    }

    /// The shared array of per-process executable mappings.
    pub fn unwind_mappings_map(&self) -> &libbpf_rs::MapMut<'static> {
        self.maps.unwind_mappings
    }

    /// Whether Python frames are walked.
    pub fn python(&self) -> bool {
        self.python
    }

    /// Describes CPython layout `index` to the walk.
    pub(crate) fn set_python_layout(&self, index: u32, layout: &abi::PyLayout) -> Result<()> {
        abi::update(self.maps.py_layouts, &index, layout, MapFlags::ANY)
            .context("writing a CPython layout to the sampler failed")
    }

    /// Has the walk follow the Python frames of `pid` (None: stop).
    pub(crate) fn set_python_process(&self, pid: u32, p: Option<&abi::PyProc>) -> Result<()> {
        let r = match p {
            Some(p) => abi::update(self.maps.py_procs, &pid, p, MapFlags::ANY)
                .with_context(|| format!("registering Python process {pid} failed")),
            None => {
                let _ = abi::delete(self.maps.py_procs, &pid);
                Ok(())
            }
        };
        self.bump_py_epoch();
        r
    }

    /// Tells the off-CPU program that `py_procs` changed: each thread keeps
    /// whether its process is a Python one, looked up once per epoch.
    fn bump_py_epoch(&self) {
        use std::sync::atomic::Ordering;
        let epoch = self
            .py_epoch
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        let _ = abi::update(self.maps.py_epoch, &0u32, &epoch, MapFlags::ANY);
    }

    /// Whether user stacks are walked with unwind tables.
    pub fn table_unwind(&self) -> bool {
        self.table_unwind
    }

    /// Subscribes to new-process and exec notifications.
    pub fn process_events(&self) -> Result<ProcessEvents> {
        let pending: std::rc::Rc<std::cell::RefCell<Vec<ProcessEvent>>> = Default::default();
        let sink = pending.clone();
        let mut rb = libbpf_rs::RingBufferBuilder::new();
        rb.add(self.maps.events, move |data: &[u8]| {
            if let Some(e) = abi::read::<ProcEvent>(data) {
                sink.borrow_mut().push(ProcessEvent {
                    pid: e.tgid,
                    exec: e.kind == EventKind::EMBER_EVENT_EXEC.0,
                    new_mapping: e.kind == EventKind::EMBER_EVENT_MAPS.0,
                });
            }
            0
        })?;
        Ok(ProcessEvents {
            rb: rb.build()?,
            pending,
        })
    }

    /// Sums the per-CPU counters (one lookup per row of
    /// [`stats::COUNTERS`]).
    pub fn stats(&self) -> Result<KernelStats> {
        let mut values = [0u64; abi::STAT_COUNT];
        let mut per_cpu = Vec::new();
        for c in stats::COUNTERS {
            values[c.index()] = abi::sum_percpu(self.maps.stats, &(c.index() as u32), &mut per_cpu)
                .with_context(|| format!("reading the BPF counter {} failed", c.field))?;
        }
        Ok(KernelStats::from_values(values))
    }

    /// Context switches on the host since sampling began: the off-CPU
    /// program's runs.
    pub fn switches(&self) -> u64 {
        host_switches().saturating_sub(self.switches_at_start)
    }

    /// Time the sampling program has run so far, and its runs.
    pub fn bpf_cost(&self) -> BpfCost {
        self.costs().0
    }

    /// Time the off-CPU program (run at every context switch) has run so
    /// far, and its runs.
    pub fn off_cpu_cost(&self) -> BpfCost {
        self.costs().1
    }

    /// The programs' self-measured costs, summed over the CPUs: (on_sample,
    /// on_switch). Zero if the map cannot be read.
    fn costs(&self) -> (BpfCost, BpfCost) {
        use libbpf_rs::MapCore;
        let add = |to: &mut BpfCost, c: &abi::ProgCost| {
            to.runs += c.runs;
            to.timed += c.timed;
            to.nanos += c.ns;
        };
        let (mut sample, mut switch) = (BpfCost::default(), BpfCost::default());
        if let Ok(Some(cpus)) = self
            .maps
            .cpu_state
            .lookup_percpu(&0u32.to_ne_bytes(), libbpf_rs::MapFlags::ANY)
        {
            for bytes in &cpus {
                if let Some(cs) = abi::read::<abi::CpuState>(bytes) {
                    add(&mut sample, &cs.sample);
                    add(&mut switch, &cs.sw);
                }
            }
        }
        (sample, switch)
    }
}

/// Runs a task iterator that writes nothing (for its effect); false if it
/// could not run.
fn run_iterator(prog: &ProgramMut<'_>) -> bool {
    use std::io::Read;
    prog.attach()
        .and_then(|link| libbpf_rs::Iter::new(&link))
        .map(|mut it| it.read_to_end(&mut Vec::new()))
        .is_ok_and(|r| r.is_ok())
}

/// The open waits as the `offcpu_open_waits` task iterator lists them
/// (threads' states in task storage have no keys to list). It sees the
/// tasks of ember's own pid namespace, which are the ones ember profiles.
/// Empty if the iterator cannot run (the waits then go uncounted past
/// their last switch, never counted wrong).
fn open_waits_by_iterator(prog: &ProgramMut<'_>) -> Vec<(SampleKey, u64, u64)> {
    use std::io::Read;
    // One record per waiting thread of the host: bounded like the hash
    // map the other path lists (a user may make many threads).
    const MAX_OPEN_WAITS: u64 = 65536;
    let limit = MAX_OPEN_WAITS * std::mem::size_of::<abi::OffCpuOpen>() as u64;
    let mut bytes = Vec::new();
    let read = prog
        .attach()
        .and_then(|link| libbpf_rs::Iter::new(&link))
        .map(|it| it.take(limit).read_to_end(&mut bytes));
    if !matches!(read, Ok(Ok(_))) {
        return Vec::new();
    }
    bytes
        .chunks_exact(std::mem::size_of::<abi::OffCpuOpen>())
        .filter_map(abi::read::<abi::OffCpuOpen>)
        .map(|o| (SampleKey::from(o.key), o.since, u64::from(o.weight.max(1))))
        .collect()
}

/// Whether threads' off-CPU states may be kept in task storage, made at a
/// context switch: from 6.6 task storage allocates from BPF's own per-CPU
/// caches there (before, a kmalloc under the runqueue lock, which may wake
/// kswapd and so take a runqueue lock again).
fn task_storage_in_switch() -> bool {
    probe::kernel_version().is_some_and(|v| v >= (6, 6))
}

impl Sampler {
    /// Kernel memory held by the sampler's maps, from their fdinfo.
    pub fn map_memory_bytes(&self) -> u64 {
        self.maps
            .all
            .iter()
            .map(|map| memlock_of(map.as_fd().as_raw_fd()))
            .sum()
    }
}

/// Checks every map ember reads or writes against the Rust types of its
/// keys and values: a map definition in bpf/ whose key or value type
/// changed without the matching change here.
fn check_maps(m: &Maps) -> Result<()> {
    use abi::check_map;
    use libbpf_rs::MapCore;
    check_map::<SampleKey, u64>("counts0", m.counts[0])?;
    check_map::<SampleKey, u64>("counts1", m.counts[1])?;
    check_map::<SampleKey, u64>("offcpu0", m.offcpu[0])?;
    check_map::<SampleKey, u64>("offcpu1", m.offcpu[1])?;
    check_map::<u32, abi::OffCpuState>("offcpu_thread", m.offcpu_thread)?;
    check_map::<u32, u32>("py_epoch", m.py_epoch)?;
    check_map::<u64, StackTrace>("stacks0", m.stacks[0])?;
    check_map::<u64, StackTrace>("stacks1", m.stacks[1])?;
    check_map::<u32, u64>("stats", m.stats)?;
    check_map::<u32, u8>("filter", m.filter)?;
    check_map::<u32, ProcUnwind>("proc_unwind", m.proc_unwind)?;
    check_map::<u32, UnwindMapping>("unwind_mappings", m.unwind_mappings)?;
    check_map::<u32, abi::PyLayout>("py_layouts", m.py_layouts)?;
    check_map::<u32, abi::PyProc>("py_procs", m.py_procs)?;
    check_map::<u32, abi::CpuState>("cpu_state", m.cpu_state)?;
    // A map of maps: the value is the inner map's fd.
    check_map::<u32, u32>("unwind_tables", m.unwind_tables)?;
    // The unwinder allocates slots and ids in these two arrays.
    anyhow::ensure!(
        m.unwind_mappings.max_entries() == abi::MAPPING_SLOTS
            && m.unwind_tables.max_entries() == abi::MAX_TABLES,
        "the BPF object's unwind arrays are not the size this build allocates in"
    );
    Ok(())
}

fn memlock_of(fd: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("memlock:")
                    .map(|v| v.trim().parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

/// Waits for an RCU grace period: BPF programs run inside RCU read-side
/// sections, so once it ends no program can still hold the old generation.
fn wait_for_bpf_programs() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
    // SAFETY: membarrier takes two integer arguments and no pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        // nohz_full kernels refuse it: a BPF sample handler takes
        // microseconds, so a generous sleep is as good in practice.
        std::thread::sleep(Duration::from_millis(20));
    }
}
