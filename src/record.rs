//! `ember record`: profile some processes (or the host) for a while and
//! write the result. The CLI in main.rs only parses arguments into
//! [`RecordOptions`]; everything observable happens here.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Result};

use crate::aggregate::Aggregate;
use crate::capture::{Capture, CaptureConfig};
use crate::export::{self, ExportOptions, Format};
use crate::preflight;
use crate::profile::{self, BuildOptions, Profile};
use crate::sample::{self, Event, KernelStats};
pub use crate::watch::What;
use crate::watch::{describe, targets, Target};

/// Everything `ember record` needs.
#[derive(Debug, Clone)]
pub struct RecordOptions {
    /// What to profile.
    pub what: What,
    /// Stop after this long; `None` runs until Ctrl-C or the target exits.
    pub duration: Option<Duration>,
    /// Samples per second per CPU.
    pub frequency: u64,
    /// Event asked for.
    pub event: Event,
    /// Files to write.
    pub outputs: Vec<(Format, PathBuf)>,
    /// Capture kernel stacks.
    pub kernel: bool,
    /// Per-thread root frames in folded/SVG output.
    pub threads: bool,
    /// Count map entries per generation.
    pub count_map_entries: u32,
    /// Stack map entries per generation.
    pub stack_map_entries: u32,
    /// How often the kernel maps are drained.
    pub drain_interval: Duration,
    /// Show a progress line (only when stderr is a terminal).
    pub progress: bool,
    /// Walk user stacks with unwind tables (else frame pointers only).
    pub unwind_tables: bool,
    /// Kernel memory the unwind tables may take, in bytes.
    pub unwind_memory: u64,
    /// More directories with separate debug files by build ID.
    pub debug_dirs: Vec<PathBuf>,
    /// Most user frames walked with unwind tables.
    pub max_depth: u32,
    /// How long to wait for debuginfod after sampling; None: do not ask.
    pub debuginfod_timeout: Option<Duration>,
    /// Walk Python frames.
    pub python: bool,
    /// Record off-CPU time; None: CPU only.
    pub off_cpu: Option<sample::OffCpu>,
    /// What folded and SVG outputs show.
    pub sample_type: export::SampleType,
    /// Which build of the BPF program to load.
    pub bpf_variant: sample::Variant,
}

/// The outcome, for the summary.
pub struct Recording {
    /// The symbolized profile.
    pub profile: Profile,
    /// Kernel counters at the end.
    pub stats: KernelStats,
    /// Samples drained into userspace.
    pub drained: u64,
    /// Processes with samples.
    pub processes: usize,
    /// Threads with samples.
    pub threads: usize,
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Notes for the user (a target exited early...).
    pub notes: Vec<String>,
    /// Event actually used.
    pub event: Event,
    /// CPUs sampled.
    pub cpus: usize,
    /// Kernel memory of the BPF maps.
    pub map_bytes: u64,
    /// Time from the end of sampling to the files being written.
    pub finish_time: Duration,
    /// Time spent in the BPF sampling program.
    pub bpf_cost: sample::BpfCost,
    /// The build of the BPF program that ran.
    pub bpf_variant: sample::Variant,
    /// Time spent in the off-CPU program (every context switch).
    pub off_cpu_cost: sample::BpfCost,
    /// Context switches on the host while recording (the off-CPU
    /// program's runs).
    pub switches: u64,
    /// Unwind tables (None with frame pointers only).
    pub unwind: Option<crate::unwind::UnwindStats>,
    /// Frames left without a name, by reason.
    pub unnamed: crate::symbolize::Unnamed,
    /// Addresses named, by where the names came from.
    pub named: crate::symbolize::Named,
    /// Python: processes found and code objects named (None: off).
    pub python: Option<(crate::python::TrackerStats, crate::python::code::NameStats)>,
}

/// Checks everything that can be checked before sampling starts.
pub fn preflight(opts: &RecordOptions) -> Result<()> {
    if !(1..=100_000).contains(&opts.frequency) {
        bail!(
            "--frequency {} is out of range; use 1 to 100000 Hz (99 is a good default)",
            opts.frequency
        );
    }
    if let Some(d) = opts.duration {
        if d.is_zero() || d > Duration::from_secs(7 * 24 * 3600) {
            bail!("--duration must be between 1ms and 7 days");
        }
    }
    if opts.outputs.is_empty() {
        bail!("no output to write; give --output or --format");
    }
    preflight::check_privileges()?;
    preflight::check_btf()?;
    if let What::Pids(pids) = &opts.what {
        for &p in pids {
            preflight::check_pid(p)?;
        }
    }
    for (_, path) in &opts.outputs {
        export::check_writable(path)?;
    }
    Ok(())
}

/// Runs a recording from start to written files.
pub fn run(opts: &RecordOptions) -> Result<Recording> {
    preflight(opts)?;
    crate::signal::install();
    let mut cap = Capture::start(&CaptureConfig {
        sample: sample::Config {
            frequency: opts.frequency,
            event: opts.event,
            targets: targets(&opts.what),
            kernel_stacks: opts.kernel,
            count_map_entries: opts.count_map_entries,
            stack_map_entries: opts.stack_map_entries,
            unwind_tables: opts.unwind_tables,
            max_user_depth: opts.max_depth,
            python: opts.python,
            off_cpu: opts.off_cpu,
            variant: opts.bpf_variant,
        },
        unwind_memory: opts.unwind_tables.then_some(opts.unwind_memory),
        // A process watched by pid is read while it lives; its mappings
        // come from /proc.
        kernel_mappings: !matches!(opts.what, What::Pids(_)),
        debug_dirs: opts.debug_dirs.clone(),
        debuginfod: opts.debuginfod_timeout,
    })?;
    let mut agg = Aggregate::default();
    let start_wall = SystemTime::now();
    let mut target = Target::begin(&opts.what, &mut cap)?;
    let progress = opts.progress && std::io::stderr().is_terminal();
    let (mut last_gc, mut last_progress) = (Instant::now(), None::<Instant>);
    loop {
        cap.wait(POLL, &mut |_| {});
        if last_gc.elapsed() >= GC_EVERY {
            last_gc = Instant::now();
            // Exited processes keep their symbols until the one build at
            // the end; their unwind tables can go.
            cap.gc(false);
        }
        if target.done(opts.duration)? {
            break;
        }
        cap.drain_if_due(&mut agg, opts.drain_interval)?;
        if progress && last_progress.is_none_or(|t| t.elapsed() >= Duration::from_millis(500)) {
            last_progress = Some(Instant::now());
            let samples = cap.stats().map(|s| s.samples).unwrap_or(0);
            show_progress(target.start.elapsed(), opts.duration, samples);
        }
    }
    let duration = target.start.elapsed();
    let end = Instant::now();
    if progress {
        eprint!("\r\x1b[2K");
    }
    cap.finish(&mut agg, &mut |_| {})?;
    let stats = cap.stats()?;
    let sampler = cap.sampler();
    let (event, cpus, map_bytes, bpf_cost) = (
        sampler.event(),
        sampler.cpus(),
        sampler.map_memory_bytes(),
        sampler.bpf_cost(),
    );
    let off_cpu_cost = sampler.off_cpu_cost();
    let switches = sampler.switches();
    let bpf_variant = sampler.variant();
    let unwind = cap.unwind_stats();
    let py_tracker = cap.python_stats();
    let (mut procs, mut sym) = cap.into_naming();
    let build = BuildOptions {
        start: start_wall,
        duration,
        frequency: opts.frequency,
        target: describe(&opts.what),
        off_cpu: opts.off_cpu.is_some(),
    };
    let mut profile = profile::build(&agg, &mut procs, &mut sym, &build);
    let mut notes = Vec::new();
    if let Some(wait) = opts.debuginfod_timeout {
        // Binaries left unnamed: their debug files may be on a debuginfod
        // server; wait for them at most this long, then name again.
        let t0 = Instant::now();
        if let Some(d) = sym.debuginfod() {
            d.collect_failures();
        }
        let (arrived, pending) = sym.fetch_debuginfo(&procs, t0 + wait);
        // One sentence for the user, whichever came first.
        let failure = sym.debuginfod().and_then(|d| {
            d.mark_reported();
            d.take_failure()
        });
        if pending > 0 {
            notes.push(format!(
                "debuginfod: no answer within {:.1} s for {pending} binar{}; their frames stay unnamed (--debuginfod-timeout waits longer)",
                wait.as_secs_f64(),
                if pending == 1 { "y" } else { "ies" }
            ));
        } else if let Some(why) = failure {
            notes.push(why);
        }
        if arrived > 0 {
            profile = profile::build(&agg, &mut procs, &mut sym, &build);
            notes.push(format!(
                "named {arrived} stripped binar{} from debuginfod in {:.1} s",
                if arrived == 1 { "y" } else { "ies" },
                t0.elapsed().as_secs_f64()
            ));
        }
    }
    let st = sym.stats(&procs);
    let unnamed = st.unnamed;
    let named = st.named;
    let eo = ExportOptions {
        threads: opts.threads,
        sample_type: opts.sample_type,
    };
    let mut written = Vec::new();
    for (format, path) in &opts.outputs {
        export::write_file(&profile, *format, path, eo)?;
        written.push(path.clone());
    }
    Ok(Recording {
        drained: agg.total(),
        processes: agg.processes(),
        threads: agg.threads(),
        profile,
        stats,
        written,
        notes: {
            let mut n = target.finish();
            n.extend(notes);
            n
        },
        event,
        cpus,
        map_bytes,
        finish_time: end.elapsed(),
        bpf_cost,
        bpf_variant,
        off_cpu_cost,
        switches,
        python: py_tracker.map(|t| (t, sym.python.stats())),
        unwind,
        unnamed,
        named,
    })
}

/// How long the loop waits for process events at most (it also paces the
/// stop checks).
const POLL: Duration = Duration::from_millis(50);
/// How often exited processes release their unwind tables.
const GC_EVERY: Duration = Duration::from_secs(5);

fn show_progress(elapsed: Duration, limit: Option<Duration>, samples: u64) {
    let remaining = limit
        .map(|d| format!(" / {:.0}s", d.as_secs_f64()))
        .unwrap_or_else(|| " (Ctrl-C to stop)".into());
    eprint!(
        "\r\x1b[2Kember: recording {:.0}s{} · {} samples",
        elapsed.as_secs_f64(),
        remaining,
        samples
    );
    let _ = std::io::stderr().flush();
}

/// The end-of-run summary shown to the user.
pub fn summary(r: &Recording) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let p = &r.profile;
    let _ = writeln!(
        s,
        "ember: {} samples of {} over {:.1} s at {} Hz on {} CPUs ({})",
        r.drained,
        crate::util::printable(&p.target, 300),
        p.duration.as_secs_f64(),
        p.frequency,
        r.cpus,
        r.event.name()
    );
    for n in &r.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    let st = &r.stats;
    // Each cause's wording is in its row of sample::stats::COUNTERS.
    let _ = writeln!(s, "  lost: {}", st.lost_summary());
    let refused: Vec<String> = crate::untrusted::refusals()
        .into_iter()
        .filter(|&(_, _, n)| n > 0)
        .map(|(w, r, n)| format!("{n} {} ({})", w.name(), r.name()))
        .collect();
    if !refused.is_empty() {
        let _ = writeln!(
            s,
            "  refused files other users control: {}",
            refused.join(", ")
        );
    }
    if st.user_stacks > 0 {
        let causes = st.truncation_summary();
        let _ = writeln!(
            s,
            "  user stacks: {:.2}% complete ({}){}",
            100.0 * st.complete as f64 / st.user_stacks as f64,
            if r.unwind.is_some() {
                "unwind tables, frame pointers where none"
            } else {
                "frame pointers only"
            },
            if causes.is_empty() {
                String::new()
            } else {
                format!("; truncated: {causes}")
            }
        );
    }
    let unnamed: Vec<String> = r
        .unnamed
        .causes()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(c, n)| format!("{n} {}", c.replace('_', " ")))
        .collect();
    let n = &r.named;
    if n.debug_file + n.debuginfod + n.minidebuginfo > 0 {
        let _ = writeln!(
            s,
            "  named frames (distinct addresses): {} from the binaries' own symbols, {} from debug files, {} from debuginfod, {} from MiniDebugInfo",
            n.own, n.debug_file, n.debuginfod, n.minidebuginfo
        );
    }
    if !unnamed.is_empty() {
        let _ = writeln!(
            s,
            "  unnamed frames (distinct addresses): {}",
            unnamed.join(", ")
        );
    }
    if let Some((t, n)) = &r.python {
        let st = &r.stats;
        if t.processes + t.unsupported_version + t.unusable_binary > 0 {
            let _ = writeln!(
                s,
                "  python: {} processes; {} samples walked ({} cut short: {} unreadable frame, {} depth limit, {} not stored), {} on threads without Python; code objects: {} named, {} unreadable, {} not code{}{}",
                t.processes,
                st.py_stacks,
                st.py_read + st.py_depth + st.py_lost,
                st.py_read,
                st.py_depth,
                st.py_lost,
                st.py_no_thread,
                n.named,
                n.unreadable,
                n.not_code,
                if t.unsupported_version > 0 {
                    format!("; {} binaries of a version ember does not know (3.8-3.13 are)", t.unsupported_version)
                } else {
                    String::new()
                },
                if t.unusable_binary > 0 {
                    format!("; {} unusable binaries (no _PyRuntime, unreadable or free-threaded)", t.unusable_binary)
                } else {
                    String::new()
                },
            );
        }
    }
    if let Some(u) = &r.unwind {
        let _ = writeln!(
            s,
            "  unwind tables: {} binaries, {} rows, {:.1} MiB in the kernel (peak {:.1} MiB), built in {:.0} ms; {} registrations, {} re-reads{}",
            u.built - u.no_cfi - u.load_failed,
            u.rows,
            u.bytes as f64 / 1048576.0,
            u.peak_bytes as f64 / 1048576.0,
            u.build_time.as_secs_f64() * 1000.0,
            u.registrations,
            u.refreshes,
            if u.over_budget > 0 {
                format!("; {} not loaded: over --unwind-memory", u.over_budget)
            } else {
                String::new()
            }
        );
    }
    let _ = writeln!(
        s,
        "  processes: {}, threads: {}, BPF maps: {:.1} MiB{}",
        r.processes,
        r.threads,
        r.map_bytes as f64 / 1048576.0,
        if sample::probe::map_memory_is_estimate() {
            " (the kernel's estimate from the maps' sizes, before Linux 6.4)"
        } else {
            ""
        }
    );
    if r.bpf_cost.timed > 0 {
        // Each run interrupts a CPU; frequency runs per second per CPU.
        let share = r.bpf_cost.per_run_ns() * p.frequency as f64 / 1e9 * 100.0;
        let _ = writeln!(
            s,
            "  sampler cost: {:.2} µs per sample in BPF over {} samples ({:.3}% of each CPU at {} Hz; {} BPF variant)",
            r.bpf_cost.per_run_ns() / 1000.0,
            r.bpf_cost.timed,
            share,
            p.frequency,
            r.bpf_variant
        );
    } else {
        let _ = writeln!(
            s,
            "  sampler cost: not measured (no sample was taken; {} BPF variant)",
            r.bpf_variant
        );
    }
    if p.off_cpu {
        let st = &r.stats;
        let waits: Vec<String> = p
            .top_waits(5)
            .into_iter()
            .map(|(name, ns)| {
                format!(
                    "{:.2} s {}",
                    ns as f64 / 1e9,
                    crate::util::printable(&name, 80)
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "  off-CPU: {:.2} s in {} waits recorded ({} shorter than the threshold, {} sampled out, {} dropped: map full); {:.2} µs in BPF per context switch (measured over {} of {}), {} stack walks{}{}",
            p.off_cpu_total() as f64 / 1e9,
            st.off_cpu_waits,
            st.off_cpu_short,
            st.off_cpu_sampled_out,
            st.off_cpu_dropped,
            r.off_cpu_cost.per_run_ns() / 1000.0,
            r.off_cpu_cost.timed,
            r.switches.max(r.off_cpu_cost.runs),
            st.off_cpu_walks,
            if waits.is_empty() { "" } else { "; largest waits: " },
            waits.join(", ")
        );
    }
    let total = p.total().max(1);
    let top = p.top_self(5);
    if !top.is_empty() {
        let _ = writeln!(s, "  top functions by self time:");
        for (name, n) in top {
            // Names come from the profiled programs: no escape sequence of
            // theirs reaches the user's terminal.
            let _ = writeln!(
                s,
                "    {:5.1}%  {}",
                100.0 * n as f64 / total as f64,
                crate::util::printable(&name, 200)
            );
        }
    }
    let files: Vec<String> = r.written.iter().map(|p| p.display().to_string()).collect();
    let _ = writeln!(
        s,
        "  wrote {} (in {:.2} s)",
        files.join(", "),
        r.finish_time.as_secs_f64()
    );
    s
}
