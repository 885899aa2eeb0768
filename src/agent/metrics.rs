//! The agent's own counters, rendered in Prometheus text format. The BPF
//! program's counters are rendered from their one table,
//! `sample::stats::COUNTERS`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use crate::sample::abi::STAT_COUNT;
use crate::sample::stats::{KernelStats, COUNTERS};
use crate::sample::Sampler;

/// The BPF program's counters as last read, one per row of
/// `sample::stats::COUNTERS`.
#[derive(Default)]
pub struct KernelCounters([AtomicU64; STAT_COUNT]);

impl KernelCounters {
    /// Replaces the values with a fresh read.
    pub fn store(&self, st: &KernelStats) {
        for (a, v) in self.0.iter().zip(st.values()) {
            a.store(v, Relaxed);
        }
    }

    /// The values last stored.
    pub fn load(&self) -> KernelStats {
        KernelStats::from_values(std::array::from_fn(|i| self.0[i].load(Relaxed)))
    }
}

/// Counters and gauges shared by the sampler, HTTP and push threads.
#[derive(Default)]
pub struct Metrics {
    /// The build of the BPF program that runs and the kernel release, set
    /// once at start.
    pub bpf: std::sync::OnceLock<(crate::sample::Variant, String)>,
    /// The BPF program's counters (copied after each drain).
    pub kernel: KernelCounters,
    /// Samples of processes relabeling dropped.
    pub samples_dropped_by_relabel: AtomicU64,
    /// Drains and their time.
    pub drains: AtomicU64,
    /// Total drain time, ns.
    pub drain_ns: AtomicU64,
    /// Windows cut, and profiles written.
    pub windows: AtomicU64,
    /// Profiles (targets) produced.
    pub profiles: AtomicU64,
    /// Symbolize + build time, ns.
    pub symbolize_ns: AtomicU64,
    /// Symbolization cache lookups and misses.
    pub sym_lookups: AtomicU64,
    /// Misses.
    pub sym_misses: AtomicU64,
    /// Cached addresses.
    pub sym_cached: AtomicU64,
    /// Binaries held.
    pub sym_binaries: AtomicU64,
    /// Binary files held open.
    pub sym_open_files: AtomicU64,
    /// Frames left unnamed, by reason (running totals).
    pub unnamed: Mutex<crate::symbolize::Unnamed>,
    /// Processes tracked.
    pub processes: AtomicU64,
    /// Store write failures.
    pub store_errors: AtomicU64,
    /// BPF map memory.
    pub bpf_map_bytes: AtomicU64,
    /// BPF program time, ns.
    pub bpf_run_ns: AtomicU64,
    /// Context switches the off-CPU program saw (0 without off-CPU).
    pub off_cpu_switches: AtomicU64,
    /// Time spent in the off-CPU program, ns.
    pub off_cpu_run_ns: AtomicU64,
    /// Unwind tables loaded.
    pub unwind_tables: AtomicU64,
    /// Their kernel memory.
    pub unwind_table_bytes: AtomicU64,
    /// Tables not loaded: over the memory budget.
    pub unwind_tables_over_budget: AtomicU64,
    /// debuginfod fetches (None without a server).
    pub debuginfod: Mutex<Option<crate::symbolize::debuginfod::FetchStats>>,
    /// Mapping records lost (kernel ring full, or too many processes not
    /// yet sampled): those processes' mappings come from /proc only.
    pub mapping_records_lost: AtomicU64,
    /// Binaries without a table: no usable CFI.
    pub unwind_tables_no_cfi: AtomicU64,
    /// Binaries without a table: the kernel refused it.
    pub unwind_tables_load_failed: AtomicU64,
    /// Push counters per backend index.
    pub push: Mutex<Vec<PushMetrics>>,
    /// Python: processes found and code objects named (None: off).
    pub python: Mutex<
        Option<(
            crate::python::TrackerStats,
            crate::python::code::NameStats,
            u64,
        )>,
    >,
}

/// Per-backend push counters.
#[derive(Default, Clone)]
pub struct PushMetrics {
    /// Backend name (`pyroscope http://...`).
    pub name: String,
    /// Requests sent.
    pub attempts: u64,
    /// Accepted.
    pub successes: u64,
    /// Failed (any reason, retried or not).
    pub failures: u64,
    /// Rejected by the server with a non-retryable status.
    pub rejected: u64,
    /// Dropped from the queue by cause.
    pub dropped_queue_full: u64,
    /// Too old for the server to accept.
    pub dropped_expired: u64,
    /// Bytes waiting.
    pub queued_bytes: u64,
    /// Items waiting.
    pub queued_items: u64,
    /// 307/308 redirects followed.
    pub redirects_followed: u64,
    /// Redirects not followed (another 3xx, too many, https to http, not a
    /// URL); the profile is dropped and counted as rejected.
    pub redirects_refused: u64,
    /// Responses whose body passed the read cap (the rest was not read).
    pub oversized_responses: u64,
}

/// A Prometheus label value: backslash, quote and line breaks escaped.
fn label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::new();
        render_kernel(&mut s, &self.kernel.load());
        if let Some((variant, _)) = self.bpf.get() {
            // The variant only: /metrics, open to every local user, holds
            // counts and fixed names, no free text (the kernel release is in
            // the agent's start-up line).
            let _ = writeln!(
                s,
                "# HELP ember_bpf_info The build of the BPF program that runs (modern: Linux 5.17+, compat: 5.10 and newer).\n# TYPE ember_bpf_info gauge\nember_bpf_info{{variant=\"{variant}\"}} 1"
            );
        }
        let g = |a: &AtomicU64| a.load(Relaxed);
        let mut line = |name: &str, kind: &str, help: &str, v: String| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{v}");
        };
        line(
            "ember_unwind_tables",
            "gauge",
            "Unwind tables loaded in the kernel.",
            format!(" {}", g(&self.unwind_tables)),
        );
        line(
            "ember_unwind_table_bytes",
            "gauge",
            "Kernel memory of the loaded unwind tables.",
            format!(" {}", g(&self.unwind_table_bytes)),
        );
        line(
            "ember_unwind_tables_over_budget_total",
            "counter",
            "Unwind tables not loaded because sampler.unwind_memory was used up.",
            format!(" {}", g(&self.unwind_tables_over_budget)),
        );
        let fetches = *self.debuginfod.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = fetches {
            for (name, help, v) in [
                ("ember_debuginfod_cache_hits_total", "Debug files used from the debuginfod cache.", f.hits),
                ("ember_debuginfod_requests_total", "Requests to debuginfod servers.", f.requests),
                ("ember_debuginfod_fetched_total", "Debug files fetched from debuginfod.", f.fetched),
                ("ember_debuginfod_missing_total", "Build IDs no debuginfod server had.", f.missing),
                ("ember_debuginfod_errors_total", "debuginfod requests that failed (unreachable, timed out, too large, bad status).", f.errors),
                ("ember_debuginfod_bytes_total", "Bytes of debug files fetched from debuginfod.", f.bytes),
            ] {
                line(name, "counter", help, format!(" {v}"));
            }
        }
        line(
            "ember_mapping_records_lost_total",
            "counter",
            "Records of new executable mappings lost (a kernel ring was full, or too many processes not yet sampled); those processes' mappings are read from /proc, which a process that exits at once may beat.",
            format!(" {}", g(&self.mapping_records_lost)),
        );
        line(
            "ember_unwind_tables_failed_total",
            "counter",
            "Binaries walked with frame pointers only, by reason: no usable CFI, or the kernel refused the table.",
            format!(
                "{{reason=\"no_cfi\"}} {}\nember_unwind_tables_failed_total{{reason=\"load_failed\"}} {}",
                g(&self.unwind_tables_no_cfi),
                g(&self.unwind_tables_load_failed)
            ),
        );
        let py = *self.python.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, n, cached)) = py {
            line(
                "ember_python_processes_total",
                "counter",
                "CPython processes found and followed.",
                format!(" {}", t.processes),
            );
            line(
                "ember_python_binaries_unsupported_total",
                "counter",
                "CPython binaries not followed, by reason: a version ember has no layout for (3.8-3.13 are supported), or unusable (no _PyRuntime, unreadable, free-threaded).",
                format!(
                    "{{reason=\"version\"}} {}\nember_python_binaries_unsupported_total{{reason=\"unusable\"}} {}",
                    t.unsupported_version, t.unusable_binary
                ),
            );
            line(
                "ember_python_code_objects_total",
                "counter",
                "Python code objects read to name frames, by result: named, unreadable (the process exited first), not a code object, or not cached (cache budget spent).",
                format!(
                    "{{result=\"named\"}} {}\nember_python_code_objects_total{{result=\"unreadable\"}} {}\nember_python_code_objects_total{{result=\"not_code\"}} {}\nember_python_code_objects_total{{result=\"cache_full\"}} {}",
                    n.named, n.unreadable, n.not_code, n.cache_full
                ),
            );
            line(
                "ember_python_code_cache_bytes",
                "gauge",
                "Memory of the cached Python code objects (names, files, line tables).",
                format!(" {cached}"),
            );
        }
        line(
            "ember_samples_dropped_by_relabel_total",
            "counter",
            "Samples of processes that relabel rules drop.",
            format!(" {}", g(&self.samples_dropped_by_relabel)),
        );
        line(
            "ember_drains_total",
            "counter",
            "Kernel map drains.",
            format!(" {}", g(&self.drains)),
        );
        line(
            "ember_drain_seconds_total",
            "counter",
            "Time spent draining kernel maps.",
            format!(" {:.6}", g(&self.drain_ns) as f64 / 1e9),
        );
        line(
            "ember_windows_total",
            "counter",
            "Windows cut.",
            format!(" {}", g(&self.windows)),
        );
        line(
            "ember_profiles_total",
            "counter",
            "Per-target profiles produced.",
            format!(" {}", g(&self.profiles)),
        );
        line(
            "ember_symbolize_seconds_total",
            "counter",
            "Time spent symbolizing and building profiles.",
            format!(" {:.6}", g(&self.symbolize_ns) as f64 / 1e9),
        );
        line(
            "ember_symbolizer_lookups_total",
            "counter",
            "Address lookups in the symbolization caches.",
            format!(" {}", g(&self.sym_lookups)),
        );
        line(
            "ember_symbolizer_misses_total",
            "counter",
            "Lookups that had to symbolize.",
            format!(" {}", g(&self.sym_misses)),
        );
        line(
            "ember_symbolizer_cached_addresses",
            "gauge",
            "Addresses in the symbolization caches.",
            format!(" {}", g(&self.sym_cached)),
        );
        line(
            "ember_symbolizer_binaries",
            "gauge",
            "Binaries known to the symbolizer.",
            format!(" {}", g(&self.sym_binaries)),
        );
        line(
            "ember_symbolizer_open_files",
            "gauge",
            "Binary files held open for symbolization (bounded by a quarter of the open-file limit).",
            format!(" {}", g(&self.sym_open_files)),
        );
        let unnamed = *self.unnamed.lock().unwrap_or_else(|e| e.into_inner());
        let series: Vec<String> = unnamed
            .causes()
            .iter()
            .map(|(c, n)| format!("ember_frames_unnamed_total{{reason=\"{c}\"}} {n}"))
            .collect();
        line(
            "ember_frames_unnamed_total",
            "counter",
            "Frames left without a name (distinct addresses per profile built), by reason.",
            series
                .join("\n")
                .trim_start_matches("ember_frames_unnamed_total")
                .to_string(),
        );
        let refused: Vec<String> = crate::untrusted::refusals()
            .into_iter()
            .map(|(w, r, n)| {
                format!(
                    "ember_untrusted_files_refused_total{{what=\"{}\",reason=\"{}\"}} {n}",
                    w.name(),
                    r.name()
                )
            })
            .collect();
        line(
            "ember_untrusted_files_refused_total",
            "counter",
            "Files other users control that ember refused to open or read, by kind and reason (links out of reach, FIFOs and devices, over-size files, files changed while read, descriptor budget).",
            // `line` writes the name once; the series carry it themselves.
            refused
                .join("\n")
                .trim_start_matches("ember_untrusted_files_refused_total")
                .to_string(),
        );
        line(
            "ember_processes_tracked",
            "gauge",
            "Processes with captured maps and labels.",
            format!(" {}", g(&self.processes)),
        );
        line(
            "ember_store_errors_total",
            "counter",
            "Windows that could not be written to the store.",
            format!(" {}", g(&self.store_errors)),
        );
        line(
            "ember_bpf_map_bytes",
            "gauge",
            "Kernel memory of the sampler's BPF maps, from their fdinfo (before Linux 6.4 the kernel's estimate from their sizes).",
            format!(" {}", g(&self.bpf_map_bytes)),
        );
        line(
            "ember_bpf_run_seconds_total",
            "counter",
            "Time spent in the BPF sampling program (every run times itself).",
            format!(" {:.6}", g(&self.bpf_run_ns) as f64 / 1e9),
        );
        if g(&self.off_cpu_switches) > 0 {
            line(
                "ember_off_cpu_switches_total",
                "counter",
                "Context switches the off-CPU program saw (every switch on the host, profiled or not).",
                format!(" {}", g(&self.off_cpu_switches)),
            );
            line(
                "ember_off_cpu_bpf_run_seconds_total",
                "counter",
                "Time spent in the off-CPU BPF program (about 1 run in 64 times itself; this is their mean times all runs).",
                format!(" {:.6}", g(&self.off_cpu_run_ns) as f64 / 1e9),
            );
        }
        let (rss, cpu) = self_usage();
        line(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory of the agent.",
            format!(" {rss}"),
        );
        line(
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time of the agent.",
            format!(" {cpu:.3}"),
        );
        let push = self.push.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let series = |field: &dyn Fn(&PushMetrics) -> u64| {
            push.iter()
                .map(|p| {
                    format!(
                        "{{backend=\"{}\"}} {}",
                        label_value(&backend_label(&p.name)),
                        field(p)
                    )
                })
                .collect::<Vec<_>>()
        };
        for (name, kind, help, f) in [
            (
                "ember_push_attempts_total",
                "counter",
                "Push requests sent.",
                &(|p: &PushMetrics| p.attempts) as &dyn Fn(&PushMetrics) -> u64,
            ),
            (
                "ember_push_successes_total",
                "counter",
                "Push requests accepted.",
                &|p: &PushMetrics| p.successes,
            ),
            (
                "ember_push_failures_total",
                "counter",
                "Push requests that failed.",
                &|p: &PushMetrics| p.failures,
            ),
            (
                "ember_push_rejected_total",
                "counter",
                "Profiles the server rejected (not retried).",
                &|p: &PushMetrics| p.rejected,
            ),
            (
                "ember_push_dropped_queue_full_total",
                "counter",
                "Profiles dropped because the queue was full.",
                &|p: &PushMetrics| p.dropped_queue_full,
            ),
            (
                "ember_push_dropped_expired_total",
                "counter",
                "Profiles dropped as too old for the server.",
                &|p: &PushMetrics| p.dropped_expired,
            ),
            (
                "ember_push_oversized_responses_total",
                "counter",
                "Responses whose body was larger than the 64 KiB read cap (the rest was not read).",
                &|p: &PushMetrics| p.oversized_responses,
            ),
            (
                "ember_push_queued_bytes",
                "gauge",
                "Bytes waiting to be pushed.",
                &|p: &PushMetrics| p.queued_bytes,
            ),
            (
                "ember_push_queued_profiles",
                "gauge",
                "Profiles waiting to be pushed.",
                &|p: &PushMetrics| p.queued_items,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for v in series(f) {
                let _ = writeln!(s, "{name}{v}");
            }
        }
        let name = "ember_push_redirects_total";
        let _ = writeln!(
            s,
            "# HELP {name} Redirects answered to push requests: 307/308 followed, or refused (the profile is dropped).\n# TYPE {name} counter"
        );
        for p in &push {
            let b = label_value(&p.name);
            let _ = writeln!(
                s,
                "{name}{{backend=\"{b}\",outcome=\"followed\"}} {}\n{name}{{backend=\"{b}\",outcome=\"refused\"}} {}",
                p.redirects_followed, p.redirects_refused
            );
        }
        s
    }

    /// Copies the sampler's counters and BPF run time (after a drain).
    pub fn update_kernel(&self, sampler: &Sampler) {
        if let Ok(st) = sampler.stats() {
            self.kernel.store(&st);
        }
        self.bpf_run_ns
            .store(sampler.bpf_cost().total_ns(), Relaxed);
        if sampler.off_cpu() {
            let c = sampler.off_cpu_cost();
            self.off_cpu_switches
                .store(sampler.switches().max(c.runs), Relaxed);
            self.off_cpu_run_ns.store(c.total_ns(), Relaxed);
        }
    }

    /// Updates one backend's counters.
    pub fn with_push(&self, i: usize, f: impl FnOnce(&mut PushMetrics)) {
        let mut p = self.push.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = p.get_mut(i) {
            f(m);
        }
    }
}

/// The BPF program's counters: one HELP/TYPE pair per family, then its
/// series, in the order of `COUNTERS` (a family where its first row is).
fn render_kernel(s: &mut String, st: &KernelStats) {
    for (i, c) in COUNTERS.iter().enumerate() {
        let family = c.family;
        if COUNTERS[..i].iter().any(|o| o.family.name == family.name) {
            continue;
        }
        let name = family.name;
        let _ = writeln!(s, "# HELP {name} {}\n# TYPE {name} counter", family.help);
        for m in COUNTERS[i..].iter().filter(|o| o.family.name == name) {
            match m.label {
                Some((label, value)) => {
                    let _ = writeln!(s, "{name}{{{label}=\"{value}\"}} {}", st.get(m));
                }
                None => {
                    let _ = writeln!(s, "{name} {}", st.get(m));
                }
            }
        }
    }
}

/// A backend's name as a label value: `/metrics` is open to every local
/// user, so a URL's credentials (`user:pass@`) and query are left out.
fn backend_label(name: &str) -> String {
    let mut s = name.to_string();
    if let Some(i) = s.find("://") {
        let rest = &s[i + 3..];
        let end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..end].rfind('@') {
            s = format!("{}{}", &s[..i + 3], &rest[at + 1..]);
        }
    }
    if let Some(q) = s.find(['?', '#']) {
        s.truncate(q);
    }
    s.replace(['"', '\\', '\n'], "'")
}

/// (resident bytes, CPU seconds) of this process.
pub fn self_usage() -> (u64, f64) {
    let page = 4096u64;
    let rss = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0)
        * page;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / hz)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    #[test]
    fn every_family_has_one_help_and_type_and_every_kernel_counter_one_series() {
        let m = Metrics::default();
        let st = KernelStats::from_values(std::array::from_fn(|i| 1000 + i as u64));
        m.kernel.store(&st);
        assert_eq!(m.kernel.load(), st);
        let text = m.render();
        let mut help = std::collections::HashMap::<&str, usize>::new();
        let mut kind = std::collections::HashMap::<&str, usize>::new();
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                *help.entry(name).or_default() += 1;
                declared.insert(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, t) = rest.split_once(' ').unwrap();
                assert!(matches!(t, "counter" | "gauge"), "{line}");
                assert!(declared.contains(name), "TYPE before HELP: {line}");
                *kind.entry(name).or_default() += 1;
            } else {
                // A sample: its family was declared above it.
                let name = line.split(['{', ' ']).next().unwrap();
                assert!(declared.contains(name), "undeclared series: {line}");
                assert!(
                    line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                    "{line}"
                );
            }
        }
        for (name, n) in &help {
            assert!(valid_metric_name(name), "{name}");
            assert_eq!(*n, 1, "{name}: {n} HELP lines");
            assert_eq!(kind.get(name), Some(&1), "{name}: TYPE lines");
        }
        // Every kernel counter: exactly one series, with its value.
        for c in COUNTERS {
            assert_eq!(help.get(c.family.name), Some(&1), "{}", c.family.name);
            let series = match c.label {
                Some((l, v)) => format!("{}{{{l}=\"{v}\"}}", c.family.name),
                None => c.family.name.to_string(),
            };
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.rsplit_once(' ').is_some_and(|(s, _)| s == series))
                .collect();
            assert_eq!(lines, [format!("{series} {}", st.get(c))], "{}", c.field);
        }
    }

    #[test]
    fn backend_labels_carry_no_credentials() {
        assert_eq!(
            super::backend_label("pyroscope https://u:secret@host:4040/x?token=t"),
            "pyroscope https://host:4040/x"
        );
        assert_eq!(
            super::backend_label("parca http://parca:7070"),
            "parca http://parca:7070"
        );
    }
}
