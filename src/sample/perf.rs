//! perf_event_open for the sampling clock: one event per online CPU.

use std::io;

use libbpf_sys::perf_event_attr;

/// Which perf event drives sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The software CPU clock (hrtimer based): works everywhere, including VMs without a PMU.
    CpuClock,
    /// Hardware CPU cycles: more precise where a PMU exists; falls back to `CpuClock`.
    Cycles,
}

impl Event {
    /// The name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Event::CpuClock => "cpu-clock",
            Event::Cycles => "cycles",
        }
    }
}

/// A zeroed `perf_event_attr` with its size set.
pub fn attr() -> perf_event_attr {
    // SAFETY: perf_event_attr is plain old data; zero is a valid value.
    let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
    attr.size = std::mem::size_of::<perf_event_attr>() as u32;
    attr
}

/// perf_event_open(2) for every task on `cpu`, closed on exec; the raw fd.
pub fn open_attr(attr: &perf_event_attr, cpu: u32) -> io::Result<i32> {
    // SAFETY: attr is initialised and outlives the call; the kernel copies it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr as *const perf_event_attr,
            -1i32,
            cpu as i32,
            -1i32,
            libbpf_sys::PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fd as i32)
    }
}

/// Opens the sampling event on `cpu` for every task, in frequency mode.
/// Returns the raw fd; libbpf takes ownership when the program is attached.
pub fn open(event: Event, cpu: u32, frequency: u64) -> io::Result<i32> {
    let mut attr = attr();
    match event {
        Event::CpuClock => {
            attr.type_ = libbpf_sys::PERF_TYPE_SOFTWARE;
            attr.config = libbpf_sys::PERF_COUNT_SW_CPU_CLOCK as u64;
        }
        Event::Cycles => {
            attr.type_ = libbpf_sys::PERF_TYPE_HARDWARE;
            attr.config = libbpf_sys::PERF_COUNT_HW_CPU_CYCLES as u64;
        }
    }
    attr.__bindgen_anon_1.sample_freq = frequency;
    attr.set_freq(1);
    open_attr(&attr, cpu)
}

/// The CPUs that are online now, from /sys/devices/system/cpu/online.
pub fn online_cpus() -> io::Result<Vec<u32>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    parse_cpu_list(text.trim())
        .ok_or_else(|| io::Error::other(format!("cannot parse the online CPU list {text:?}")))
}

/// Parses a kernel CPU list such as `0-3,8,10-11`.
pub fn parse_cpu_list(s: &str) -> Option<Vec<u32>> {
    let mut cpus = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,8,10-11").unwrap(),
            vec![0, 1, 2, 3, 8, 10, 11]
        );
        assert_eq!(parse_cpu_list("0").unwrap(), vec![0]);
        assert!(parse_cpu_list("0-x").is_none());
    }
}
