//! `ember agent`: the always-on host daemon. It samples every process at a
//! low frequency, cuts one profile per target (a set of processes sharing
//! labels) every window, keeps windows in a local store, serves them over
//! HTTP and pushes them to Pyroscope or Parca.
//!
//! Threads: this one owns the sampler, drains and symbolizes (nothing here
//! ever waits on the network); one tokio thread runs the HTTP endpoint and
//! the pushers.

pub mod config;
pub mod http;
pub mod meta;
pub mod metrics;
pub mod push;
pub mod relabel;
pub mod store;
pub mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;

use crate::aggregate::Aggregate;
use crate::capture::{Capture, CaptureConfig};
use crate::preflight;
use crate::profile::{self, BuildOptions, Profile};
use crate::sample::{self, SampleKey, Sampler, Targets};
pub use config::Settings;
use metrics::Metrics;
use relabel::Labels;

/// Longest time between drains of the kernel maps. Shorter on big hosts (so
/// a generation never holds more samples than half the stack map) and while
/// a live profile request waits (so it gets its N seconds, not more).
const DRAIN_EVERY: Duration = Duration::from_secs(5);
/// Drain interval while live requests wait (they see samples sooner).
const LIVE_DRAIN: Duration = Duration::from_secs(1);
/// Longest wait for process events between checks of the window and stop.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Windows without new addresses after which a binary's parsed debug info
/// is released (it stays symbolized in ember's own cache).
const EVICT_AFTER_WINDOWS: u64 = 4;

/// A `/debug/pprof/profile?seconds=N` request waiting for its samples.
pub struct LiveRequest {
    /// How long to collect.
    pub seconds: u64,
    /// Set at the first drain after the request: samples drained then are
    /// older than the request, so collection starts there.
    pub primed: bool,
    /// When the answer is due (once primed).
    pub deadline: Instant,
    /// When it started.
    pub started: SystemTime,
    /// Only this process.
    pub pid: Option<u32>,
    /// Only processes of this service.
    pub service: Option<String>,
    /// Samples so far.
    pub agg: Aggregate,
    /// Where the gzip pprof goes.
    pub reply: tokio::sync::oneshot::Sender<Vec<u8>>,
}

/// The window being collected, symbolized on request for the page: one
/// profile per target, labeled like a stored window.
pub struct Snapshot {
    /// When the window began (ns since the epoch); stored windows start
    /// before it.
    pub start_ns: u64,
    /// One profile per target.
    pub profiles: Vec<Profile>,
}

/// Most page requests waiting for a snapshot at once; past it a page is
/// served from the store alone.
pub const MAX_SNAPSHOT_WAITERS: usize = 16;

/// State shared between the sampler thread and the HTTP/push thread.
pub struct Shared {
    /// Counters.
    pub metrics: Metrics,
    /// The local store, if enabled.
    pub store: Option<store::Store>,
    /// Pending live requests.
    pub live: Mutex<Vec<LiveRequest>>,
    /// Page requests waiting for a snapshot of the current window (all
    /// are answered by the next one).
    pub snapshots: Mutex<Vec<tokio::sync::oneshot::Sender<Arc<Snapshot>>>>,
    /// The HTTP endpoint's counters.
    pub http: http::HttpMetrics,
    /// The node's name, for the page.
    pub node: String,
    /// Set on SIGINT/SIGTERM.
    pub stop: AtomicBool,
    /// Wakes the I/O thread when the sampler thread is done.
    pub stopped: tokio::sync::Notify,
}

/// What is known of a process's labels.
enum Known {
    /// Its final labels.
    Labels(Labels),
    /// Read without `exe`, which happens when the read races the process's
    /// `exec`: read once more at the window's cut (relabeling may have
    /// dropped it for lack of `exe`, hence the option).
    Partial(Option<Labels>),
    /// Relabeling dropped it.
    Dropped,
    /// It was gone before /proc could be read.
    Unreadable,
}

/// Labels per process, read once while it lives and refreshed on exec.
#[derive(Default)]
struct Targeting {
    labels: HashMap<u32, Known>,
}

impl Targeting {
    fn learn(&mut self, pid: u32, s: &Settings) {
        let read = meta::read_process_meta(std::path::Path::new("/proc"), pid);
        // A read that finds less than final labels already hold (no `exe`:
        // the process is exiting and its memory is gone; or it is gone)
        // keeps them: a sample late in a process's exit announces it
        // again, and its last window would lose `exe`. The same pid with
        // another name is another process.
        if let Some(Known::Labels(old)) = self.labels.get(&pid) {
            let less = match &read {
                Ok(m) => m.exe.is_empty() && old.get("comm").is_none_or(|c| *c == m.comm),
                Err(_) => true,
            };
            if less {
                return;
            }
        }
        let known = match read {
            Ok(m) => {
                let l = relabel::apply(&s.rules, &meta::discovery_labels(&m, &s.node));
                match l {
                    _ if m.exe.is_empty() => Known::Partial(l),
                    Some(l) => Known::Labels(l),
                    None => Known::Dropped,
                }
            }
            Err(_) => Known::Unreadable,
        };
        self.labels.insert(pid, known);
    }

    /// Reads a partially known process once more; a process that has no
    /// `exe` for good (a kernel thread) or exited keeps what was read.
    fn complete(&mut self, pid: u32, s: &Settings) {
        if !matches!(self.labels.get(&pid), Some(Known::Partial(_))) {
            return;
        }
        let Some(Known::Partial(first)) = self.labels.remove(&pid) else {
            return;
        };
        self.learn(pid, s);
        let last = match self.labels.remove(&pid) {
            Some(Known::Partial(again)) => again,
            Some(Known::Unreadable) | None => first,
            Some(k) => {
                self.labels.insert(pid, k);
                return;
            }
        };
        let known = last.map_or(Known::Dropped, Known::Labels);
        self.labels.insert(pid, known);
    }

    fn labels_of(&mut self, key: &SampleKey, s: &Settings) -> Option<Labels> {
        if !self.labels.contains_key(&key.tgid) {
            self.learn(key.tgid, s);
        }
        self.complete(key.tgid, s);
        match self.labels.get(&key.tgid)? {
            Known::Labels(l) | Known::Partial(Some(l)) => Some(l.clone()),
            Known::Partial(None) => None,
            Known::Dropped => None,
            Known::Unreadable => {
                // Exited before its labels could be read: label it by the
                // names the kernel recorded, still subject to relabeling.
                let m = meta::ProcessMeta {
                    pid: key.tgid,
                    comm: cstr(&key.comm),
                    exe: String::new(),
                    cgroup: String::new(),
                    container_id: None,
                    systemd_unit: None,
                    pod_uid: None,
                };
                relabel::apply(&s.rules, &meta::discovery_labels(&m, &s.node))
            }
        }
    }
}

fn cstr(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(16);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Opens the store (indexing what it holds on a thread of its own) and
/// the state the sampler, HTTP and push threads share.
fn open_shared(s: &Settings) -> Result<Arc<Shared>> {
    let store = match &s.store_dir {
        None => None,
        Some(dir) => Some(store::Store::open(dir, s.retention, s.store_max_bytes)?),
    };
    let shared = Arc::new(Shared {
        metrics: Metrics::default(),
        store,
        live: Mutex::new(Vec::new()),
        snapshots: Mutex::new(Vec::new()),
        http: http::HttpMetrics::default(),
        node: s.node.clone(),
        stop: AtomicBool::new(false),
        stopped: tokio::sync::Notify::new(),
    });
    if shared.store.is_some() {
        // Index the windows already stored (once; it may take a while on a
        // big store, and retention waits for it).
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("ember-index".into())
            .spawn(move || {
                if let Some(st) = &sh.store {
                    st.rebuild_index(&mut |w| eprintln!("ember agent: {w}"));
                }
            })?;
    }
    Ok(shared)
}

/// Runs the agent until SIGINT/SIGTERM; the last window is flushed to the
/// store and to push before it returns.
pub fn run(s: Settings) -> Result<()> {
    preflight::check_privileges()?;
    preflight::check_btf()?;
    crate::signal::install();
    let shared = open_shared(&s)?;
    let pusher = push::Pusher::new(&s, shared.clone())?;
    let io_thread = http::spawn(&s, shared.clone(), pusher.clone())?;

    let mut cap = Capture::start(&CaptureConfig {
        sample: sample::Config {
            frequency: s.frequency,
            event: sample::Event::CpuClock,
            targets: Targets::All,
            kernel_stacks: s.kernel_stacks,
            count_map_entries: s.count_map_size,
            stack_map_entries: s.stack_map_size,
            unwind_tables: s.unwind_tables,
            max_user_depth: s.max_depth,
            python: s.python,
            off_cpu: s.off_cpu.then(sample::OffCpu::default),
            variant: s.bpf_variant,
        },
        unwind_memory: s.unwind_tables.then_some(s.unwind_memory),
        kernel_mappings: true,
        debug_dirs: s.debug_dirs.clone(),
        // In the background: later windows are named once files arrive.
        debuginfod: s.debuginfod.then_some(Duration::from_secs(30)),
    })?;
    let mut sink = Sink {
        s: &s,
        shared: &shared,
        pusher: &pusher,
        targeting: Targeting::default(),
    };
    let _ = shared
        .metrics
        .bpf
        .set((cap.sampler().variant(), sample::probe::kernel_release()));
    announce(&s, &shared);
    let drain_every = drain_interval(&s, cap.sampler().cpus());
    shared
        .metrics
        .bpf_map_bytes
        .store(cap.sampler().map_memory_bytes(), Ordering::Relaxed);
    let mut tick = Aggregate::default();
    let mut window = Window::begin();
    // Labels are read as each process appears, while it lives; exec
    // refreshes them.
    let learn = |t: &mut Targeting, e: sample::ProcessEvent| t.learn(e.pid, &s);
    loop {
        // Events wake the wait at once; its limit paces the drains and
        // wakes the loop in time to cut the window on schedule.
        let until_cut = s.window.saturating_sub(window.began.elapsed());
        cap.wait(MAX_WAIT.min(until_cut), &mut |e| {
            learn(&mut sink.targeting, e)
        });
        let stopping = crate::signal::stop_requested() || shared.stop.load(Ordering::SeqCst);
        let cut = stopping || window.began.elapsed() >= s.window;
        let t0 = Instant::now();
        // A page waits for the current window: drain it now.
        let snapshot = !stopping && sink.snapshot_waiting();
        let drained = if stopping {
            cap.finish(&mut tick, &mut |e| learn(&mut sink.targeting, e))?;
            true
        } else if cut || snapshot {
            cap.drain(&mut tick)?;
            true
        } else {
            let live = sink.live_waiting();
            cap.drain_if_due(&mut tick, if live { LIVE_DRAIN } else { drain_every })?
        };
        if drained {
            sink.drained(&tick, t0.elapsed(), &mut cap, stopping);
            window.agg.merge_from(&tick);
            tick.clear();
        }
        if cut {
            sink.cut_window(&window.agg, window.start, window.began.elapsed(), &mut cap);
            window.restart();
            sink.housekeeping(&mut cap);
        }
        if snapshot {
            sink.serve_snapshots(&window.agg, window.start, window.began.elapsed(), &mut cap);
        }
        if stopping {
            break;
        }
    }
    eprintln!("ember agent: stopping; flushing the push queue");
    pusher.close();
    shared.stop.store(true, Ordering::SeqCst);
    shared.stopped.notify_one();
    let _ = io_thread.join();
    Ok(())
}

/// The one line the agent logs at start: what it samples and where its
/// profiles go.
fn announce(s: &Settings, shared: &Shared) {
    eprintln!(
        "ember agent: sampling all processes at {} Hz ({} BPF variant on Linux {}), {}s windows{}{}",
        s.frequency,
        shared.metrics.bpf.get().map(|b| b.0).unwrap_or_default(),
        sample::probe::kernel_release(),
        s.window.as_secs(),
        shared
            .store
            .as_ref()
            .map(|st| format!(", store {}", st.dir().display()))
            .unwrap_or_default(),
        s.listen
            .map(|a| format!(", http://{a}"))
            .unwrap_or_default()
    );
}

/// How often the kernel maps are drained: every [`DRAIN_EVERY`], or
/// sooner when half the stack map would fill first at the full sample
/// rate; at least every second.
fn drain_interval(s: &Settings, cpus: usize) -> Duration {
    let per_second = (s.frequency * cpus as u64).max(1);
    DRAIN_EVERY
        .min(Duration::from_secs_f64(
            s.stack_map_size as f64 / 2.0 / per_second as f64,
        ))
        .max(Duration::from_secs(1))
}

/// The window being collected.
struct Window {
    agg: Aggregate,
    start: SystemTime,
    began: Instant,
}

impl Window {
    fn begin() -> Window {
        Window {
            agg: Aggregate::default(),
            start: SystemTime::now(),
            began: Instant::now(),
        }
    }

    /// Starts the next window, keeping the aggregate's allocations.
    fn restart(&mut self) {
        self.agg.clear();
        self.start = SystemTime::now();
        self.began = Instant::now();
    }
}

fn update_symbolizer_metrics(m: &Metrics, st: &crate::symbolize::SymStats) {
    m.sym_cached
        .store(st.cached_addresses as u64, Ordering::Relaxed);
    m.sym_binaries.store(st.binaries as u64, Ordering::Relaxed);
    m.sym_open_files
        .store(st.open_files as u64, Ordering::Relaxed);
    m.processes.store(st.processes as u64, Ordering::Relaxed);
    m.sym_lookups.store(st.lookups, Ordering::Relaxed);
    m.sym_misses.store(st.misses, Ordering::Relaxed);
    *m.unnamed.lock().unwrap_or_else(|e| e.into_inner()) = st.unnamed;
}

fn update_unwind_metrics(m: &Metrics, u: &crate::unwind::UnwindStats) {
    m.unwind_tables.store(u.tables as u64, Ordering::Relaxed);
    m.unwind_table_bytes.store(u.bytes, Ordering::Relaxed);
    m.unwind_tables_over_budget
        .store(u.over_budget, Ordering::Relaxed);
    m.unwind_tables_no_cfi.store(u.no_cfi, Ordering::Relaxed);
    m.unwind_tables_load_failed
        .store(u.load_failed, Ordering::Relaxed);
}

fn update_kernel_metrics(m: &Metrics, sampler: &Sampler) {
    m.update_kernel(sampler);
}

/// Where the agent's profiles go: the store, the push queues and the live
/// requests, with the labels of each process.
struct Sink<'a> {
    s: &'a Settings,
    shared: &'a Shared,
    pusher: &'a push::Pusher,
    targeting: Targeting,
}

impl Sink<'_> {
    /// Whether live requests wait for samples (they are drained sooner).
    fn live_waiting(&self) -> bool {
        !self
            .shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// After each drain: its cost and the kernel counters in the metrics,
    /// its samples to the live requests.
    fn drained(&mut self, tick: &Aggregate, took: Duration, cap: &mut Capture, all_due: bool) {
        let m = &self.shared.metrics;
        m.drain_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        m.drains.fetch_add(1, Ordering::Relaxed);
        self.serve_live(tick, cap, all_due);
        update_kernel_metrics(&self.shared.metrics, cap.sampler());
    }

    /// After each window: forgets exited processes (symbols, labels,
    /// unwind tables), releases idle parsed binaries and freed heap,
    /// updates the gauges and applies the store's retention.
    fn housekeeping(&mut self, cap: &mut Capture) {
        for pid in cap.gc(true) {
            self.targeting.labels.remove(&pid);
        }
        let m = &self.shared.metrics;
        m.mapping_records_lost
            .store(cap.map_records_lost(), Ordering::Relaxed);
        if let Some(u) = cap.unwind_stats() {
            update_unwind_metrics(m, &u);
        }
        let py_tracker = cap.python_stats();
        let (procs, sym) = cap.naming();
        sym.evict_idle(EVICT_AFTER_WINDOWS);
        let _ = sym.fetch_debuginfo(procs, Instant::now());
        // Symbolization frees large parse structures each window; hand the
        // freed heap back to the system so RSS tracks real use.
        // SAFETY: malloc_trim has no preconditions.
        unsafe { libc::malloc_trim(0) };
        update_symbolizer_metrics(m, &sym.stats(procs));
        *m.python.lock().unwrap_or_else(|e| e.into_inner()) =
            py_tracker.map(|t| (t, sym.python.stats(), sym.python.cached().1 as u64));
        *m.debuginfod.lock().unwrap_or_else(|e| e.into_inner()) = sym.debuginfod_stats();
        if let Some(store) = &self.shared.store {
            store.enforce_retention();
        }
    }

    /// Whether pages wait for a snapshot of the current window.
    fn snapshot_waiting(&self) -> bool {
        !self
            .shared
            .snapshots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Answers the pages waiting for the current window.
    fn serve_snapshots(
        &mut self,
        agg: &Aggregate,
        start: SystemTime,
        duration: Duration,
        cap: &mut Capture,
    ) {
        let waiting: Vec<_> = std::mem::take(
            &mut *self
                .shared
                .snapshots
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        let waiting: Vec<_> = waiting.into_iter().filter(|r| !r.is_closed()).collect();
        if waiting.is_empty() {
            return;
        }
        let snap = Arc::new(Snapshot {
            start_ns: start
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            profiles: self.target_profiles(agg, start, duration, cap, false),
        });
        for r in waiting {
            let _ = r.send(snap.clone());
        }
    }

    /// One profile per target (distinct label set) of a window's samples;
    /// with `count`, samples relabeling drops are counted in the metrics.
    fn target_profiles(
        &mut self,
        agg: &Aggregate,
        start: SystemTime,
        duration: Duration,
        cap: &mut Capture,
        count: bool,
    ) -> Vec<Profile> {
        let (s, shared, targeting) = (self.s, self.shared, &mut self.targeting);
        // Labels are per process: look them up once per pid, not per key.
        // Per pid: CPU samples, and off-CPU nanoseconds.
        type Entries<'a> = (Vec<(&'a SampleKey, u64)>, Vec<(&'a SampleKey, u64)>);
        let mut by_pid: HashMap<u32, Entries> = HashMap::new();
        for (key, &n) in &agg.counts {
            by_pid.entry(key.tgid).or_default().0.push((key, n));
        }
        for (key, &n) in &agg.off_cpu {
            by_pid.entry(key.tgid).or_default().1.push((key, n));
        }
        let mut groups: BTreeMap<Labels, Entries> = BTreeMap::new();
        for (_, (cpu, off)) in by_pid {
            let first = cpu.first().or(off.first()).map(|e| e.0);
            match first.and_then(|k| targeting.labels_of(k, s)) {
                Some(l) => {
                    let g = groups.entry(l).or_default();
                    g.0.extend(cpu);
                    g.1.extend(off);
                }
                None if !count => {}
                None => {
                    let n: u64 = cpu.iter().map(|e| e.1).sum();
                    shared
                        .metrics
                        .samples_dropped_by_relabel
                        .fetch_add(n, Ordering::Relaxed);
                }
            }
        }
        let (procs, sym) = cap.naming();
        profile::prepare(
            procs,
            sym,
            agg.counts.keys().chain(agg.off_cpu.keys()).map(|k| k.tgid),
        );
        let mut out = Vec::with_capacity(groups.len());
        for (labels, (entries, off)) in groups {
            let target = labels
                .get("service_name")
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            let opts = BuildOptions {
                start,
                duration,
                frequency: s.frequency,
                target: format!("{target} on {}", s.node),
                off_cpu: s.off_cpu,
            };
            let mut p = profile::build_entries(&entries, &off, &agg.stacks, procs, sym, &opts);
            p.labels = labels;
            out.push(p);
        }
        out
    }

    /// Builds one profile per target (distinct label set) from a window.
    fn cut_window(
        &mut self,
        agg: &Aggregate,
        start: SystemTime,
        duration: Duration,
        cap: &mut Capture,
    ) {
        let t0 = Instant::now();
        self.shared.metrics.windows.fetch_add(1, Ordering::Relaxed);
        let profiles = self.target_profiles(agg, start, duration, cap, true);
        let (shared, pusher) = (self.shared, self.pusher);
        for p in profiles {
            shared.metrics.profiles.fetch_add(1, Ordering::Relaxed);
            if let Some(store) = &shared.store {
                if let Err(e) = store.write(&p) {
                    shared.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("ember agent: cannot store a window: {e:#}");
                }
            }
            pusher.submit(Arc::new(p));
        }
        shared
            .metrics
            .symbolize_ns
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// Feeds a drain to the live requests and answers those that are due.
    fn serve_live(&mut self, tick: &Aggregate, cap: &mut Capture, all_due: bool) {
        let (s, shared, targeting) = (self.s, self.shared, &mut self.targeting);
        let mut live = shared.live.lock().unwrap_or_else(|e| e.into_inner());
        // Requests whose client went away get no more samples.
        live.retain(|r| !r.reply.is_closed());
        if live.is_empty() {
            return;
        }
        let now = Instant::now();
        for r in live.iter_mut() {
            if r.primed {
                r.agg.merge_from(tick);
            } else {
                r.primed = true;
                r.started = SystemTime::now();
                r.deadline = now + Duration::from_secs(r.seconds);
            }
        }
        let (due, waiting): (Vec<_>, Vec<_>) = live
            .drain(..)
            .partition(|r| all_due || (r.primed && r.deadline <= now));
        *live = waiting;
        drop(live);
        for mut r in due {
            if let Some(pid) = r.pid {
                r.agg.retain(|k| k.tgid == pid);
            }
            if let Some(svc) = &r.service {
                r.agg.retain(|k| {
                    targeting
                        .labels_of(k, s)
                        .is_some_and(|l| l.get("service_name") == Some(svc))
                });
            }
            let what = match (&r.pid, &r.service) {
                (Some(p), _) => format!("pid {p} on {}", s.node),
                (_, Some(svc)) => format!("service {svc} on {}", s.node),
                _ => format!("all processes on {}", s.node),
            };
            let opts = BuildOptions {
                start: r.started,
                duration: r.started.elapsed().unwrap_or_default(),
                frequency: s.frequency,
                target: what,
                off_cpu: s.off_cpu,
            };
            let (procs, sym) = cap.naming();
            let p: Profile = profile::build(&r.agg, procs, sym, &opts);
            let mut out = Vec::new();
            if crate::profile::pprof::write(&p, &mut out).is_ok() {
                let _ = r.reply.send(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32) -> SampleKey {
        SampleKey {
            tgid: pid,
            ..Default::default()
        }
    }

    #[test]
    fn a_process_without_exe_is_read_once_more_then_kept() {
        let s = config::Config::default().validate().unwrap();
        let mut t = Targeting::default();
        // kthreadd has no executable for good: partial first, final after
        // the one retry, labeled all the same.
        t.learn(2, &s);
        assert!(matches!(t.labels.get(&2), Some(Known::Partial(Some(_)))));
        let l = t
            .labels_of(&key(2), &s)
            .expect("a kernel thread is labeled");
        assert_eq!(l.get("pid").map(String::as_str), Some("2"));
        assert!(!l.contains_key("exe"));
        assert!(matches!(t.labels.get(&2), Some(Known::Labels(_))));
        // A live process with an executable is final at once.
        let me = std::process::id();
        let l = t.labels_of(&key(me), &s).unwrap();
        let exe = std::env::current_exe().unwrap();
        assert_eq!(l.get("exe").map(String::as_str), exe.to_str());
        assert!(matches!(t.labels.get(&me), Some(Known::Labels(_))));
    }

    #[test]
    fn a_late_read_without_exe_keeps_the_final_labels() {
        let s = config::Config::default().validate().unwrap();
        let mut t = Targeting::default();
        // kthreadd reads without `exe`, as an exiting process does: final
        // labels that have one (from when it lived) are kept.
        let held: Labels = [("comm", "kthreadd"), ("exe", "/usr/bin/was-here")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        t.labels.insert(2, Known::Labels(held.clone()));
        t.learn(2, &s);
        assert!(matches!(t.labels.get(&2), Some(Known::Labels(l)) if *l == held));
        // A pid read under another name is another process: read anew.
        let other: Labels = [("comm", "something-else")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        t.labels.insert(2, Known::Labels(other));
        t.learn(2, &s);
        assert!(matches!(t.labels.get(&2), Some(Known::Partial(_))));
        // Gone: the labels stay.
        t.labels.insert(u32::MAX - 1, Known::Labels(held.clone()));
        t.learn(u32::MAX - 1, &s);
        assert!(matches!(t.labels.get(&(u32::MAX - 1)), Some(Known::Labels(l)) if *l == held));
    }
}
