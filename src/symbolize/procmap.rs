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

/// Reads the executable mappings of `pid`.
pub fn read_mappings(pid: u32) -> std::io::Result<Vec<Mapping>> {
    let proc = procfs::process::Process::new(pid as i32).map_err(to_io)?;
    let maps = proc.maps().map_err(to_io)?;
    let mut out = Vec::new();
    for m in maps {
        if !m.perms.contains(procfs::process::MMPermissions::EXECUTE) {
            continue;
        }
        use procfs::process::MMapPath;
        let (path, file, vdso): (Arc<str>, _, _) = match &m.pathname {
            MMapPath::Path(p) if m.inode != 0 => (
                Arc::from(p.to_string_lossy().as_ref()),
                Some((m.dev.0, m.dev.1, m.inode)),
                false,
            ),
            MMapPath::Vdso => (Arc::from("[vdso]"), None, true),
            MMapPath::Path(p) => (Arc::from(p.to_string_lossy().as_ref()), None, false),
            MMapPath::Other(s) => (Arc::from(format!("[{s}]").as_str()), None, false),
            _ => (Arc::from("[anon]"), None, false),
        };
        out.push(Mapping {
            start: m.address.0,
            end: m.address.1,
            offset: m.offset,
            path,
            file,
            vdso,
        });
    }
    out.sort_by_key(|m| m.start);
    Ok(out)
}

/// The innermost pid namespace's pid of `pid` (NSpid's last field).
pub fn ns_pid(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("NSpid:"))
                .and_then(|v| v.split_whitespace().last().and_then(|x| x.parse().ok()))
        })
        .unwrap_or(pid)
}

fn to_io(e: procfs::ProcError) -> std::io::Error {
    match e {
        procfs::ProcError::NotFound(_) => std::io::Error::from(std::io::ErrorKind::NotFound),
        procfs::ProcError::Io(e, _) => e,
        other => std::io::Error::other(other.to_string()),
    }
}

/// Start time of `pid` in clock ticks since boot (field 22 of its stat).
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_start_time(&stat)
}

/// Field 22 (starttime) of the text of a `/proc/PID/stat`.
pub fn parse_stat_start_time(stat: &str) -> Option<u64> {
    // Fields after the command name, which may itself hold spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}
