//! untrusted: the one way ember opens and reads a file another process
//! controls.
//!
//! ember runs as root and reads what unprivileged users control: the files
//! their processes map executable, their JIT perf maps, paths inside their
//! mount namespaces. Every such open goes through this module, which
//!
//! - resolves paths inside the target process's root (`openat2` with
//!   `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, and `RESOLVE_NO_SYMLINKS`
//!   where the file has no business being a link), so neither `..` nor a
//!   symlink leads out of the process's reach;
//! - opens with `O_NONBLOCK | O_CLOEXEC | O_NOCTTY` and accepts regular files
//!   only (a FIFO or a device never blocks or floods ember);
//! - checks that the target process itself could read the file (its file
//!   system uid, gid and groups against the mode bits), so a link or a hard
//!   link to a root-only file names nothing;
//! - decides size limits from `fstat` before reading, and reads at most that
//!   much whatever the file does meanwhile;
//! - contains `SIGBUS` from a file truncated while a library reads it through
//!   a memory mapping ([`guarded`]): only that one file fails;
//! - counts every refusal by what was opened and why ([`refusals`]), for the
//!   summary and `/metrics`.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{
    compiler_fence, AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst,
};
use std::sync::Once;

/// Largest JIT perf map ember reads (bytes).
pub const MAX_PERF_MAP_BYTES: u64 = 64 << 20;
/// Longest perf-map line ember keeps (longer lines are skipped).
pub const MAX_PERF_MAP_LINE: usize = 4096;
/// Largest `.eh_frame`/`.debug_frame` section ember reads to build an
/// unwind table (the largest seen on real systems is about 6 MiB).
pub const MAX_CFI_BYTES: u64 = 32 << 20;
/// Most bytes the unwind table builder reads from one file in all.
pub const MAX_TABLE_READ_BYTES: u64 = 48 << 20;
/// Most bytes of perf maps one profile build reads in all (a host of
/// processes with huge perf maps cannot make every window read gigabytes).
pub const PERF_MAP_BUDGET_BYTES: u64 = 256 << 20;
/// Largest symbol or string table ember lets blazesym index in a binary
/// that users other than root can change (its index costs memory per
/// symbol).
pub const MAX_SYMTAB_BYTES: u64 = 32 << 20;
/// Largest `/proc` text file ember reads whole (status, stat, cgroup...).
pub const MAX_PROC_FILE_BYTES: u64 = 1 << 20;
/// Largest `/proc/PID/maps` ember reads (65530 mappings fit in about 8 MiB).
pub const MAX_MAPS_BYTES: u64 = 16 << 20;

/// What ember was opening when it refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    /// A file a process maps executable.
    Binary,
    /// A JIT perf map (`/tmp/perf-PID.map`).
    PerfMap,
    /// A separate debug file.
    DebugFile,
    /// A `/proc` file of a process.
    Proc,
}

impl What {
    const ALL: [What; 4] = [What::Binary, What::PerfMap, What::DebugFile, What::Proc];

    /// Label value in `/metrics` and the summary.
    pub fn name(self) -> &'static str {
        match self {
            What::Binary => "binary",
            What::PerfMap => "perf_map",
            What::DebugFile => "debug_file",
            What::Proc => "proc",
        }
    }
}

/// Why a file was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The path is or goes through a symbolic link where none is allowed.
    Symlink,
    /// The path leads outside the process's root.
    OutsideRoot,
    /// Not a regular file (FIFO, socket, device, directory).
    NotRegular,
    /// Larger than the limit for its kind.
    TooLarge,
    /// Owned by someone other than the process's user or root.
    NotOwner,
    /// The process's own user could not read it.
    NotReadable,
    /// The file changed under ember (truncated while mapped, or not the
    /// file the process maps).
    Changed,
    /// ember's file-descriptor budget is spent.
    FdBudget,
    /// ember's read budget for this kind of file is spent for now.
    ReadBudget,
    /// Any other error opening or reading it (not found, permission).
    Io,
}

impl Refusal {
    const ALL: [Refusal; 10] = [
        Refusal::Symlink,
        Refusal::OutsideRoot,
        Refusal::NotRegular,
        Refusal::TooLarge,
        Refusal::NotOwner,
        Refusal::NotReadable,
        Refusal::Changed,
        Refusal::FdBudget,
        Refusal::ReadBudget,
        Refusal::Io,
    ];

    /// Label value in `/metrics` and the summary.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Symlink => "symlink",
            Refusal::OutsideRoot => "outside_root",
            Refusal::NotRegular => "not_regular",
            Refusal::TooLarge => "too_large",
            Refusal::NotOwner => "not_owner",
            Refusal::NotReadable => "not_readable_by_owner",
            Refusal::Changed => "changed",
            Refusal::FdBudget => "fd_budget",
            Refusal::ReadBudget => "read_budget",
            Refusal::Io => "io_error",
        }
    }

    /// Whether the refusal is worth counting: a file that simply does not
    /// exist (no perf map, a process gone) is the normal case.
    fn counted(self) -> bool {
        self != Refusal::Io
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Symlink => "it is a symbolic link",
            Refusal::OutsideRoot => "it lies outside the process's root",
            Refusal::NotRegular => "it is not a regular file",
            Refusal::TooLarge => "it is larger than ember's limit",
            Refusal::NotOwner => "it is owned by neither the process's user nor root",
            Refusal::NotReadable => "the process's own user cannot read it",
            Refusal::Changed => "it changed while ember read it",
            Refusal::FdBudget => "ember's file descriptor budget is spent",
            Refusal::ReadBudget => "ember's read budget for such files is spent for now",
            Refusal::Io => "it could not be opened",
        })
    }
}

const N_WHAT: usize = What::ALL.len();
const N_WHY: usize = Refusal::ALL.len();

#[allow(clippy::declare_interior_mutable_const)]
const ZERO: AtomicU64 = AtomicU64::new(0);
static COUNTS: [AtomicU64; N_WHAT * N_WHY] = [ZERO; N_WHAT * N_WHY];

/// Counts one refusal (the error ones only: a missing file is normal).
pub fn count(what: What, why: Refusal) {
    if why.counted() {
        COUNTS[what as usize * N_WHY + why as usize].fetch_add(1, Relaxed);
    }
}

/// Every refusal counted so far, by what and why (zero counts included, so
/// `/metrics` shows every series).
pub fn refusals() -> Vec<(What, Refusal, u64)> {
    let mut out = Vec::with_capacity(N_WHAT * N_WHY);
    for w in What::ALL {
        for r in Refusal::ALL {
            if r.counted() {
                out.push((w, r, COUNTS[w as usize * N_WHY + r as usize].load(Relaxed)));
            }
        }
    }
    out
}

/// Total refusals counted so far.
pub fn refused_total() -> u64 {
    COUNTS.iter().map(|c| c.load(Relaxed)).sum()
}

/// The credentials a process accesses files with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    /// File system uid.
    pub uid: u32,
    /// File system gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Creds {
    /// Reads a process's credentials from `/proc/PID/status`.
    pub fn of(pid: u32) -> io::Result<Creds> {
        let text = read_proc(&format!("/proc/{pid}/status"))?;
        Creds::parse(&text).ok_or_else(|| io::Error::other("malformed status"))
    }

    /// Parses the `Uid:`, `Gid:` and `Groups:` lines of a status file (the
    /// fourth id of `Uid`/`Gid` is the file system one).
    pub fn parse(status: &str) -> Option<Creds> {
        let field = |key: &str| -> Option<u32> {
            let line = status.lines().find_map(|l| l.strip_prefix(key))?;
            line.split_whitespace().nth(3)?.parse().ok()
        };
        let groups = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .take(65536)
                    .collect()
            })
            .unwrap_or_default();
        Some(Creds {
            uid: field("Uid:")?,
            gid: field("Gid:")?,
            groups,
        })
    }

    /// Root's credentials.
    pub fn root() -> Creds {
        Creds {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    /// Whether these credentials may read a file with this owner and mode
    /// (mode bits only; root reads everything).
    pub fn may_read(&self, uid: u32, gid: u32, mode: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        if uid == self.uid {
            return mode & 0o400 != 0;
        }
        if gid == self.gid || self.groups.contains(&gid) {
            return mode & 0o040 != 0;
        }
        mode & 0o004 != 0
    }
}

/// How strictly a path is resolved.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Refuse any symbolic link on the way (perf maps).
    pub no_symlinks: bool,
    /// Refuse files owned by anyone but the process's user or root.
    pub owner_or_root: bool,
    /// Size limit in bytes.
    pub max_bytes: u64,
}

/// Whose root a path is resolved in.
#[derive(Debug, Clone, Copy)]
pub enum Root {
    /// A live process's root (`/proc/PID/root`).
    Process(u32),
    /// ember's own root, for a process that shared it and has exited.
    Own,
}

/// Opens `path` (absolute, as the process sees it) inside `root`. The file
/// must be regular, within `policy`, and readable with `creds` (the
/// process's own credentials). Refusals are counted under `what`.
pub fn open_in_root(
    root: Root,
    path: &str,
    creds: &Creds,
    policy: Policy,
    what: What,
) -> Result<File, Refusal> {
    let r = open_in_root_uncounted(root, path, creds, policy);
    if let Err(why) = r {
        count(what, why);
    }
    r
}

fn open_in_root_uncounted(
    root: Root,
    path: &str,
    creds: &Creds,
    policy: Policy,
) -> Result<File, Refusal> {
    let root = match root {
        Root::Process(pid) => open_dir(&format!("/proc/{pid}/root"))?,
        Root::Own => open_dir("/")?,
    };
    let mut resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    if policy.no_symlinks {
        resolve |= libc::RESOLVE_NO_SYMLINKS;
    }
    let rel = path.trim_start_matches('/');
    let file = openat2(&root, if rel.is_empty() { "." } else { rel }, resolve)?;
    check_file(&file, creds, policy)?;
    Ok(file)
}

/// Opens the very file a process maps at `start..end` through
/// `/proc/PID/map_files` (deleted files and other mount namespaces
/// included), checking it is a regular file with the expected device and
/// inode. Refusals are counted as [`What::Binary`].
pub fn open_mapped(pid: u32, start: u64, end: u64, key: (i32, i32, u64)) -> Result<File, Refusal> {
    let r = open_mapped_uncounted(pid, start, end, key);
    if let Err(why) = r {
        count(What::Binary, why);
    }
    r
}

fn open_mapped_uncounted(
    pid: u32,
    start: u64,
    end: u64,
    key: (i32, i32, u64),
) -> Result<File, Refusal> {
    let path = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
    // The magic link is the mapping itself: following it is the point.
    let file = open_plain(&path, 0)?;
    let meta = file.metadata().map_err(|_| Refusal::Io)?;
    if !meta.file_type().is_file() {
        return Err(Refusal::NotRegular);
    }
    let dev = meta.dev();
    let got = (libc::major(dev) as i32, libc::minor(dev) as i32, meta.ino());
    if got != key {
        return Err(Refusal::Changed);
    }
    Ok(file)
}

/// Opens a file ember's own user names (a command to run, a debug
/// directory): no ownership rule, but never blocking and regular only.
pub fn open_regular(path: &std::path::Path) -> Result<File, Refusal> {
    let c = path.to_str().ok_or(Refusal::Io)?;
    let file = open_plain(c, 0)?;
    let meta = file.metadata().map_err(|_| Refusal::Io)?;
    if !meta.file_type().is_file() {
        return Err(Refusal::NotRegular);
    }
    Ok(file)
}

fn check_file(file: &File, creds: &Creds, policy: Policy) -> Result<(), Refusal> {
    let meta = file.metadata().map_err(|_| Refusal::Io)?;
    if !meta.file_type().is_file() {
        return Err(Refusal::NotRegular);
    }
    if meta.len() > policy.max_bytes {
        return Err(Refusal::TooLarge);
    }
    if policy.owner_or_root && meta.uid() != creds.uid && meta.uid() != 0 {
        return Err(Refusal::NotOwner);
    }
    if !creds.may_read(meta.uid(), meta.gid(), meta.mode()) {
        return Err(Refusal::NotReadable);
    }
    Ok(())
}

fn open_plain(path: &str, extra: libc::c_int) -> Result<File, Refusal> {
    let c = CString::new(path).map_err(|_| Refusal::Io)?;
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY | extra,
        )
    };
    if fd < 0 {
        return Err(from_errno(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let file = unsafe { File::from_raw_fd(fd) };
    Ok(file)
}

fn open_dir(path: &str) -> Result<OwnedFd, Refusal> {
    let f = open_plain(path, libc::O_DIRECTORY | libc::O_PATH)?;
    Ok(OwnedFd::from(f))
}

fn openat2(dir: &OwnedFd, rel: &str, resolve: u64) -> Result<File, Refusal> {
    let c = CString::new(rel).map_err(|_| Refusal::Io)?;
    // SAFETY: open_how is plain data; zeroed is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY) as u64;
    how.resolve = resolve;
    // SAFETY: valid descriptor, C string and open_how of the right size.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(from_errno(io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(fd as libc::c_int) })
}

fn from_errno(e: io::Error) -> Refusal {
    match e.raw_os_error() {
        // RESOLVE_NO_SYMLINKS / O_NOFOLLOW met a link.
        Some(libc::ELOOP) => Refusal::Symlink,
        // RESOLVE_IN_ROOT / RESOLVE_NO_MAGICLINKS refused the walk.
        Some(libc::EXDEV) => Refusal::OutsideRoot,
        Some(libc::EMFILE) | Some(libc::ENFILE) => Refusal::FdBudget,
        Some(libc::ENXIO) => Refusal::NotRegular,
        _ => Refusal::Io,
    }
}

/// Reads at most `max` bytes of an open file; more than that is
/// [`Refusal::TooLarge`] (the file may grow after `fstat`).
pub fn read_bounded(file: &File, max: u64) -> Result<Vec<u8>, Refusal> {
    let hint = file.metadata().map(|m| m.len()).unwrap_or(0).min(max);
    let mut buf = Vec::with_capacity(hint as usize);
    let mut take = Read::take(file, max.saturating_add(1));
    take.read_to_end(&mut buf).map_err(|_| Refusal::Io)?;
    if buf.len() as u64 > max {
        return Err(Refusal::TooLarge);
    }
    Ok(buf)
}

/// Reads the next line of `r` into `line` (cleared first) if it is at most
/// `max` bytes long; an overlong line is skipped to its end in bounded
/// chunks and reported as `Some(false)`. `None` at the end of input or on
/// a read error.
pub fn next_line(r: &mut impl std::io::BufRead, line: &mut Vec<u8>, max: usize) -> Option<bool> {
    line.clear();
    let n = Read::take(&mut *r, max as u64 + 1)
        .read_until(b'\n', line)
        .ok()?;
    if n == 0 {
        return None;
    }
    if n <= max || line.last() == Some(&b'\n') {
        return Some(true);
    }
    loop {
        line.clear();
        match Read::take(&mut *r, 64 << 10).read_until(b'\n', line) {
            Ok(0) | Err(_) => return Some(false),
            Ok(_) if line.last() == Some(&b'\n') => return Some(false),
            Ok(_) => {}
        }
    }
}

/// Reads a `/proc` text file of bounded size (a few KiB normally; at most
/// [`MAX_PROC_FILE_BYTES`]).
pub fn read_proc(path: &str) -> io::Result<String> {
    read_proc_max(path, MAX_PROC_FILE_BYTES)
}

/// [`read_proc`] with an explicit bound.
pub fn read_proc_max(path: &str, max: u64) -> io::Result<String> {
    let file = File::open(path)?;
    let mut buf = Vec::new();
    Read::take(&file, max).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

thread_local! {
    // Atomics (and the fences in `guarded`) so the compiler neither drops
    // nor reorders the accesses the signal handler relies on.
    static ARMED: AtomicBool = const { AtomicBool::new(false) };
    static FAULTED: AtomicBool = const { AtomicBool::new(false) };
}
static PAGE: AtomicUsize = AtomicUsize::new(4096);
static INSTALL: Once = Once::new();

extern "C" fn on_sigbus(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // Only thread-local cells, mmap and sigaction here: all safe in a
    // signal handler.
    if ARMED.with(|a| a.load(SeqCst)) && !info.is_null() {
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let addr = unsafe { (*info).si_addr() } as usize;
        let page = PAGE.load(Relaxed);
        let base = addr & !(page - 1);
        // Put a zero page where the truncated file's page was: the
        // faulting read resumes and sees zeros, and the caller learns
        // that the file changed and discards what it read.
        // SAFETY: replaces one page of a read-only file mapping the
        // guarded code is reading; nothing else refers to it as file data.
        let p = unsafe {
            libc::mmap(
                base as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            FAULTED.with(|f| f.store(true, SeqCst));
            return;
        }
    }
    // Not a guarded read: restore the default action; returning re-runs
    // the faulting instruction, which then kills the process as before.
    // SAFETY: resetting a signal disposition.
    unsafe {
        libc::signal(libc::SIGBUS, libc::SIG_DFL);
    }
}

fn install_sigbus_handler() {
    INSTALL.call_once(|| {
        // SAFETY: sysconf and sigaction with a valid handler.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE);
            if page > 0 {
                PAGE.store(page as usize, Relaxed);
            }
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_sigbus as *const () as usize;
            sa.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
        }
    });
}

/// Runs `f`, which reads files through memory mappings (blazesym), with
/// `SIGBUS` contained: if a file is truncated under it, the missing pages
/// read as zeros and the result is `Err(Refusal::Changed)` instead of the
/// process dying. The caller must then drop anything `f` cached about the
/// file.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, Refusal> {
    install_sigbus_handler();
    let was = ARMED.with(|a| a.swap(true, SeqCst));
    FAULTED.with(|x| x.store(false, SeqCst));
    compiler_fence(SeqCst);
    let out = f();
    compiler_fence(SeqCst);
    ARMED.with(|a| a.store(was, SeqCst));
    if FAULTED.with(|x| x.swap(false, SeqCst)) {
        Err(Refusal::Changed)
    } else {
        Ok(out)
    }
}

/// Raises the soft limit on open files to the hard limit (ember holds one
/// descriptor per binary it symbolizes), and returns the soft limit now in
/// force.
pub fn raise_fd_limit() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 1024;
        }
        let want = r.rlim_max.min(1 << 20);
        if r.rlim_cur < want {
            let n = libc::rlimit {
                rlim_cur: want,
                rlim_max: r.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &n) == 0 {
                return want;
            }
        }
        r.rlim_cur
    }
}

/// Descriptors ember may hold open for binaries: a quarter of the soft
/// limit, so sockets, maps and the store always have room.
pub fn binary_fd_budget() -> usize {
    // SAFETY: plain getrlimit on a local struct.
    let soft = unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            1024
        } else {
            r.rlim_cur
        }
    };
    ((soft / 4) as usize).clamp(64, 4096)
}

/// Checks, before blazesym indexes a binary others can change, that its
/// symbol and string tables are within [`MAX_SYMTAB_BYTES`] each: read
/// from the section headers with `pread`, nothing mapped. Files that are
/// not 64-bit ELF pass (blazesym rejects them cheaply).
pub fn elf_tables_within_limits(file: &File) -> Result<(), Refusal> {
    use std::os::unix::fs::FileExt;
    let mut eh = [0u8; 64];
    if file.read_exact_at(&mut eh, 0).is_err() || &eh[..4] != b"\x7fELF" || eh[4] != 2 {
        return Ok(());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let shoff = u64_at(&eh, 0x28);
    let shentsize = u16_at(&eh, 0x3a);
    let shnum = u16_at(&eh, 0x3c);
    if shentsize < 64 || shnum == 0 {
        return Ok(());
    }
    let mut table = vec![0u8; (shnum * shentsize) as usize];
    if file.read_exact_at(&mut table, shoff).is_err() {
        return Ok(());
    }
    let mut total = 0u64;
    for i in 0..shnum as usize {
        let sh = &table[i * shentsize as usize..];
        // SHT_SYMTAB, SHT_STRTAB, SHT_DYNSYM
        if matches!(u32_at(sh, 4), 2 | 3 | 11) {
            let size = u64_at(sh, 0x20);
            total = total.saturating_add(size);
            if size > MAX_SYMTAB_BYTES || total > 4 * MAX_SYMTAB_BYTES {
                return Err(Refusal::TooLarge);
            }
        }
    }
    Ok(())
}

/// Whether only root can change this file: owned by root and writable by
/// neither group nor others, and every directory above it likewise (a
/// sticky directory is fine above, not as the file's own directory). ember
/// lets blazesym read DWARF and follow debug links (which open more files
/// by name) only for such files.
pub fn root_controlled(file: &File) -> bool {
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return false;
    }
    let Ok(path) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return false;
    };
    if !path.is_absolute() || path.to_string_lossy().ends_with(" (deleted)") {
        return false;
    }
    let mut first = true;
    let mut dir = path.parent();
    while let Some(d) = dir {
        let Ok(m) = std::fs::symlink_metadata(d) else {
            return false;
        };
        let sticky = m.mode() & 0o1000 != 0;
        if !m.is_dir() || m.uid() != 0 || (m.mode() & 0o022 != 0 && (first || !sticky)) {
            return false;
        }
        first = false;
        dir = d.parent();
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creds_parse_and_mode_rules() {
        let s =
            "Name:\tx\nUid:\t1000\t1000\t1000\t1001\nGid:\t100\t100\t100\t101\nGroups:\t4 27 \n";
        let c = Creds::parse(s).unwrap();
        assert_eq!(c.uid, 1001);
        assert_eq!(c.gid, 101);
        assert_eq!(c.groups, vec![4, 27]);
        // Owner bits for the owner, group bits for a group, other bits else.
        assert!(c.may_read(1001, 0, 0o400));
        assert!(!c.may_read(1001, 0, 0o044));
        assert!(c.may_read(0, 27, 0o040));
        assert!(!c.may_read(0, 42, 0o640));
        assert!(c.may_read(0, 42, 0o604));
        assert!(Creds::root().may_read(5, 5, 0));
        assert_eq!(Creds::parse("Uid:\t1\n"), None);
    }

    proptest::proptest! {
        #[test]
        fn status_parsing_never_panics(text in "\\PC{0,300}") {
            let _ = Creds::parse(&text);
        }

        #[test]
        fn lines_are_bounded(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..5000), max in 1usize..200) {
            let mut r = std::io::BufReader::new(&bytes[..]);
            let mut line = Vec::new();
            while let Some(fits) = next_line(&mut r, &mut line, max) {
                if fits {
                    proptest::prop_assert!(line.len() <= max + 1);
                }
            }
        }
    }

    #[test]
    fn counts_only_real_refusals() {
        let before = refused_total();
        count(What::PerfMap, Refusal::Io);
        assert_eq!(refused_total(), before);
        count(What::PerfMap, Refusal::Symlink);
        assert!(refused_total() > before);
        assert!(refusals()
            .iter()
            .any(|&(w, r, n)| w == What::PerfMap && r == Refusal::Symlink && n >= 1));
    }

    #[test]
    fn guarded_survives_a_truncated_mapping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, vec![7u8; 3 * 4096]).unwrap();
        let file = File::open(&path).unwrap();
        // SAFETY: mapping a file we created, read only.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * 4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let sum = guarded(|| {
            // SAFETY: reading the mapping; past EOF would SIGBUS unguarded.
            let s = unsafe { std::slice::from_raw_parts(p as *const u8, 3 * 4096) };
            s.iter().map(|&b| b as u64).sum::<u64>()
        });
        assert_eq!(sum, Err(Refusal::Changed));
        // A clean read afterwards is not reported as changed.
        let ok = guarded(|| 1 + 1);
        assert_eq!(ok, Ok(2));
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(p, 3 * 4096) };
    }

    #[test]
    fn bounded_read_refuses_growth_past_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"0123456789").unwrap();
        let f = File::open(&path).unwrap();
        assert_eq!(read_bounded(&f, 4), Err(Refusal::TooLarge));
        let f = File::open(&path).unwrap();
        assert_eq!(read_bounded(&f, 10).unwrap(), b"0123456789");
    }

    #[test]
    fn regular_files_only_and_never_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a fresh path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        assert_eq!(open_regular(&fifo).err(), Some(Refusal::NotRegular));
        assert_eq!(
            open_regular(std::path::Path::new("/dev/zero")).err(),
            Some(Refusal::NotRegular)
        );
    }

    #[test]
    fn in_root_refuses_links_out_and_unreadable_files() {
        let me = Root::Process(std::process::id());
        let creds = Creds::of(std::process::id()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let strict = Policy {
            no_symlinks: true,
            owner_or_root: true,
            max_bytes: 1 << 20,
        };
        let r = open_in_root(me, link.to_str().unwrap(), &creds, strict, What::PerfMap);
        assert_eq!(r.err(), Some(Refusal::Symlink));
        let r = open_in_root(me, "/../../../../dev/zero", &creds, strict, What::PerfMap);
        assert_eq!(r.err(), Some(Refusal::NotRegular));
        let big = Policy {
            max_bytes: 0,
            ..strict
        };
        let r = open_in_root(
            Root::Own,
            secret.to_str().unwrap(),
            &creds,
            big,
            What::PerfMap,
        );
        assert_eq!(r.err(), Some(Refusal::TooLarge));
        assert!(open_in_root(me, secret.to_str().unwrap(), &creds, strict, What::PerfMap).is_ok());
        // nobody may not read a 0600 root file, whatever the path.
        let nobody = Creds {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let r = open_in_root(me, secret.to_str().unwrap(), &nobody, strict, What::PerfMap);
        assert_eq!(r.err(), Some(Refusal::NotReadable));
    }
}
