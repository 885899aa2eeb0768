//! Process memory maps, captured while a process lives so that its samples
//! can be symbolized after it exits.

use std::sync::Arc;

/// Identity of a binary on disk: (device major, device minor, inode).
pub type FileKey = (i32, i32, u64);

/// One executable mapping of a process.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Path as the process saw it (or `[vdso]`, `[anon]`...).
    pub path: Arc<str>,
    /// The file behind it, if any.
    pub file: Option<FileKey>,
    /// The kernel's vDSO.
    pub vdso: bool,
    /// From an image the process has since replaced by exec: kept only to
    /// name samples taken inside execve, never to find what the process
    /// runs now (its interpreter, its unwind tables).
    pub stale: bool,
}

impl Mapping {
    /// Offset in the file of a virtual address in this mapping.
    pub fn file_offset(&self, addr: u64) -> u64 {
        addr - self.start + self.offset
    }
}

/// What ember knows of one process.
#[derive(Debug, Clone, Default)]
pub struct Process {
    /// Executable mappings sorted by start.
    pub mappings: Vec<Mapping>,
    /// The pid inside the process's own pid namespace (for perf maps).
    pub ns_pid: u32,
    /// True once reading /proc failed because the process was gone.
    pub exited: bool,
    /// Start time in clock ticks since boot: tells a reused pid apart.
    pub start_time: u64,
    /// Seen exited by the previous garbage collection.
    pub gone_seen: bool,
    /// Its exit was reported (see `ProcessTable::mark_exited`).
    pub exit_reported: bool,
    /// The credentials it accesses files with (for perf maps).
    pub creds: Option<crate::untrusted::Creds>,
    /// It lives in ember's own mount namespace.
    pub same_mount_ns: bool,
    /// The sampler announced it (it ran while sampled); processes known
    /// from the kernel's mmap records only are not.
    pub sampled: bool,
    /// The kernel's records reported its last exec: the sampler's exec
    /// event must not drop the mappings recorded since.
    pub exec_recorded: bool,
}

impl Process {
    /// The mapping containing `addr`.
    pub fn find(&self, addr: u64) -> Option<&Mapping> {
        self.find_index(addr).map(|i| &self.mappings[i])
    }

    /// Index of the mapping containing `addr`.
    pub fn find_index(&self, addr: u64) -> Option<usize> {
        let i = self
            .mappings
            .partition_point(|m| m.start <= addr)
            .checked_sub(1)?;
        (addr < self.mappings[i].end).then_some(i)
    }

    /// Adds one mapping the kernel reported: the mappings it overlaps are
    /// gone (an mmap replaces what was there). No allocation past the
    /// vector's own growth, whatever the rate of records.
    pub fn insert(&mut self, m: Mapping) {
        // Sorted and disjoint: ends are sorted too.
        let lo = self.mappings.partition_point(|x| x.end <= m.start);
        let hi = lo + self.mappings[lo..].partition_point(|x| x.start < m.end);
        self.mappings.splice(lo..hi, [m]);
    }

    /// The process exec'd: every mapping it has is the old image's.
    pub fn retire(&mut self) {
        for m in &mut self.mappings {
            m.stale = true;
        }
    }

    /// The mappings of the image the process runs now.
    pub fn current(&self) -> impl Iterator<Item = &Mapping> {
        self.mappings.iter().filter(|m| !m.stale)
    }

    /// Merges a fresh read: new mappings win; old ones that nothing new
    /// overlaps stay (a library unloaded since still explains old samples).
    pub fn merge(&mut self, fresh: Vec<Mapping>) {
        let mut all = fresh;
        for old in self.mappings.drain(..) {
            if !all.iter().any(|m| m.start < old.end && old.start < m.end) {
                all.push(old);
            }
        }
        all.sort_by_key(|m| m.start);
        self.mappings = all;
    }
}

/// Most executable mappings kept per process (a process with more keeps
/// the lowest ones; real programs have tens to a few hundred).
pub const MAX_EXEC_MAPPINGS: usize = 2048;
/// Longest mapping path kept (longer paths are cut; they only label
/// mappings).
pub const MAX_PATH_BYTES: usize = 1024;

/// Reads the executable mappings of `pid`, streaming `/proc/PID/maps` with
/// bounded lines, count and paths: the file is as large as the process
/// makes it.
pub fn read_mappings(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let file = std::fs::File::open(format!("/proc/{pid}/maps"))?;
    let mut r = std::io::BufReader::with_capacity(
        64 << 10,
        std::io::Read::take(file, crate::untrusted::MAX_MAPS_BYTES),
    );
    let mut out = Vec::new();
    let mut line = Vec::with_capacity(256);
    // A line is about 80 bytes plus the path (PATH_MAX, escaped).
    while let Some(fits) = crate::untrusted::next_line(&mut r, &mut line, 16 << 10) {
        if !fits {
            continue;
        }
        if let Some(m) = parse_maps_line(&String::from_utf8_lossy(&line)) {
            if out.len() < MAX_EXEC_MAPPINGS {
                out.push(m);
            }
        }
    }
    out.sort_by_key(|m| m.start);
    Ok(out)
}

/// Parses one `/proc/PID/maps` line into an executable mapping (None for
/// other mappings and malformed lines).
pub fn parse_maps_line(line: &str) -> Option<Mapping> {
    let line = line.trim_end_matches('\n');
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?;
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let dev = it.next()?;
    let inode: u64 = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start();
    if perms.as_bytes().get(2) != Some(&b'x') {
        return None;
    }
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    if end <= start {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let major = u32::from_str_radix(major, 16).ok()?;
    let minor = u32::from_str_radix(minor, 16).ok()?;
    Some(Mapping::new(
        start,
        end,
        offset,
        (major, minor),
        inode,
        path,
    ))
}

impl Mapping {
    /// A mapping of `start..end` at file `offset`, as `/proc/PID/maps` or
    /// the kernel's mmap records give it: `path` as the kernel shows it
    /// (a file's, or `[vdso]`, `//anon`...), cleaned and cut, since file
    /// names are whatever their creator chose.
    pub fn new(
        start: u64,
        end: u64,
        offset: u64,
        dev: (u32, u32),
        inode: u64,
        path: &str,
    ) -> Mapping {
        let cut = |p: &str| -> Arc<str> {
            let p = &*crate::util::clean_name(p);
            if p.len() <= MAX_PATH_BYTES {
                return Arc::from(p);
            }
            let mut end = MAX_PATH_BYTES;
            while !p.is_char_boundary(end) {
                end -= 1;
            }
            Arc::from(&p[..end])
        };
        let key = (dev.0 as i32, dev.1 as i32, inode);
        let (path, file, vdso): (Arc<str>, _, _) = if path == "[vdso]" {
            (Arc::from("[vdso]"), None, true)
        } else if path.starts_with('/') && !path.starts_with("//") && inode != 0 {
            (cut(path), Some(key), false)
        } else if path.starts_with('[') {
            (cut(path), None, false)
        } else if path.is_empty() || path.starts_with("//anon") {
            (Arc::from("[anon]"), None, false)
        } else {
            // memfd:, anon_inode:... and paths the kernel shows otherwise.
            (cut(&format!("[{path}]")), None, false)
        };
        Mapping {
            start,
            end,
            offset,
            path,
            file,
            vdso,
            stale: false,
        }
    }
}

/// The innermost pid namespace's pid of `pid` (NSpid's last field).
pub fn ns_pid(pid: u32) -> u32 {
    crate::untrusted::read_proc(&format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().and_then(|x| x.parse().ok()))
        })
        .unwrap_or(pid)
}

/// Whether `pid` lives in ember's own mount namespace (paths it sees are
/// paths ember sees); None when that cannot be told (the process is gone
/// or a zombie).
pub fn same_mount_ns(pid: u32) -> Option<bool> {
    use std::os::unix::fs::MetadataExt;
    let ns = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    Some(ns(&format!("/proc/{pid}/ns/mnt"))? == ns("/proc/self/ns/mnt")?)
}

/// Start time of `pid` in clock ticks since boot (field 22 of its stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = crate::untrusted::read_proc(&format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start_time(&stat)
}

/// Field 22 (starttime) of the text of a `/proc/PID/stat`.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    // Fields after the command name, which may itself hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Field 3 (state) of the text of a `/proc/PID/stat`.
pub fn parse_stat_state(stat: &str) -> Option<char> {
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The one rule for "this process is gone", used by every part of ember:
/// `/proc` has no such pid, or, when `started` is known, its start time
/// differs (the pid was reused by another process). With `running`, a
/// zombie (or dead) process waiting to be reaped counts as gone too: it
/// runs no more (what `record --pid` waits for), though its samples may
/// still be draining (what the symbolizer keeps it for).
pub fn is_live(pid: u32, started: Option<u64>, running: bool) -> bool {
    let Ok(stat) = crate::untrusted::read_proc(&format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state_ok = !running || parse_stat_state(&stat).is_some_and(|st| st != 'Z' && st != 'X');
    state_ok && started.is_none_or(|t| parse_stat_start_time(&stat) == Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_lines() {
        let m = parse_maps_line(
            "7f1c2a400000-7f1c2a5a0000 r-xp 00028000 fd:01 1316 /usr/lib/x86_64-linux-gnu/libc.so.6\n",
        )
        .unwrap();
        assert_eq!(
            (m.start, m.end, m.offset),
            (0x7f1c2a400000, 0x7f1c2a5a0000, 0x28000)
        );
        assert_eq!(m.file, Some((0xfd, 1, 1316)));
        assert_eq!(&*m.path, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        let v = parse_maps_line("7ffd1000-7ffd3000 r-xp 00000000 00:00 0 [vdso]").unwrap();
        assert!(v.vdso && v.file.is_none());
        let anon = parse_maps_line("1000-2000 rwxp 00000000 00:00 0 ").unwrap();
        assert_eq!(&*anon.path, "[anon]");
        let spaced = parse_maps_line("1000-2000 r-xp 00000000 08:02 7 /tmp/a b (deleted)").unwrap();
        assert_eq!(&*spaced.path, "/tmp/a b (deleted)");
        assert!(parse_maps_line("1000-2000 r--p 00000000 08:02 7 /x").is_none());
        assert!(parse_maps_line("2000-1000 r-xp 00000000 08:02 7 /x").is_none());
        let long = format!("1000-2000 r-xp 00000000 08:02 7 /{}", "é".repeat(4000));
        assert!(parse_maps_line(&long).unwrap().path.len() <= MAX_PATH_BYTES);
    }

    #[test]
    fn stat_state_and_liveness() {
        let stat = "42 (a) b) Z) Z 1 42 42 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 777 0";
        assert_eq!(parse_stat_state(stat), Some('Z'));
        assert_eq!(parse_stat_start_time(stat), Some(777));
        let me = std::process::id();
        let started = start_time(me);
        assert!(is_live(me, None, true) && is_live(me, started, false));
        assert!(!is_live(me, started.map(|t| t + 1), false));
        assert!(!is_live(u32::MAX, None, false));
    }

    proptest::proptest! {
        #[test]
        fn maps_lines_never_panic(s in "\\PC{0,200}") {
            let _ = parse_maps_line(&s);
        }
    }
}
