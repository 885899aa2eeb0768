//! probe: what the running kernel's BPF can do, found with libbpf's feature
//! probes at start, and which build of the sampler (see
//! `bpf/profiler.bpf.c`) it can run.
//!
//! Two builds exist: [`Variant::Modern`] for Linux 5.17 and newer (it
//! walks stacks in `bpf_loop` callbacks and reads user registers with
//! `bpf_task_pt_regs`) and [`Variant::Compat`] for 5.10–5.16 (bounded
//! loops, registers from the top of the task's kernel stack). `auto` picks
//! the newest one the kernel supports; a kernel that can run neither gets
//! one sentence naming the kernel and the missing feature.

use std::fmt;

use anyhow::{bail, Result};

/// A build of the BPF sampler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Variant {
    /// The newest build the running kernel supports.
    #[default]
    Auto,
    /// Linux 5.17 and newer.
    Modern,
    /// Linux 5.10 to 5.16 (runs on newer kernels too).
    Compat,
}

impl Variant {
    /// Parses `auto`, `modern` or `compat`.
    pub fn parse(s: &str) -> Result<Variant> {
        match s {
            "auto" => Ok(Variant::Auto),
            "modern" => Ok(Variant::Modern),
            "compat" => Ok(Variant::Compat),
            other => bail!(
                "unknown BPF variant {other:?}: use auto, modern (Linux 5.17+) or compat (Linux 5.10-5.16)"
            ),
        }
    }

    /// The name `--bpf-variant` takes.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Auto => "auto",
            Variant::Modern => "modern",
            Variant::Compat => "compat",
        }
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One kernel feature a variant needs.
#[derive(Debug, Clone, Copy)]
pub struct Feature {
    /// What it is, as the error names it.
    pub name: &'static str,
    /// The first Linux release that has it.
    pub since: &'static str,
    /// Whether the running kernel has it.
    pub present: bool,
}

/// What the running kernel was found to support.
#[derive(Debug, Clone)]
pub struct Features {
    /// `uname -r`.
    pub release: String,
    /// Features both variants need.
    pub common: Vec<Feature>,
    /// Features only the modern variant needs.
    pub modern: Vec<Feature>,
}

impl Features {
    /// Probes the running kernel (needs CAP_BPF: each probe loads a tiny
    /// program or creates a map).
    pub fn probe() -> Features {
        use libbpf_sys as sys;
        let helper = |id: u32| {
            // SAFETY: a plain probe; NULL options are allowed.
            unsafe {
                sys::libbpf_probe_bpf_helper(sys::BPF_PROG_TYPE_PERF_EVENT, id, std::ptr::null())
                    == 1
            }
        };
        // SAFETY: plain probes with NULL options.
        let map = |t: u32| unsafe { sys::libbpf_probe_bpf_map_type(t, std::ptr::null()) == 1 };
        // SAFETY: as above.
        let prog = |t: u32| unsafe { sys::libbpf_probe_bpf_prog_type(t, std::ptr::null()) == 1 };
        let btf = std::path::Path::new("/sys/kernel/btf/vmlinux").exists();
        let f = |name, since, present| Feature {
            name,
            since,
            present,
        };
        Features {
            release: kernel_release(),
            common: vec![
                f("BTF type information (CONFIG_DEBUG_INFO_BTF)", "5.10", btf),
                f(
                    "BPF programs on perf events",
                    "4.9",
                    prog(sys::BPF_PROG_TYPE_PERF_EVENT),
                ),
                f(
                    "BTF tracepoints (tp_btf) on sched_switch",
                    "5.5",
                    btf && tp_btf("btf_trace_sched_switch"),
                ),
                f("the BPF ring buffer", "5.8", map(sys::BPF_MAP_TYPE_RINGBUF)),
                f(
                    "the bpf_probe_read_user helper",
                    "5.5",
                    helper(sys::BPF_FUNC_probe_read_user),
                ),
                f(
                    "inner maps of any size (BPF_F_INNER_MAP)",
                    "5.10",
                    inner_map_flag(),
                ),
            ],
            modern: vec![
                f(
                    "the bpf_get_current_task_btf helper",
                    "5.11",
                    helper(sys::BPF_FUNC_get_current_task_btf),
                ),
                f(
                    "the bpf_task_pt_regs helper",
                    "5.15",
                    helper(sys::BPF_FUNC_task_pt_regs),
                ),
                f("the bpf_loop helper", "5.17", helper(sys::BPF_FUNC_loop)),
            ],
        }
    }

    /// The variant to load for `asked`, or one sentence saying what the
    /// kernel lacks.
    pub fn choose(&self, asked: Variant) -> Result<Variant> {
        if let Some(f) = self.common.iter().find(|f| !f.present) {
            bail!(
                "the running kernel (Linux {}) lacks {} (Linux {} and newer have it), which ember needs: run ember on Linux 5.10 or newer built with BTF",
                self.release,
                f.name,
                f.since
            );
        }
        let missing = self.modern.iter().find(|f| !f.present);
        match (asked, missing) {
            (Variant::Auto | Variant::Modern, None) => Ok(Variant::Modern),
            (Variant::Auto | Variant::Compat, _) => Ok(Variant::Compat),
            (Variant::Modern, Some(f)) => bail!(
                "the running kernel (Linux {}) lacks {} (Linux {} and newer have it), which --bpf-variant modern needs: use --bpf-variant compat or auto",
                self.release,
                f.name,
                f.since
            ),
        }
    }
}

/// Whether a `tp_btf` program can be loaded for the tracepoint whose BTF
/// type is `typedef` (libbpf's own probe for tracing programs tries fentry,
/// which some kernels refuse to load where tracepoints work).
fn tp_btf(typedef: &str) -> bool {
    use libbpf_sys as sys;
    let Ok(name) = std::ffi::CString::new(typedef) else {
        return false;
    };
    // SAFETY: the BTF handle is freed before return; the program is two
    // instructions (r0 = 0; exit) and its fd is closed at once.
    unsafe {
        let btf = sys::btf__load_vmlinux_btf();
        if btf.is_null() {
            return false;
        }
        let id = sys::btf__find_by_name_kind(btf, name.as_ptr(), sys::BTF_KIND_TYPEDEF);
        sys::btf__free(btf);
        if id <= 0 {
            return false;
        }
        let insns: [sys::bpf_insn; 2] = [
            std::mem::transmute::<[u8; 8], sys::bpf_insn>([0xb7, 0, 0, 0, 0, 0, 0, 0]),
            std::mem::transmute::<[u8; 8], sys::bpf_insn>([0x95, 0, 0, 0, 0, 0, 0, 0]),
        ];
        let mut opts = sys::bpf_prog_load_opts {
            sz: std::mem::size_of::<sys::bpf_prog_load_opts>() as _,
            expected_attach_type: sys::BPF_TRACE_RAW_TP,
            attach_btf_id: id as u32,
            ..Default::default()
        };
        let fd = sys::bpf_prog_load(
            sys::BPF_PROG_TYPE_TRACING,
            std::ptr::null(),
            c"GPL".as_ptr(),
            insns.as_ptr(),
            insns.len() as _,
            &mut opts,
        );
        if fd < 0 {
            return false;
        }
        libc::close(fd);
        true
    }
}

/// Whether an array map may be created with BPF_F_INNER_MAP (5.10), which
/// lets each unwind table be its own size.
fn inner_map_flag() -> bool {
    use libbpf_sys as sys;
    let opts = sys::bpf_map_create_opts {
        sz: std::mem::size_of::<sys::bpf_map_create_opts>() as _,
        map_flags: sys::BPF_F_INNER_MAP,
        ..Default::default()
    };
    // SAFETY: creates a one-element array; a non-negative result is an fd we
    // close at once.
    unsafe {
        let fd = sys::bpf_map_create(sys::BPF_MAP_TYPE_ARRAY, std::ptr::null(), 4, 8, 1, &opts);
        if fd < 0 {
            return false;
        }
        libc::close(fd);
        true
    }
}

/// Where the kernel's `__traceiter_sched_switch` is, `[start, end)` (end:
/// the next text symbol), from /proc/kallsyms; None if it is not listed.
/// With more than one program on sched_switch the tracepoint calls them
/// through it, and off-CPU stacks skip it.
pub fn traceiter_sched_switch() -> Option<(u64, u64)> {
    use std::io::BufRead;
    let f = std::fs::File::open("/proc/kallsyms").ok()?;
    let mut syms = Vec::new();
    let mut start = None;
    for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
        let mut it = line.split_whitespace();
        let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") {
            continue;
        }
        let Ok(a) = u64::from_str_radix(addr, 16) else {
            continue;
        };
        if name == "__traceiter_sched_switch" {
            start = Some(a);
        }
        syms.push(a);
    }
    let start = start.filter(|&a| a != 0)?;
    let end = syms.into_iter().filter(|&a| a > start).min()?;
    Some((start, end))
}

/// The running kernel's (major, minor) version, if its release parses.
pub fn kernel_version() -> Option<(u32, u32)> {
    parse_version(&kernel_release())
}

/// `6.1.0-27-cloud-amd64` -> (6, 1).
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Whether the kernel reports a map's memory (`memlock` in its fdinfo) as
/// an estimate from its size limits (before 6.4) rather than the memory
/// actually charged.
pub fn map_memory_is_estimate() -> bool {
    kernel_version().is_some_and(|v| v < (6, 4))
}

/// The running kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(missing_common: bool, missing_modern: bool) -> Features {
        let f = |name, present| Feature {
            name,
            since: "5.x",
            present,
        };
        Features {
            release: "5.10.0-test".into(),
            common: vec![f("the BPF ring buffer", !missing_common)],
            modern: vec![f("the bpf_loop helper", !missing_modern)],
        }
    }

    #[test]
    fn choice_follows_the_features() {
        let all = features(false, false);
        assert_eq!(all.choose(Variant::Auto).unwrap(), Variant::Modern);
        assert_eq!(all.choose(Variant::Compat).unwrap(), Variant::Compat);
        let old = features(false, true);
        assert_eq!(old.choose(Variant::Auto).unwrap(), Variant::Compat);
        let e = old.choose(Variant::Modern).unwrap_err().to_string();
        assert!(
            e.contains("Linux 5.10.0-test") && e.contains("bpf_loop"),
            "{e}"
        );
        let none = features(true, true);
        let e = none.choose(Variant::Auto).unwrap_err().to_string();
        assert!(
            e.contains("ring buffer") && e.contains("5.10 or newer"),
            "{e}"
        );
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_version("6.1.0-27-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("5.10.226"), Some((5, 10)));
        assert_eq!(parse_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_version("unknown"), None);
    }

    #[test]
    fn variant_names_round_trip() {
        for v in [Variant::Auto, Variant::Modern, Variant::Compat] {
            assert_eq!(Variant::parse(v.name()).unwrap(), v);
        }
        assert!(Variant::parse("newest").is_err());
    }
}
