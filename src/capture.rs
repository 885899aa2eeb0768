//! capture: one profiling session, driven by `ember record` and `ember
//! agent` alike.
//!
//! A [`Capture`] owns the BPF sampler, its process events, the process
//! table, the symbolizer, the unwind tables and the drainer. Its owner
//! brings only a policy: when to stop, how long to wait, when to drain and
//! what to build from the counts (ripgrep's `Searcher` driven through a
//! `Sink`, py-spy's one `Sampler` for `record` and `top`). The session
//! takes every new process in as soon as the sampler announces it, so
//! short-lived processes are captured while they live; it drains early
//! when a kernel map overflows; and it applies one exit rule
//! ([`is_live`](crate::process::is_live)) to release
//! what exited processes hold.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::aggregate::{Aggregate, DrainStats, Drainer};
use crate::process::ProcessTable;
use crate::python;
use crate::sample::mappings::MapEvents;
use crate::sample::{self, KernelStats, ProcessEvent, Sampler};
use crate::symbolize::Symbolizer;
use crate::unwind::{UnwindStats, Unwinder};

/// How often a session checks the kernel counters for a map overflow
/// between regular drains.
const OVERFLOW_CHECK: Duration = Duration::from_millis(200);

/// What a session samples and how it walks stacks.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The sampler's settings.
    pub sample: sample::Config,
    /// Kernel memory the unwind tables may take, in bytes; `None` walks
    /// user stacks with frame pointers only.
    pub unwind_memory: Option<u64>,
    /// Learn processes' mappings from the kernel's mmap records as they
    /// are made ([`sample::mappings`]), so processes that exit within
    /// milliseconds are still named. Off, mappings come from `/proc` only.
    pub kernel_mappings: bool,
    /// Directories searched for separate debug files by build ID, besides
    /// [`crate::symbolize::DEFAULT_DEBUG_DIR`].
    pub debug_dirs: Vec<std::path::PathBuf>,
    /// Fetch missing debug files from the servers `DEBUGINFOD_URLS` names,
    /// each request bounded by this timeout; None: never.
    pub debuginfod: Option<Duration>,
}

/// One profiling session. Fields drop in order: the event ring buffer
/// before the sampler it reads.
pub struct Capture {
    events: sample::ProcessEvents,
    maps: Option<MapEvents>,
    unw: Option<Unwinder>,
    sampler: Sampler,
    py: Option<python::Tracker>,
    procs: ProcessTable,
    sym: Symbolizer,
    drainer: Drainer,
    last_drain: Instant,
    last_check: Instant,
    last_full: u64,
    /// When sampling stopped (CLOCK_MONOTONIC ns), for open waits.
    stopped_ns: u64,
    // When the recording began (CLOCK_MONOTONIC ns; see Sampler::begin).
    started_ns: u64,
    /// Stacks of the waits seeded from /proc, added to every drain.
    seed_stacks: Vec<(u64, Vec<u64>)>,
}

impl Capture {
    /// Loads the BPF program, attaches it to every CPU and starts reading
    /// kernel symbols (when kernel stacks are on) while sampling runs.
    pub fn start(cfg: &CaptureConfig) -> Result<Capture> {
        // The records before the sampler: every process sampled has its
        // mappings recorded from its exec on.
        let maps = if cfg.kernel_mappings {
            match sample::perf::online_cpus().and_then(|cpus| MapEvents::open(&cpus)) {
                Ok(m) => Some(m),
                Err(e) => {
                    eprintln!(
                        "ember: the kernel's mapping records are unavailable ({}); processes that exit within milliseconds may lose their names",
                        crate::export::plain_io(&e)
                    );
                    None
                }
            }
        } else {
            None
        };
        let mut sampler = Sampler::start(&cfg.sample)?;
        let started_ns = sampler.begin();
        let events = sampler.process_events()?;
        let mut sym = Symbolizer::new();
        sym.add_debug_dirs(&cfg.debug_dirs);
        sym.set_debuginfod(cfg.debuginfod.and_then(|timeout| {
            use crate::symbolize::debuginfod;
            debuginfod::Debuginfod::new(
                debuginfod::urls_from_env(),
                debuginfod::cache_from_env(),
                timeout,
            )
        }));
        if cfg.sample.kernel_stacks {
            sym.preload_kernel();
        }
        let py = if cfg.sample.python {
            Some(python::Tracker::new(&sampler)?)
        } else {
            None
        };
        Ok(Capture {
            events,
            maps,
            unw: cfg.unwind_memory.map(Unwinder::new),
            py,
            sampler,
            procs: ProcessTable::new(),
            sym,
            drainer: Drainer::default(),
            last_drain: Instant::now(),
            last_check: Instant::now(),
            last_full: 0,
            stopped_ns: 0,
            started_ns,
            seed_stacks: Vec::new(),
        })
    }

    /// Marks now as the start of the recording: off-CPU waits that began
    /// before (seeded ones included) count from here.
    pub fn begin(&mut self) {
        self.started_ns = self.sampler.begin();
    }

    /// Starts sampling an existing process: its maps are captured and its
    /// unwind tables loaded first, so even its first samples unwind fully.
    pub fn watch(&mut self, pid: u32) -> Result<()> {
        self.procs.capture(pid);
        if let Some(u) = self.unw.as_mut() {
            u.register_now(&self.sampler, &mut self.procs, pid);
        }
        if let Some(py) = self.py.as_mut() {
            py.check(&self.sampler, &mut self.procs, &mut self.sym.python, pid);
        }
        self.sampler.add_target(pid)
    }

    /// Loads, before a command starts, the tables of its program and of the
    /// libraries every process maps (ember's own C library and loader), and
    /// from then on builds the tables of new programs as they exec, in the
    /// event loop rather than in the background.
    pub fn preload(&mut self, program: Option<&Path>) {
        if let Some(u) = self.unw.as_mut() {
            u.set_blocking(true);
            if let Some(path) = program {
                u.preload(&self.sampler, path);
            }
            u.preload_own_libraries(&self.sampler);
        }
    }

    /// Captures a process ember started itself (its maps are read at once,
    /// before its first sample).
    pub fn adopt(&mut self, pid: u32) {
        self.procs.capture(pid);
    }

    /// Waits up to `max` for process events (less when an unwind-table
    /// refresh falls due), takes them in, and reports every new process or
    /// exec to `on_process` after its maps were captured.
    pub fn wait(&mut self, max: Duration, on_process: &mut dyn FnMut(ProcessEvent)) {
        let refresh = self
            .unw
            .as_ref()
            .and_then(|u| u.next_due())
            .unwrap_or(Duration::MAX);
        self.events
            .poll(max.min(refresh).max(Duration::from_millis(1)));
        self.intake(true, on_process);
        if let Some(u) = self.unw.as_mut() {
            u.tick(&self.sampler, &mut self.procs);
        }
        if let Some(py) = self.py.as_mut() {
            py.recheck(&self.sampler, &mut self.procs, &mut self.sym.python);
        }
    }

    fn intake(&mut self, unwind: bool, on_process: &mut dyn FnMut(ProcessEvent)) {
        // The kernel's records first: written when the mappings were made,
        // they are older than any sampler event taken below.
        if let Some(maps) = self.maps.as_mut() {
            let procs = &mut self.procs;
            maps.read(&mut |e| procs.on_map_event(e));
        }
        let events = self.events.take();
        // Capture every new process first: short-lived ones may exit any
        // moment, while their unwind tables can wait a few milliseconds.
        for &e in &events {
            if !e.new_mapping {
                self.procs.on_event(e);
                on_process(e);
            }
        }
        if let (true, Some(u)) = (unwind, self.unw.as_mut()) {
            for &e in &events {
                u.on_event(&self.sampler, &mut self.procs, e);
            }
        }
        // After the unwinder: a new-mapping event has it re-read the maps,
        // which is how a libpython loaded after the first sample is found.
        if let Some(py) = self.py.as_mut() {
            for e in events {
                if e.exec {
                    py.forget(&self.sampler, e.pid, false);
                    self.sym.python.forget(e.pid);
                }
                py.check(&self.sampler, &mut self.procs, &mut self.sym.python, e.pid);
            }
        }
    }

    /// Drains the kernel's counts into `into` when `interval` has passed
    /// since the last drain, or sooner when a kernel map overflowed (the
    /// sooner the maps are empty, the fewer samples lose their stacks).
    /// Returns whether it drained.
    pub fn drain_if_due(&mut self, into: &mut Aggregate, interval: Duration) -> Result<bool> {
        let overflowing = self.last_check.elapsed() >= OVERFLOW_CHECK && {
            self.last_check = Instant::now();
            let st = self.sampler.stats().unwrap_or_default();
            let full = st.lost_stack_map_full + st.lost_count_map_full;
            let grew = full > self.last_full;
            self.last_full = full;
            grew
        };
        if overflowing || self.last_drain.elapsed() >= interval {
            self.drain(into)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Drains the kernel's counts into `into` now, and reads the code
    /// objects of new Python frames while their processes live.
    pub fn drain(&mut self, into: &mut Aggregate) -> Result<DrainStats> {
        self.last_drain = Instant::now();
        let st = self.drainer.drain(&mut self.sampler, into)?;
        for (h, frames) in &self.seed_stacks {
            into.stacks.insert(*h, frames);
        }
        for (pid, h) in self.drainer.python_stacks() {
            if let Some(words) = into.stacks.get(h) {
                self.sym.python.resolve(pid, words);
            }
        }
        Ok(st)
    }

    /// Stops sampling, takes the last process events and drains the rest:
    /// nothing counted is left behind and the kernel counters match the
    /// counts exactly.
    pub fn finish(
        &mut self,
        into: &mut Aggregate,
        on_process: &mut dyn FnMut(ProcessEvent),
    ) -> Result<()> {
        self.stopped_ns = self.sampler.stop();
        self.events.consume();
        self.intake(false, on_process);
        self.drain(into)?;
        self.close_waits(into);
        Ok(())
    }

    /// With off-CPU time: notes the threads of `pids` (None: every
    /// process) that wait now as waiting since now, with the stacks `/proc`
    /// gives, so waits that began before the recording count from its
    /// start.
    pub fn seed_waits(&mut self, pids: Option<&[u32]>) {
        if !self.sampler.off_cpu() {
            return;
        }
        let waits = sample::waits::proc_waits(&sample::waits::waiting_threads(pids));
        let keys: Vec<sample::SampleKey> = waits.iter().map(|w| w.key).collect();
        for w in waits {
            if self.procs.process(w.key.tgid).is_none() {
                self.procs.capture(w.key.tgid);
            }
            self.seed_stacks.extend(w.stacks);
        }
        self.sampler
            .seed_waits(&keys, sample::waits::monotonic_ns());
    }

    /// After sampling stopped: the waits still going on, clipped to the
    /// end (their stacks were stored when they began).
    fn close_waits(&mut self, into: &mut Aggregate) {
        if !self.sampler.off_cpu() {
            return;
        }
        for (key, since, weight) in self.sampler.open_waits() {
            let d = self
                .stopped_ns
                .saturating_sub(since.max(self.started_ns))
                .saturating_mul(weight);
            if d > 0 {
                *into.off_cpu.entry(key).or_insert(0) += d;
            }
        }
    }

    /// Applies the exit rule: releases the kernel-side unwind state of
    /// processes that exited and unloads tables nothing uses any more.
    /// With `forget`, also drops the symbols of processes found exited at
    /// an earlier call (an agent, after each window); without, those of
    /// sampled processes stay until the session ends (a recording builds
    /// its one profile last) and only processes never sampled go.
    /// Returns the processes forgotten.
    pub fn gc(&mut self, forget: bool) -> Vec<u32> {
        let exited = self.procs.mark_exited();
        if let Some(u) = self.unw.as_mut() {
            for &pid in &exited {
                u.forget(&self.sampler, pid);
            }
            u.gc(&self.sampler);
        }
        let forgotten = self.procs.forget_exited(forget);
        if let Some(py) = self.py.as_mut() {
            for &pid in &forgotten {
                py.forget(&self.sampler, pid, true);
                self.sym.python.forget(pid);
            }
            // Processes whose Python runtime was not mapped yet (or whose
            // records came late) when they were first seen.
            for pid in self.procs.live_pids() {
                py.check(&self.sampler, &mut self.procs, &mut self.sym.python, pid);
            }
        }
        forgotten
    }

    /// What the Python tracker found (`None` with Python frames off).
    pub fn python_stats(&self) -> Option<python::TrackerStats> {
        self.py.as_ref().map(|p| p.stats())
    }

    /// The process table and the symbolizer, to build profiles with.
    pub fn naming(&mut self) -> (&mut ProcessTable, &mut Symbolizer) {
        (&mut self.procs, &mut self.sym)
    }

    /// The sampler (its counters, event, CPUs and costs).
    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// The kernel's counters now.
    pub fn stats(&self) -> Result<KernelStats> {
        self.sampler.stats()
    }

    /// Mapping records lost: the kernel's rings overflowed, or too many
    /// processes the sampler never announced.
    pub fn map_records_lost(&self) -> u64 {
        self.maps.as_ref().map_or(0, |m| m.lost()) + self.procs.stats().records_dropped
    }

    /// The unwind tables' figures (`None` with frame pointers only).
    pub fn unwind_stats(&self) -> Option<UnwindStats> {
        self.unw.as_ref().map(|u| u.stats())
    }

    /// Ends sampling and releases the kernel side (BPF program, maps, unwind
    /// tables), keeping the process table and the symbolizer for the final
    /// build.
    pub fn into_naming(self) -> (ProcessTable, Symbolizer) {
        (self.procs, self.sym)
    }
}
