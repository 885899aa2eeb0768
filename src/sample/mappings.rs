//! Executable mappings as the kernel reports them, the moment they are made.
//!
//! Reading `/proc/PID/maps` when a process is first sampled races with the
//! process: one that lives 10 ms may be gone by then, and its samples
//! could not be named. perf avoids the race because the kernel reports
//! every executable mapping synchronously; ember asks for the same records.
//! One "dummy" software event per CPU (it never samples) with `mmap2`,
//! `comm_exec` and `task` set writes a record into a small ring buffer for
//! each executable `mmap` (path, device, inode, offset), each `exec` and
//! each `fork` on the host. The capture session reads the rings before it
//! takes in sampler events, so a process's mappings are known before its
//! first sample is named, whether or not it still lives.
//!
//! The records come from the kernel; the paths in them are whatever users
//! named their files, and are cleaned and cut like those of
//! `/proc/PID/maps`. A ring that overflows loses records (counted); those
//! processes fall back to `/proc`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// Data pages per CPU ring (plus one header page): 128 KiB, about 1000
/// records (a record is about 120 bytes) between two reads of the capture
/// loop, or while the sampler loads.
const RING_PAGES: usize = 32;

/// Most records taken from one ring per read (about a full ring).
pub const MAX_READ_PER_RING: usize = 1024;

const PERF_RECORD_LOST: u32 = 2;
const PERF_RECORD_COMM: u32 = 3;
const PERF_RECORD_FORK: u32 = 7;
const PERF_RECORD_MMAP2: u32 = 10;
const MISC_COMM_EXEC: u16 = 1 << 13;

/// One record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapEvent {
    /// `pid` mapped code: a file (with its identity) or anonymous memory.
    Mmap {
        /// Process (thread group) id.
        pid: u32,
        /// First address.
        start: u64,
        /// Length in bytes.
        len: u64,
        /// File offset of `start`.
        pgoff: u64,
        /// Device major and minor of the file (0 for anonymous memory).
        dev: (u32, u32),
        /// Inode of the file (0 for anonymous memory).
        ino: u64,
        /// Path as the kernel names the mapping (raw, not yet cleaned).
        path: String,
    },
    /// `pid` replaced its image (exec): its old mappings are gone.
    Exec {
        /// Process id.
        pid: u32,
    },
    /// `pid` was forked from `ppid` and shares its mappings (new
    /// processes only, not threads).
    Fork {
        /// The new process.
        pid: u32,
        /// Its parent.
        ppid: u32,
    },
}

/// The per-CPU rings of mapping records.
pub struct MapEvents {
    rings: Vec<Ring>,
    lost: AtomicU64,
    scratch: Vec<u8>,
}

struct Ring {
    _fd: OwnedFd,
    base: *mut u8,
    map_len: usize,
    data_offset: usize,
    data_size: usize,
}

// SAFETY: the ring's mapping is owned by the Ring and only touched through
// &mut self.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/map_len are the mapping made in `Ring::open`.
        unsafe { libc::munmap(self.base.cast(), self.map_len) };
    }
}

impl Ring {
    fn open(cpu: u32) -> io::Result<Ring> {
        let mut attr = super::perf::attr();
        attr.type_ = libbpf_sys::PERF_TYPE_SOFTWARE;
        attr.config = libbpf_sys::PERF_COUNT_SW_DUMMY as u64;
        attr.set_mmap(1);
        attr.set_mmap2(1);
        attr.set_comm(1);
        attr.set_comm_exec(1);
        attr.set_task(1);
        let fd = super::perf::open_attr(&attr, cpu)?;
        // SAFETY: a new descriptor this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let page = page_size();
        let map_len = page * (1 + RING_PAGES);
        // SAFETY: maps the event's ring (header page + data pages) shared,
        // as perf_event_open(2) documents; checked for failure.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = base.cast::<u8>();
        // SAFETY: the header page is mapped and laid out as
        // perf_event_mmap_page.
        let (off, size) = unsafe {
            let h = base.cast::<libbpf_sys::perf_event_mmap_page>();
            ((*h).data_offset as usize, (*h).data_size as usize)
        };
        // Kernels before 4.1 leave these 0: data follows the header page.
        let (data_offset, data_size) = if size == 0 {
            (page, page * RING_PAGES)
        } else {
            (off, size)
        };
        Ok(Ring {
            _fd: fd,
            base,
            map_len,
            data_offset,
            data_size,
        })
    }

    fn head_tail(&self) -> (&AtomicU64, &AtomicU64) {
        let h = self.base.cast::<libbpf_sys::perf_event_mmap_page>();
        // SAFETY: data_head and data_tail are naturally aligned u64 fields
        // of the mapped header page, shared with the kernel: accessed
        // atomically only.
        unsafe {
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*h).data_head)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*h).data_tail)),
            )
        }
    }

    /// Copies `len` bytes at ring position `pos` (wrapping) into `out`.
    fn copy(&self, pos: u64, len: usize, out: &mut Vec<u8>) {
        out.clear();
        let start = (pos % self.data_size as u64) as usize;
        let first = len.min(self.data_size - start);
        // SAFETY: both ranges lie within the mapped data area.
        unsafe {
            let data = self.base.add(self.data_offset);
            out.extend_from_slice(std::slice::from_raw_parts(data.add(start), first));
            out.extend_from_slice(std::slice::from_raw_parts(data, len - first));
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

impl MapEvents {
    /// Opens one ring per CPU.
    pub fn open(cpus: &[u32]) -> io::Result<MapEvents> {
        let rings = cpus
            .iter()
            .map(|&c| Ring::open(c))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(MapEvents {
            rings,
            lost: AtomicU64::new(0),
            scratch: Vec::with_capacity(4096),
        })
    }

    /// Reads the records the rings hold now, in order per CPU, and frees
    /// their space: at most [`MAX_READ_PER_RING`] per ring per call, so a
    /// flood of mmaps costs ember a bounded time per loop (the rest waits,
    /// or is lost and counted when the ring fills).
    pub fn read(&mut self, on_event: &mut dyn FnMut(MapEvent)) {
        let scratch = &mut self.scratch;
        for ring in &self.rings {
            let (head, tail) = ring.head_tail();
            let end = head.load(Ordering::Acquire);
            let mut pos = tail.load(Ordering::Relaxed);
            let mut taken = 0;
            while pos + 8 <= end && taken < MAX_READ_PER_RING {
                taken += 1;
                ring.copy(pos, 8, scratch);
                let kind = u32::from_ne_bytes(scratch[0..4].try_into().unwrap_or_default());
                let misc = u16::from_ne_bytes(scratch[4..6].try_into().unwrap_or_default());
                let size = u16::from_ne_bytes(scratch[6..8].try_into().unwrap_or_default()) as u64;
                if size < 8 || pos + size > end {
                    // Malformed or not yet complete: resynchronize on the
                    // kernel's head.
                    pos = end;
                    break;
                }
                ring.copy(pos, size as usize, scratch);
                if kind == PERF_RECORD_LOST {
                    let n = u64_at(scratch, 16).unwrap_or(0);
                    self.lost.fetch_add(n, Ordering::Relaxed);
                } else if let Some(e) = parse(kind, misc, scratch) {
                    on_event(e);
                }
                pos += size;
            }
            tail.store(pos, Ordering::Release);
        }
    }

    /// Records the kernel dropped because a ring was full.
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// The NUL-padded string at `at` to the record's end.
fn str_at(b: &[u8], at: usize) -> String {
    let s = b.get(at..).unwrap_or_default();
    let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
    String::from_utf8_lossy(&s[..end]).into_owned()
}

/// Parses one record (header included) into an event; None for records
/// ember does not use and for malformed ones.
pub fn parse(kind: u32, misc: u16, rec: &[u8]) -> Option<MapEvent> {
    match kind {
        PERF_RECORD_MMAP2 => {
            // header(8) pid tid addr len pgoff maj min ino ino_gen prot flags filename
            Some(MapEvent::Mmap {
                pid: u32_at(rec, 8)?,
                start: u64_at(rec, 16)?,
                len: u64_at(rec, 24)?,
                pgoff: u64_at(rec, 32)?,
                dev: (u32_at(rec, 40)?, u32_at(rec, 44)?),
                ino: u64_at(rec, 48)?,
                path: str_at(rec, 72),
            })
        }
        PERF_RECORD_COMM if misc & MISC_COMM_EXEC != 0 => Some(MapEvent::Exec {
            pid: u32_at(rec, 8)?,
        }),
        PERF_RECORD_FORK => {
            let (pid, ppid) = (u32_at(rec, 8)?, u32_at(rec, 12)?);
            (pid != ppid).then_some(MapEvent::Fork { pid, ppid })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mmap2(pid: u32, path: &str) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&PERF_RECORD_MMAP2.to_ne_bytes());
        r.extend_from_slice(&0u16.to_ne_bytes());
        r.extend_from_slice(&0u16.to_ne_bytes());
        r.extend_from_slice(&pid.to_ne_bytes());
        r.extend_from_slice(&pid.to_ne_bytes());
        for v in [0x1000u64, 0x2000, 0x3000] {
            r.extend_from_slice(&v.to_ne_bytes());
        }
        r.extend_from_slice(&8u32.to_ne_bytes());
        r.extend_from_slice(&1u32.to_ne_bytes());
        r.extend_from_slice(&77u64.to_ne_bytes());
        r.extend_from_slice(&0u64.to_ne_bytes());
        r.extend_from_slice(&5u32.to_ne_bytes());
        r.extend_from_slice(&2u32.to_ne_bytes());
        r.extend_from_slice(path.as_bytes());
        r.resize(r.len().div_ceil(8) * 8 + 8, 0);
        r
    }

    #[test]
    fn records_parse() {
        let r = mmap2(42, "/usr/bin/tiny");
        assert_eq!(
            parse(PERF_RECORD_MMAP2, 0, &r),
            Some(MapEvent::Mmap {
                pid: 42,
                start: 0x1000,
                len: 0x2000,
                pgoff: 0x3000,
                dev: (8, 1),
                ino: 77,
                path: "/usr/bin/tiny".into()
            })
        );
        // Cut anywhere: no panic, no event from a truncated header.
        for n in 0..r.len() {
            let _ = parse(PERF_RECORD_MMAP2, 0, &r[..n]);
        }
        assert!(parse(PERF_RECORD_MMAP2, 0, &r[..40]).is_none());
        let mut fork = vec![0u8; 40];
        fork[8..12].copy_from_slice(&7u32.to_ne_bytes());
        fork[12..16].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(
            parse(PERF_RECORD_FORK, 0, &fork),
            Some(MapEvent::Fork { pid: 7, ppid: 3 })
        );
        fork[12..16].copy_from_slice(&7u32.to_ne_bytes());
        assert_eq!(parse(PERF_RECORD_FORK, 0, &fork), None, "a thread");
        let comm = [
            &[0u8; 8][..],
            &9u32.to_ne_bytes(),
            &9u32.to_ne_bytes(),
            b"sh\0\0\0\0\0\0",
        ]
        .concat();
        assert_eq!(parse(PERF_RECORD_COMM, 0, &comm), None);
        assert_eq!(
            parse(PERF_RECORD_COMM, MISC_COMM_EXEC, &comm),
            Some(MapEvent::Exec { pid: 9 })
        );
    }
}
