//! waits: the edges of off-CPU time.
//!
//! The sampler notes where a thread waits when it leaves the CPU, and adds
//! the wait when it comes back. Waits that began before a recording have
//! no such start: every thread of the targets that waits when recording
//! starts ([`waiting_threads`]) is noted as waiting since then, with the
//! stacks `/proc` gives ([`proc_waits`]): its kernel stack
//! (`/proc/TID/stack`, named through `/proc/kallsyms`) and the user code
//! it waits in (`/proc/TID/syscall`'s program counter), marked
//! `[truncated]`, as the user callers of a thread that is not running
//! cannot be walked. (Waits still going on at the end have their stacks
//! from the sampler and are clipped there by the capture session.)
//!
//! Every read is bounded (a few KiB per file) and a thread that vanished
//! meanwhile is skipped.

use std::collections::HashMap;

use super::{SampleKey, SAMPLE_TRUNCATED};

/// Threads listed per process.
const MAX_THREADS: usize = 65536;
/// Bytes read of one `/proc` file.
const MAX_READ: u64 = 16 * 1024;

/// CLOCK_MONOTONIC in nanoseconds (the BPF program's `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn read_small(path: &str) -> Option<String> {
    use std::io::Read;
    let f = std::fs::File::open(path).ok()?;
    let mut s = String::new();
    f.take(MAX_READ).read_to_string(&mut s).ok()?;
    Some(s)
}

/// The threads of `pids` (None: of every process but ember) that are not
/// running or runnable now, and are user threads.
pub fn waiting_threads(pids: Option<&[u32]>) -> Vec<u32> {
    let own = std::process::id();
    let all: Vec<u32>;
    let pids = match pids {
        Some(p) => p,
        None => {
            all = std::fs::read_dir("/proc")
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .filter(|&p| p != own)
                        .collect()
                })
                .unwrap_or_default();
            &all
        }
    };
    let mut out = Vec::new();
    for &pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for e in tasks.flatten().take(MAX_THREADS) {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            let Some(stat) = read_small(&format!("/proc/{pid}/task/{tid}/stat")) else {
                continue;
            };
            let state = crate::process::maps::parse_stat_state(&stat);
            // Field 9: flags; PF_KTHREAD marks kernel threads.
            let flags: u64 = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(6)?.parse().ok())
                .unwrap_or(0);
            if matches!(state, Some('S' | 'D' | 'I' | 'T' | 't')) && flags & 0x0020_0000 == 0 {
                out.push(tid);
            }
        }
    }
    out
}

/// A wait in progress, as `/proc` shows it.
pub struct ProcWait {
    /// What the profile keys it by (stack hashes point into `stacks`).
    pub key: SampleKey,
    /// (hash, frames) of its kernel and user stacks.
    pub stacks: Vec<(u64, Vec<u64>)>,
}

/// What `/proc` tells of the waits of these threads.
pub fn proc_waits(tids: &[u32]) -> Vec<ProcWait> {
    let mut waits = Vec::new();
    let mut wanted: HashMap<String, u64> = HashMap::new();
    let mut raw = Vec::new();
    for &tid in tids {
        let Some(status) = read_small(&format!("/proc/{tid}/status")) else {
            continue;
        };
        let Some(tgid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Tgid:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let kernel: Vec<(String, u64)> = read_small(&format!("/proc/{tid}/stack"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                // "[<0>] do_nanosleep+0x6f/0x190"
                let f = l.split_whitespace().nth(1)?;
                let (name, rest) = f.split_once('+')?;
                let off = u64::from_str_radix(rest.split('/').next()?.trim_start_matches("0x"), 16)
                    .ok()?;
                Some((name.to_string(), off))
            })
            .take(super::MAX_DEPTH)
            .collect();
        for (name, _) in &kernel {
            wanted.insert(name.clone(), 0);
        }
        // "nr arg1..arg6 sp pc" while in a system call.
        let pc = read_small(&format!("/proc/{tid}/syscall"))
            .and_then(|s| s.split_whitespace().last().map(str::to_string))
            .and_then(|pc| u64::from_str_radix(pc.trim_start_matches("0x"), 16).ok())
            .filter(|&pc| pc != 0);
        let comm = |path: String| {
            let mut c = [0u8; 16];
            let s = read_small(&path).unwrap_or_default();
            let b = s.trim_end_matches('\n').as_bytes();
            let n = b.len().min(15);
            c[..n].copy_from_slice(&b[..n]);
            c
        };
        let key = SampleKey {
            tgid,
            tid,
            comm: comm(format!("/proc/{tgid}/comm")),
            thread_comm: comm(format!("/proc/{tid}/comm")),
            flags: SAMPLE_TRUNCATED,
            ..Default::default()
        };
        raw.push((key, kernel, pc));
    }
    if raw.is_empty() {
        return waits;
    }
    // One pass over kallsyms for every name the stacks hold.
    if let Ok(f) = std::fs::File::open("/proc/kallsyms") {
        use std::io::BufRead;
        for line in std::io::BufReader::new(f).lines().map_while(Result::ok) {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(_), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if let Some(a) = wanted.get_mut(name) {
                if *a == 0 {
                    *a = u64::from_str_radix(addr, 16).unwrap_or(0);
                }
            }
        }
    }
    for (mut key, kernel, pc) in raw {
        let mut stacks = Vec::new();
        let kframes: Vec<u64> = kernel
            .iter()
            .filter_map(|(n, off)| wanted.get(n).filter(|&&a| a != 0).map(|a| a + off))
            .collect();
        if !kframes.is_empty() {
            key.kernel_stack = synthetic_hash(&kframes, 1);
            stacks.push((key.kernel_stack, kframes));
        }
        if let Some(pc) = pc {
            key.user_stack = synthetic_hash(&[pc], 2);
            stacks.push((key.user_stack, vec![pc]));
        }
        waits.push(ProcWait { key, stacks });
    }
    waits
}

/// A stack hash for stacks made here, apart from the sampler's (its top
/// bit set; the sampler's are of a different mix).
fn synthetic_hash(frames: &[u64], seed: u64) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
    for &f in frames {
        h ^= f;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    }
    h | 1 << 63
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeping_thread_is_waiting_with_its_stacks() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let w = waiting_threads(Some(&[pid]));
        assert_eq!(w, vec![pid]);
        let open = proc_waits(&w);
        child.kill().unwrap();
        let _ = child.wait();
        assert_eq!(open.len(), 1);
        let o = &open[0];
        assert_eq!((o.key.tgid, o.key.tid), (pid, pid));
        assert_eq!(&o.key.comm[..5], b"sleep");
        // Root reads the kernel stack; others get the user frame only.
        assert!(!o.stacks.is_empty());
    }
}
