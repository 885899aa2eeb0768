//! Checks made before loading anything, so that each common failure is one
//! plain sentence instead of a libbpf error (whose RLIMIT_MEMLOCK hint is
//! misleading on modern kernels).

use anyhow::{bail, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails unless this process may load BPF programs and open perf events.
pub fn check_privileges() -> Result<()> {
    let caps = effective_caps();
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        bail!("ember runs as root but lacks CAP_BPF and CAP_PERFMON (a container or systemd unit dropped them); grant both capabilities or CAP_SYS_ADMIN");
    }
    bail!(
        "ember needs root (or CAP_BPF and CAP_PERFMON) to load its BPF sampler; run it with sudo"
    );
}

/// The effective capability set, from /proc/self/status.
fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Fails unless the kernel exposes BTF, which the sampler's CO-RE
/// relocations and BTF tracepoints need.
pub fn check_btf() -> Result<()> {
    let path = "/sys/kernel/btf/vmlinux";
    if std::fs::metadata(path).is_err() {
        bail!(
            "the running kernel (Linux {}) exposes no BTF type information ({path} is missing): run ember on Linux 5.10 or newer built with CONFIG_DEBUG_INFO_BTF=y",
            crate::sample::probe::kernel_release()
        );
    }
    Ok(())
}

/// Fails unless `pid` names a running process.
pub fn check_pid(pid: u32) -> Result<()> {
    if pid == 0 || !is_running(pid) {
        bail!("no process with PID {pid} is running; check the PID with `ps -p {pid}`");
    }
    Ok(())
}

/// True while `pid` runs: exists and is not a zombie waiting to be reaped.
pub fn is_running(pid: u32) -> bool {
    crate::process::maps::is_live(pid, None, true)
}
