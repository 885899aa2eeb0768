//! Local history: one gzip pprof file per window and target, named
//! `<start_ns>-<duration_ns>-<labels_hash>.pb.gz`, with the target's labels in
//! the profile's comments (`label:key=value`).
//!
//! The directory is treated as hostile ground:
//! - the directory itself must be a real directory (not a symlink), owned by
//!   ember's user and writable by no one else, and is probed for writability
//!   at start;
//! - every file is opened relative to a descriptor of the directory with
//!   `O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC` and accepted only if `fstat` says it is
//!   a regular file (a symlink, FIFO or device is skipped);
//! - reading a window inflates at most [`MAX_WINDOW_BYTES`] (a gzip bomb is
//!   skipped with a counted warning);
//! - a file counts as ember's only if its name parses and its content carries
//!   ember's marker: the `ember VERSION: ...` comment ember writes first, and
//!   a time range and label hash equal to those in its name. Anything else is
//!   foreign: never listed, served, merged or deleted;
//! - files are written to a temporary name created with `O_EXCL|O_NOFOLLOW`
//!   (mode 0600: they hold every process's stacks) and renamed into place
//!   without replacing anything.
//!
//! The agent keeps an in-memory index of its windows (rebuilt once at start
//! from the directory, then maintained as it writes and deletes), so
//! `/windows` and retention never re-read the directory.

use std::collections::{BTreeMap, HashSet};
use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use prost::Message;

use crate::profile::merge::Merger;
use crate::profile::{pprof, Profile};

/// Largest decompressed size of one stored window. A real window is a few
/// KiB to a few MiB; past this the file is skipped (a gzip bomb).
pub const MAX_WINDOW_BYTES: u64 = 64 << 20;

/// Largest stored (compressed) window file that is read at all.
pub const MAX_WINDOW_FILE_BYTES: u64 = 64 << 20;

/// Labels of a target.
pub type Labels = BTreeMap<String, String>;

/// One stored window of one target.
#[derive(Debug, Clone)]
pub struct Entry {
    /// File name without extension: a stable id for the HTTP endpoint.
    pub id: String,
    /// Window start, ns since the epoch.
    pub start_ns: u64,
    /// Window length, ns.
    pub duration_ns: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// The target's labels.
    pub labels: Arc<Labels>,
}

/// What a query selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only windows that end after this time (ns since the epoch).
    pub since_ns: u64,
    /// Only windows that start before this time (ns since the epoch);
    /// `None`: up to now.
    pub until_ns: Option<u64>,
    /// `service_name` must equal this.
    pub service: Option<String>,
    /// Only samples of this pid.
    pub pid: Option<u32>,
    /// Every `key=value` must match a target label.
    pub labels: Vec<(String, String)>,
}

/// Why a file in the store directory was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A symlink, FIFO, device, directory or hard-linked file.
    NotRegular,
    /// Over [`MAX_WINDOW_FILE_BYTES`] on disk or [`MAX_WINDOW_BYTES`] inflated.
    TooLarge,
    /// Not gzip, corrupt, not a pprof profile, or an I/O error.
    Unreadable,
    /// A readable profile that ember did not write under this name.
    Foreign,
}

impl SkipReason {
    const ALL: [SkipReason; 4] = [
        SkipReason::NotRegular,
        SkipReason::TooLarge,
        SkipReason::Unreadable,
        SkipReason::Foreign,
    ];

    /// The `reason` label in `/metrics`.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::NotRegular => "not_regular",
            SkipReason::TooLarge => "too_large",
            SkipReason::Unreadable => "unreadable",
            SkipReason::Foreign => "foreign",
        }
    }
}

/// A skipped file: why, and a sentence for the log.
#[derive(Debug)]
pub struct Skip {
    /// The cause.
    pub reason: SkipReason,
    /// What was wrong, without the path.
    pub detail: String,
}

fn skip(reason: SkipReason, detail: impl Into<String>) -> Skip {
    Skip {
        reason,
        detail: detail.into(),
    }
}

/// Key of a window: (start ns, duration ns, labels hash), as in its name.
type Key = (u64, u64, u64);

/// What the index knows of one window.
#[derive(Debug, Clone)]
struct Indexed {
    bytes: u64,
    dev: u64,
    ino: u64,
    labels: Arc<Labels>,
}

#[derive(Default)]
struct Index {
    /// The directory has been scanned once.
    ready: bool,
    entries: BTreeMap<Key, Indexed>,
    /// Label sets, shared by the windows of one target.
    interned: HashSet<Arc<Labels>>,
}

impl Index {
    fn intern(&mut self, l: Labels) -> Arc<Labels> {
        if let Some(a) = self.interned.get(&l) {
            return a.clone();
        }
        let a = Arc::new(l);
        self.interned.insert(a.clone());
        a
    }
}

/// The window directory.
pub struct Store {
    dir: PathBuf,
    /// The directory, opened once: every file is opened relative to it.
    dirfd: OwnedFd,
    retention: Duration,
    max_bytes: u64,
    /// Files this agent accepts must be owned by it (the agent); `ember
    /// query` reads a store whoever wrote it.
    require_owner: bool,
    index: Mutex<Index>,
    skipped: [AtomicU64; 4],
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn cstr(s: &[u8]) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// An io error without the "(os error N)" noise.
fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn fstat(fd: i32) -> std::io::Result<libc::stat> {
    // SAFETY: a zeroed stat is a valid out-parameter; fd is open.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(errno());
    }
    Ok(st)
}

fn is_reg(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFREG
}

/// Opens the store directory itself, refusing a symlink.
fn open_dir(dir: &Path) -> Result<OwnedFd> {
    let meta = std::fs::symlink_metadata(dir);
    if meta.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "the store directory {} is a symbolic link; set store.dir to the real directory",
            dir.display()
        );
    }
    let c = cstr(dir.as_os_str().as_bytes())?;
    // SAFETY: c is a valid C string; the flags refuse a symlink.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = errno();
        bail!(
            "cannot open the store directory {} ({}); set store.dir to a directory",
            dir.display(),
            plain(&e)
        );
    }
    // SAFETY: fd was just opened and is owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Store {
    /// Opens (creating, mode 0700) the agent's store directory and checks it:
    /// not a symlink, owned by this user and writable by no one else, and
    /// really writable (a probe file is created and removed). The index is
    /// empty until [`Store::rebuild_index`] runs.
    pub fn open(dir: &Path, retention: Duration, max_bytes: u64) -> Result<Store> {
        if std::fs::symlink_metadata(dir).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| {
                    format!(
                        "cannot create the store directory {}; set store.dir to a writable directory",
                        dir.display()
                    )
                })?;
        }
        let dirfd = open_dir(dir)?;
        let st = fstat(dirfd.as_raw_fd())?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if st.st_uid != me || st.st_mode & 0o022 != 0 {
            bail!(
                "the store directory {} is owned by uid {} with mode {:o}, so other users could plant files in it; make it owned by uid {me} and not group- or world-writable (chmod go-w), or set store.dir to a private directory",
                dir.display(),
                st.st_uid,
                st.st_mode & 0o7777
            );
        }
        let store = Store {
            dir: dir.to_path_buf(),
            dirfd,
            retention,
            max_bytes,
            require_owner: true,
            index: Mutex::new(Index::default()),
            skipped: Default::default(),
        };
        store.probe_writable()?;
        Ok(store)
    }

    /// Opens a store directory to read (`ember query`): no writes, no
    /// ownership requirement, the same checks on every file.
    pub fn open_read(dir: &Path) -> Result<Store> {
        Ok(Store {
            dir: dir.to_path_buf(),
            dirfd: open_dir(dir)?,
            retention: Duration::MAX,
            max_bytes: u64::MAX,
            require_owner: false,
            index: Mutex::new(Index::default()),
            skipped: Default::default(),
        })
    }

    fn probe_writable(&self) -> Result<()> {
        let name = format!(".ember-probe-{}", std::process::id());
        let c = cstr(name.as_bytes())?;
        let dfd = self.dirfd.as_raw_fd();
        // SAFETY: valid descriptors and C strings.
        unsafe { libc::unlinkat(dfd, c.as_ptr(), 0) };
        let fd = unsafe {
            libc::openat(
                dfd,
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            let e = errno();
            bail!(
                "the store directory {} is not writable ({}); make it writable or set store.dir to a writable directory",
                self.dir.display(),
                plain(&e)
            );
        }
        // SAFETY: fd was just opened; the name was just created.
        unsafe {
            libc::close(fd);
            libc::unlinkat(dfd, c.as_ptr(), 0);
        }
        Ok(())
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counts a skipped file and says why, naming it.
    fn skip(&self, name: &str, s: &Skip, warn: &mut dyn FnMut(String)) {
        self.count_skip(s.reason);
        warn(format!(
            "skipping {}: {}",
            self.dir.join(name).display(),
            s.detail
        ));
    }

    fn count_skip(&self, r: SkipReason) {
        let i = SkipReason::ALL.iter().position(|&x| x == r).unwrap_or(0);
        self.skipped[i].fetch_add(1, Relaxed);
    }

    /// Files skipped so far, by cause.
    pub fn skipped(&self, r: SkipReason) -> u64 {
        let i = SkipReason::ALL.iter().position(|&x| x == r).unwrap_or(0);
        self.skipped[i].load(Relaxed)
    }

    /// Writes one target's window (mode 0600, never over an existing file)
    /// and adds it to the index.
    pub fn write(&self, p: &Profile) -> Result<PathBuf> {
        let start = p
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let key = (start, p.duration.as_nanos() as u64, labels_hash(&p.labels));
        let name = file_name(key);
        let mut bytes = Vec::new();
        pprof::write(p, &mut bytes)?;
        let (dev, ino) = self
            .write_new(&name, &bytes)
            .with_context(|| format!("cannot write {}", self.dir.join(&name).display()))?;
        let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let labels = idx.intern(p.labels.clone());
        idx.entries.insert(
            key,
            Indexed {
                bytes: bytes.len() as u64,
                dev,
                ino,
                labels,
            },
        );
        Ok(self.dir.join(name))
    }

    /// Writes `bytes` under `name` atomically: a temporary file created
    /// exclusively, synced, then linked under `name` without replacing.
    fn write_new(&self, name: &str, bytes: &[u8]) -> std::io::Result<(u64, u64)> {
        let dfd = self.dirfd.as_raw_fd();
        let tmp = cstr(format!(".{name}.ember-tmp").as_bytes())?;
        let target = cstr(name.as_bytes())?;
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and C strings.
        let mut fd = unsafe { libc::openat(dfd, tmp.as_ptr(), flags, 0o600) };
        if fd < 0 && errno().raw_os_error() == Some(libc::EEXIST) {
            // A leftover of a crash (or something planted): only ember
            // writes dot-names ending in .ember-tmp here.
            unsafe { libc::unlinkat(dfd, tmp.as_ptr(), 0) };
            fd = unsafe { libc::openat(dfd, tmp.as_ptr(), flags, 0o600) };
        }
        if fd < 0 {
            return Err(errno());
        }
        // SAFETY: fd was just opened and is owned here.
        let mut f = unsafe { File::from_raw_fd(fd) };
        let result = (|| {
            f.write_all(bytes)?;
            f.sync_all()?;
            let st = fstat(f.as_raw_fd())?;
            // SAFETY: valid descriptor and C strings.
            let r = unsafe {
                libc::renameat2(
                    dfd,
                    tmp.as_ptr(),
                    dfd,
                    target.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if r != 0 {
                let e = errno();
                if e.raw_os_error() != Some(libc::EINVAL) {
                    return Err(e);
                }
                // No RENAME_NOREPLACE on this file system: link, which
                // never replaces either, then drop the temporary name.
                if unsafe { libc::linkat(dfd, tmp.as_ptr(), dfd, target.as_ptr(), 0) } != 0 {
                    return Err(errno());
                }
                unsafe { libc::unlinkat(dfd, tmp.as_ptr(), 0) };
            }
            Ok((st.st_dev, st.st_ino))
        })();
        if result.is_err() {
            // SAFETY: valid descriptor and C string.
            unsafe { libc::unlinkat(dfd, tmp.as_ptr(), 0) };
        }
        result
    }

    /// Opens `name` in the directory: no symlink, no FIFO wait, regular
    /// files only, at most [`MAX_WINDOW_FILE_BYTES`].
    fn open_file(&self, name: &str) -> Result<(File, libc::stat), Skip> {
        let c = cstr(name.as_bytes()).map_err(|e| skip(SkipReason::Unreadable, plain(&e)))?;
        // SAFETY: valid descriptor and C string.
        let fd = unsafe {
            libc::openat(
                self.dirfd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = errno();
            return Err(match e.raw_os_error() {
                Some(libc::ELOOP) => skip(SkipReason::NotRegular, "a symbolic link"),
                _ => skip(SkipReason::Unreadable, plain(&e)),
            });
        }
        // SAFETY: fd was just opened and is owned here.
        let f = unsafe { File::from_raw_fd(fd) };
        let st = fstat(fd).map_err(|e| skip(SkipReason::Unreadable, plain(&e)))?;
        if !is_reg(&st) {
            return Err(skip(SkipReason::NotRegular, "not a regular file"));
        }
        if self.require_owner {
            // SAFETY: geteuid has no preconditions.
            if st.st_uid != unsafe { libc::geteuid() } {
                return Err(skip(
                    SkipReason::Foreign,
                    format!("owned by uid {}, not by ember", st.st_uid),
                ));
            }
            if st.st_nlink != 1 {
                return Err(skip(
                    SkipReason::NotRegular,
                    "a file with several hard links",
                ));
            }
        }
        if st.st_size as u64 > MAX_WINDOW_FILE_BYTES {
            return Err(skip(
                SkipReason::TooLarge,
                format!(
                    "{} bytes, over the {} MiB a window may take",
                    st.st_size,
                    MAX_WINDOW_FILE_BYTES >> 20
                ),
            ));
        }
        Ok((f, st))
    }

    /// Reads and checks one window file: the name parses, the file is
    /// regular, it inflates to at most [`MAX_WINDOW_BYTES`], decodes as
    /// pprof and carries ember's marker for this very name.
    fn load(&self, name: &str) -> Result<(Key, pprof::proto::Profile, libc::stat), Skip> {
        let key =
            parse_name(name).ok_or_else(|| skip(SkipReason::Foreign, "not named like a window"))?;
        let (f, st) = self.open_file(name)?;
        let raw = inflate((&f).take(MAX_WINDOW_FILE_BYTES))?;
        let p = pprof::proto::Profile::decode(&raw[..])
            .map_err(|e| skip(SkipReason::Unreadable, format!("not a pprof profile ({e})")))?;
        drop(raw);
        check_marker(&p, key)?;
        if self.require_owner && st.st_mode & 0o077 != 0 {
            // A window of an older ember, written with the umask's mode:
            // the store holds every process's stacks, so root only.
            // SAFETY: f is open; fchmod of the agent's own file.
            unsafe { libc::fchmod(f.as_raw_fd(), 0o600) };
        }
        Ok((key, p, st))
    }

    /// Scans the directory once and indexes every window ember wrote;
    /// anything else is skipped (counted, and reported through `warn` once
    /// per file). Retention waits for this.
    pub fn rebuild_index(&self, warn: &mut dyn FnMut(String)) {
        for name in self.names() {
            match self.load(&name) {
                Ok((key, p, st)) => {
                    let labels = labels_of(&p);
                    drop(p);
                    let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
                    if idx.entries.contains_key(&key) {
                        continue;
                    }
                    let labels = idx.intern(labels);
                    idx.entries.insert(
                        key,
                        Indexed {
                            bytes: st.st_size as u64,
                            dev: st.st_dev,
                            ino: st.st_ino,
                            labels,
                        },
                    );
                }
                Err(s) => self.skip(&name, &s, warn),
            }
        }
        self.index.lock().unwrap_or_else(|e| e.into_inner()).ready = true;
    }

    /// Names in the directory that end in `.pb.gz` (others are not ember's
    /// business and are ignored silently), read through the directory
    /// descriptor.
    fn names(&self) -> Vec<String> {
        let path = format!("/proc/self/fd/{}", self.dirfd.as_raw_fd());
        let Ok(rd) = std::fs::read_dir(path) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .filter(|n| n.ends_with(".pb.gz") && !n.starts_with('.'))
            .collect();
        names.sort();
        names
    }

    /// Indexed windows that end at or after `since_ns`, oldest first; at
    /// most `limit`, the newest ones.
    pub fn list(&self, since_ns: u64, limit: usize) -> Vec<Entry> {
        let idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Entry> = idx
            .entries
            .iter()
            .rev()
            .filter(|(k, _)| k.0.saturating_add(k.1) >= since_ns)
            .take(limit)
            .map(|(&k, e)| Entry {
                id: id_of(k),
                start_ns: k.0,
                duration_ns: k.1,
                bytes: e.bytes,
                labels: e.labels.clone(),
            })
            .collect();
        out.reverse();
        out
    }

    /// Windows in the index.
    pub fn indexed(&self) -> usize {
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .len()
    }

    /// The stored (gzip) bytes of window `id`, if it is an indexed window
    /// and its file is still the one ember wrote.
    pub fn read_window(&self, id: &str) -> Option<Vec<u8>> {
        let key = parse_id(id)?;
        let want = self
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entries
            .get(&key)
            .cloned()?;
        let (f, st) = self.open_file(&file_name(key)).ok()?;
        if (st.st_dev, st.st_ino) != (want.dev, want.ino) {
            return None;
        }
        let mut out = Vec::new();
        f.take(MAX_WINDOW_FILE_BYTES).read_to_end(&mut out).ok()?;
        Some(out)
    }

    /// Deletes windows past the retention age, then the oldest until the
    /// windows fit the size bound. Only indexed windows (ember's own) are
    /// deleted, and only while their file is still the one indexed; nothing
    /// is deleted before the index is built. Returns how many were deleted.
    pub fn enforce_retention(&self) -> usize {
        self.enforce_retention_at(now_ns())
    }

    /// [`Store::enforce_retention`] with the age measured from `now` (ns
    /// since the epoch) instead of the clock: a window is past retention
    /// when it ended before `now - retention`.
    fn enforce_retention_at(&self, now: u64) -> usize {
        let oldest = now.saturating_sub(self.retention.as_nanos().min(u64::MAX as u128) as u64);
        let victims: Vec<(Key, Indexed)> = {
            let idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
            if !idx.ready {
                return 0;
            }
            let mut total: u64 = idx.entries.values().map(|e| e.bytes).sum();
            let mut v = Vec::new();
            for (&k, e) in &idx.entries {
                let expired = k.0.saturating_add(k.1) < oldest || total > self.max_bytes;
                if !expired {
                    continue;
                }
                total -= e.bytes;
                v.push((k, e.clone()));
            }
            v
        };
        let dfd = self.dirfd.as_raw_fd();
        let mut deleted = 0;
        for (k, e) in &victims {
            let Ok(c) = cstr(file_name(*k).as_bytes()) else {
                continue;
            };
            // SAFETY: a zeroed stat is a valid out-parameter; valid
            // descriptor and C string.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            let same =
                unsafe { libc::fstatat(dfd, c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0
                    && is_reg(&st)
                    && (st.st_dev, st.st_ino) == (e.dev, e.ino);
            // A file replaced since it was indexed is not ember's any more:
            // forget it, leave it.
            if same && unsafe { libc::unlinkat(dfd, c.as_ptr(), 0) } == 0 {
                deleted += 1;
            }
        }
        let mut idx = self.index.lock().unwrap_or_else(|e| e.into_inner());
        for (k, _) in &victims {
            idx.entries.remove(k);
        }
        idx.interned.retain(|l| Arc::strong_count(l) > 1);
        deleted
    }

    /// Merges every stored window that matches `f` into one profile, reading
    /// the directory (this is `ember query`). Files that are not ember's
    /// windows, not regular, too large or unreadable are skipped with one
    /// warning each.
    pub fn query(&self, f: &Filter, warn: &mut dyn FnMut(String)) -> (Profile, usize) {
        let mut merger = Merger::new(describe(f));
        let mut used = 0;
        for name in self.names() {
            // Skip by name before reading anything.
            if let Some(k) = parse_name(&name) {
                if k.0.saturating_add(k.1) < f.since_ns || f.until_ns.is_some_and(|u| k.0 >= u) {
                    continue;
                }
            }
            let p = match self.load(&name) {
                Ok((_, p, _)) => p,
                Err(s) => {
                    self.skip(&name, &s, warn);
                    continue;
                }
            };
            let labels = labels_of(&p);
            if f.service
                .as_ref()
                .is_some_and(|s| labels.get("service_name") != Some(s))
            {
                continue;
            }
            if !f.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            merger.add(&p, |pid| f.pid.is_none_or(|want| want == pid));
            used += 1;
        }
        (merger.finish(), used)
    }

    /// Prometheus text for the store.
    pub fn render_metrics(&self) -> String {
        let mut s = String::new();
        s.push_str("# HELP ember_store_windows Windows in the store's index.\n# TYPE ember_store_windows gauge\n");
        s.push_str(&format!("ember_store_windows {}\n", self.indexed()));
        s.push_str("# HELP ember_store_skipped_total Files in the store directory skipped (not listed, served, merged or deleted), by reason.\n# TYPE ember_store_skipped_total counter\n");
        for r in SkipReason::ALL {
            s.push_str(&format!(
                "ember_store_skipped_total{{reason=\"{}\"}} {}\n",
                r.label(),
                self.skipped(r)
            ));
        }
        s
    }
}

/// Inflates a gzip stream, at most [`MAX_WINDOW_BYTES`].
fn inflate(r: impl Read) -> Result<Vec<u8>, Skip> {
    let mut gz = flate2::read::GzDecoder::new(r).take(MAX_WINDOW_BYTES + 1);
    let mut raw = Vec::new();
    if let Err(e) = gz.read_to_end(&mut raw) {
        return Err(skip(
            SkipReason::Unreadable,
            format!("not a gzip file ({})", plain(&e)),
        ));
    }
    if raw.len() as u64 > MAX_WINDOW_BYTES {
        return Err(skip(
            SkipReason::TooLarge,
            format!(
                "it inflates to more than {} MiB (a window never does)",
                MAX_WINDOW_BYTES >> 20
            ),
        ));
    }
    Ok(raw)
}

/// ember's marker: its `ember VERSION: target` comment first, and the time
/// range and label hash of the name.
fn check_marker(p: &pprof::proto::Profile, key: Key) -> Result<(), Skip> {
    let first = p
        .comment
        .first()
        .and_then(|&i| p.string_table.get(usize::try_from(i).ok()?));
    let by_ember = first.is_some_and(|c| {
        c.strip_prefix("ember ")
            .and_then(|r| r.split_once(": "))
            .is_some_and(|(v, _)| !v.is_empty() && !v.contains(' '))
    });
    if !by_ember {
        return Err(skip(SkipReason::Foreign, "not a window ember wrote"));
    }
    if p.time_nanos as u64 != key.0
        || p.duration_nanos as u64 != key.1
        || labels_hash(&labels_of(p)) != key.2
    {
        return Err(skip(
            SkipReason::Foreign,
            "its time range or labels do not match its name",
        ));
    }
    Ok(())
}

fn file_name(k: Key) -> String {
    format!("{}.pb.gz", id_of(k))
}

fn id_of(k: Key) -> String {
    format!("{}-{}-{:016x}", k.0, k.1, k.2)
}

/// Parses a window id, `START-DURATION-HASH`: decimal u64s without sign or
/// leading garbage, and exactly 16 lowercase hex digits. Nothing else (no
/// `/`, no `..`) gets through.
pub fn parse_id(id: &str) -> Option<Key> {
    let mut it = id.split('-');
    let (a, b, c) = (it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    let dec = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    if c.len() != 16 || !c.bytes().all(|x| matches!(x, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let key = (dec(a)?, dec(b)?, u64::from_str_radix(c, 16).ok()?);
    // Canonical form only (no leading zeros), so one window has one id.
    (id_of(key) == id).then_some(key)
}

fn parse_name(name: &str) -> Option<Key> {
    parse_id(name.strip_suffix(".pb.gz")?)
}

/// Target labels stored in a profile's comments.
pub fn labels_of(p: &pprof::proto::Profile) -> Labels {
    p.comment
        .iter()
        .filter_map(|&i| p.string_table.get(usize::try_from(i).ok()?))
        .filter_map(|c| c.strip_prefix("label:"))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A stable 64-bit FNV-1a hash of a label set.
pub fn labels_hash(l: &Labels) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for (k, v) in l {
        for b in k.bytes().chain([0]).chain(v.bytes()).chain([0]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

fn describe(f: &Filter) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &f.service {
        parts.push(format!("service {s}"));
    }
    if let Some(p) = f.pid {
        parts.push(format!("pid {p}"));
    }
    for (k, v) in &f.labels {
        parts.push(format!("{k}={v}"));
    }
    if parts.is_empty() {
        "all stored windows".into()
    } else {
        parts.join(", ")
    }
}

/// Now, in ns since the epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ember-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn profile(labels: &[(&str, &str)], start: SystemTime) -> Profile {
        Profile {
            start,
            duration: Duration::from_secs(15),
            frequency: 19,
            target: "t".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            off_cpu: false,
            mappings: Vec::new(),
            functions: Vec::new(),
            locations: Vec::new(),
            samples: Vec::new(),
        }
    }

    #[test]
    fn ids_are_strict() {
        let k = (1700000000000000000, 15000000000, 0x0123456789abcdef);
        assert_eq!(parse_id(&id_of(k)), Some(k));
        for bad in [
            "",
            "1-2",
            "1-2-3",
            "1-2-0123456789abcdef-4",
            "../1-2-0123456789abcdef",
            "1/2-3-0123456789abcdef",
            "01-2-0123456789abcdef",
            "+1-2-0123456789abcdef",
            "1-2-0123456789ABCDEF",
            "1-2-0123456789abcde",
            "1-2-0123456789abcdef0",
            "99999999999999999999-2-0123456789abcdef",
            "1-2-0123456789abcdef.pb.gz",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
        assert_eq!(parse_name(&file_name(k)), Some(k));
    }

    #[test]
    fn a_bomb_is_refused_before_it_inflates() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..(MAX_WINDOW_BYTES >> 20) + 1 {
            gz.write_all(&zeros).unwrap();
        }
        let bomb = gz.finish().unwrap();
        let e = inflate(&bomb[..]).unwrap_err();
        assert_eq!(e.reason, SkipReason::TooLarge);
        let e = inflate(&b"not gzip"[..]).unwrap_err();
        assert_eq!(e.reason, SkipReason::Unreadable);
    }

    #[test]
    fn windows_are_indexed_served_and_foreign_files_left_alone() {
        let dir = tmpdir("index");
        let store = Store::open(&dir, Duration::from_secs(3600), 1 << 30).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
        let now = SystemTime::now();
        let p = profile(&[("service_name", "a")], now);
        let path = store.write(&p).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        let list = store.list(0, 100);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].labels.get("service_name").unwrap(), "a");
        assert!(store.read_window(&list[0].id).is_some());

        // Foreign files named like windows: an old copy of a real window
        // under another name, garbage, a symlink, a FIFO.
        let old = now - Duration::from_secs(7200);
        let old_ns = old.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        let forged = file_name((old_ns, 15_000_000_000, labels_hash(&p.labels)));
        std::fs::copy(&path, dir.join(&forged)).unwrap();
        let junk = file_name((old_ns, 1, 1));
        std::fs::write(dir.join(&junk), b"hello").unwrap();
        let link = file_name((old_ns, 2, 2));
        std::os::unix::fs::symlink("/etc/passwd", dir.join(&link)).unwrap();
        let fifo = file_name((old_ns, 3, 3));
        let c = CString::new(dir.join(&fifo).as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // An old window ember really wrote.
        let mine = store
            .write(&profile(&[("service_name", "b")], old))
            .unwrap();

        // A window of an older ember, readable by all, and a foreign file.
        for f in [&path, &dir.join(&forged)] {
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                .unwrap();
        }

        // A fresh agent on the same directory.
        let store = Store::open(&dir, Duration::from_secs(3600), 1 << 30).unwrap();
        assert_eq!(store.enforce_retention(), 0, "nothing before the index");
        let mut warnings = Vec::new();
        store.rebuild_index(&mut |w| warnings.push(w));
        assert_eq!(store.indexed(), 2, "{warnings:?}");
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        assert_eq!(store.skipped(SkipReason::Foreign), 1);
        assert_eq!(store.skipped(SkipReason::Unreadable), 1);
        assert_eq!(store.skipped(SkipReason::NotRegular), 2);
        assert!(store
            .read_window(link.strip_suffix(".pb.gz").unwrap())
            .is_none());
        assert!(store
            .read_window(forged.strip_suffix(".pb.gz").unwrap())
            .is_none());
        assert_eq!(store.enforce_retention(), 1);
        assert!(!mine.exists());
        for f in [&forged, &junk, &link, &fifo] {
            assert!(
                std::fs::symlink_metadata(dir.join(f)).is_ok(),
                "{f} deleted"
            );
        }
        assert_eq!(store.list(0, 100).len(), 1);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o600
        );
        let forged_meta = std::fs::metadata(dir.join(&forged)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&forged_meta.permissions()) & 0o777,
            0o644,
            "a foreign file was changed"
        );

        let q = Store::open_read(&dir).unwrap();
        let mut warnings = Vec::new();
        let (_, used) = q.query(&Filter::default(), &mut |w| warnings.push(w));
        assert_eq!(used, 1);
        assert_eq!(warnings.len(), 4, "{warnings:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_symlinked_or_shared_store_is_refused() {
        let dir = tmpdir("link");
        std::fs::create_dir_all(&dir).unwrap();
        let link = dir.with_extension("lnk");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = Store::open(&link, Duration::from_secs(1), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(Store::open_read(&link).is_err());
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let e = Store::open(&dir, Duration::from_secs(1), 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod go-w"), "{e}");
        let _ = std::fs::remove_file(&link);
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Rotation, without root or BPF: windows with made-up timestamps in a
    // private temporary directory, rotated with an explicit clock.

    /// 2023-11-14T22:13:20Z, in ns: the fixed "now" of the rotation tests.
    const T0: u64 = 1_700_000_000_000_000_000;
    const WINDOW_NS: u64 = 15_000_000_000;
    const HOUR_NS: u64 = 3_600_000_000_000;

    /// What a test window holds: it is written from this and every read
    /// back is checked against it.
    #[derive(Debug, Clone)]
    struct Spec {
        service: String,
        start_ns: u64,
        leaf: String,
        count: u64,
        pid: u32,
    }

    impl Spec {
        fn new(i: u64, start_ns: u64) -> Spec {
            Spec {
                service: format!("svc-{i}"),
                start_ns,
                leaf: format!("work_{i}"),
                count: 10 + i,
                pid: 1000 + i as u32,
            }
        }

        /// A window of one stack, `leaf` called by `main`.
        fn profile(&self) -> Profile {
            use crate::profile::{FrameKind, Function, Line, Location, Sample};
            let func = |name: &str| Function {
                name: name.into(),
                system_name: name.into(),
                filename: "".into(),
            };
            let loc = |function: u32, address: u64| Location {
                mapping: None,
                address,
                lines: vec![Line { function, line: 7 }],
                kind: FrameKind::User,
            };
            Profile {
                start: UNIX_EPOCH + Duration::from_nanos(self.start_ns),
                duration: Duration::from_nanos(WINDOW_NS),
                frequency: 19,
                target: format!("{} on test", self.service),
                labels: [("service_name".to_string(), self.service.clone())]
                    .into_iter()
                    .collect(),
                off_cpu: false,
                mappings: Vec::new(),
                functions: vec![func(&self.leaf), func("main")],
                locations: vec![loc(0, 0x1010), loc(1, 0x2020)],
                samples: vec![Sample {
                    locations: vec![0, 1],
                    count: self.count,
                    off_cpu: 0,
                    pid: self.pid,
                    tid: self.pid,
                    comm: "worker".into(),
                    thread_name: "worker".into(),
                }],
            }
        }

        fn id(&self) -> String {
            id_of(self.key())
        }

        fn key(&self) -> Key {
            let p = self.profile();
            (self.start_ns, WINDOW_NS, labels_hash(&p.labels))
        }

        /// Bytes of the stored file (the store writes exactly this).
        fn stored_len(&self) -> u64 {
            let mut out = Vec::new();
            pprof::write(&self.profile(), &mut out).unwrap();
            out.len() as u64
        }
    }

    /// A store on `dir` whose (empty or not) directory has been indexed,
    /// as the agent has it once started.
    fn open_indexed(dir: &Path, retention: Duration, max_bytes: u64) -> Store {
        let store = Store::open(dir, retention, max_bytes).unwrap();
        store.rebuild_index(&mut |w| panic!("unexpected warning: {w}"));
        store
    }

    /// Names in `dir` that look like windows (ember's or planted).
    fn window_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".pb.gz"))
            .collect();
        v.sort();
        v
    }

    /// The index, the files on disk and the windows read back all say that
    /// the store holds exactly `want`, each with the content it was
    /// written with.
    fn assert_store_holds(store: &Store, dir: &Path, want: &[&Spec]) {
        let mut want: Vec<&Spec> = want.to_vec();
        want.sort_by_key(|w| w.key());
        let listed = store.list(0, usize::MAX);
        let listed_ids: Vec<&str> = listed.iter().map(|e| e.id.as_str()).collect();
        let want_ids: Vec<String> = want.iter().map(|w| w.id()).collect();
        assert_eq!(listed_ids, want_ids, "the index lists other windows");
        assert_eq!(store.indexed(), want.len());
        let on_disk: Vec<String> = window_files(dir)
            .into_iter()
            .filter(|n| want_ids.iter().any(|id| *n == format!("{id}.pb.gz")))
            .collect();
        assert_eq!(on_disk.len(), want.len(), "indexed windows missing on disk");
        for (e, w) in listed.iter().zip(&want) {
            let path = dir.join(format!("{}.pb.gz", e.id));
            let disk = std::fs::read(&path).unwrap();
            assert_eq!(e.bytes, disk.len() as u64, "{}: indexed size", e.id);
            assert_eq!((e.start_ns, e.duration_ns), (w.start_ns, WINDOW_NS));
            assert_eq!(e.labels.get("service_name"), Some(&w.service));
            let served = store.read_window(&e.id).expect("an indexed window reads");
            assert_eq!(served, disk, "{}: served bytes differ from the file", e.id);
            let p = pprof::read_profile(&served).unwrap();
            assert_eq!(p.labels.get("service_name"), Some(&w.service));
            assert_eq!(p.samples.len(), 1, "{}", e.id);
            let s = &p.samples[0];
            assert_eq!((s.count, s.pid), (w.count, w.pid), "{}", e.id);
            let frames: Vec<&str> = s
                .locations
                .iter()
                .map(|&l| &*p.functions[p.locations[l as usize].lines[0].function as usize].name)
                .collect();
            assert_eq!(frames, [w.leaf.as_str(), "main"], "{}", e.id);
            assert_eq!(
                p.start.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64,
                w.start_ns
            );
        }
    }

    #[test]
    fn rotation_past_the_size_bound_deletes_the_oldest_windows_first() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        // Ten windows a minute apart, all well inside retention.
        let specs: Vec<Spec> = (0..10)
            .map(|i| Spec::new(i, T0 - HOUR_NS + i * 60_000_000_000))
            .collect();
        let sizes: Vec<u64> = specs.iter().map(Spec::stored_len).collect();
        // Room for the newest four and all but one byte of the fifth.
        let newest4: u64 = sizes[6..].iter().sum();
        let bound = newest4 + sizes[5] - 1;
        let store = open_indexed(&dir, Duration::from_secs(24 * 3600), bound);
        for w in &specs {
            store.write(&w.profile()).unwrap();
        }
        assert_store_holds(&store, &dir, &specs.iter().collect::<Vec<_>>());

        assert_eq!(store.enforce_retention_at(T0), 6);
        let kept: Vec<&Spec> = specs[6..].iter().collect();
        assert_store_holds(&store, &dir, &kept);
        let total: u64 = store.list(0, usize::MAX).iter().map(|e| e.bytes).sum();
        assert_eq!(total, newest4);
        assert!(total <= bound);
        assert_eq!(window_files(&dir).len(), 4, "deleted windows left files");

        // Within the bound nothing more goes; one more window pushes out
        // exactly the oldest remaining one.
        assert_eq!(store.enforce_retention_at(T0), 0);
        // A window a little larger than the deleted fifth (so it does not
        // fit beside the four) but smaller than the fifth and sixth
        // together (so one deletion makes room).
        let mut next = Spec::new(10, T0 - HOUR_NS + 10 * 60_000_000_000);
        next.leaf.push_str("_with_a_longer_name");
        let n = next.stored_len();
        assert!(sizes[5] <= n && n < sizes[5] + sizes[6], "{n} {sizes:?}");
        store.write(&next.profile()).unwrap();
        assert_eq!(store.enforce_retention_at(T0), 1);
        let kept: Vec<&Spec> = specs[7..].iter().chain([&next]).collect();
        assert_store_holds(&store, &dir, &kept);
    }

    #[test]
    fn rotation_deletes_windows_older_than_retention_by_the_given_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let store = open_indexed(&dir, Duration::from_secs(3600), 1 << 30);
        // By their end: two hours before T0, one ns past the one-hour
        // retention, exactly at it, and ten minutes before T0.
        let end = |ago: u64| T0 - ago - WINDOW_NS;
        let specs = [
            Spec::new(0, end(2 * HOUR_NS)),
            Spec::new(1, end(HOUR_NS + 1)),
            Spec::new(2, end(HOUR_NS)),
            Spec::new(3, end(600_000_000_000)),
        ];
        for w in &specs {
            store.write(&w.profile()).unwrap();
        }
        assert_eq!(store.enforce_retention_at(T0), 2);
        assert_store_holds(&store, &dir, &[&specs[2], &specs[3]]);
        assert_eq!(window_files(&dir).len(), 2);

        // The clock moves on: one ns later the window at the limit is past it.
        assert_eq!(store.enforce_retention_at(T0 + 1), 1);
        assert_store_holds(&store, &dir, &[&specs[3]]);
        // And a fresh index of the directory agrees.
        let again = open_indexed(&dir, Duration::from_secs(3600), 1 << 30);
        assert_store_holds(&again, &dir, &[&specs[3]]);
        assert_eq!(again.enforce_retention_at(T0 + 2 * HOUR_NS), 1);
        assert_store_holds(&again, &dir, &[]);
        assert!(window_files(&dir).is_empty());
    }

    #[test]
    fn after_rotation_a_fresh_index_of_the_directory_matches_the_live_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let specs: Vec<Spec> = (0..8)
            .map(|i| Spec::new(i, T0 - 4 * HOUR_NS + i * HOUR_NS / 2))
            .collect();
        // Retention keeps the windows that ended in the last 2 h (4..8);
        // the size bound then keeps the newest three of those.
        let bound: u64 = specs[5..].iter().map(Spec::stored_len).sum();
        let store = open_indexed(&dir, Duration::from_secs(2 * 3600), bound);
        for w in &specs {
            store.write(&w.profile()).unwrap();
        }
        assert_eq!(store.enforce_retention_at(T0), 5);
        let kept: Vec<&Spec> = specs[5..].iter().collect();
        assert_store_holds(&store, &dir, &kept);
        let live: Vec<(String, u64)> = store
            .list(0, usize::MAX)
            .into_iter()
            .map(|e| (e.id, e.bytes))
            .collect();
        let fresh = open_indexed(&dir, Duration::from_secs(2 * 3600), bound);
        let rebuilt: Vec<(String, u64)> = fresh
            .list(0, usize::MAX)
            .into_iter()
            .map(|e| (e.id, e.bytes))
            .collect();
        assert_eq!(rebuilt, live);
        assert_store_holds(&fresh, &dir, &kept);
        assert_eq!(fresh.enforce_retention_at(T0), 0);
    }

    #[test]
    fn rotation_neither_follows_nor_deletes_symlinks_or_foreign_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let store = open_indexed(&dir, Duration::from_secs(3600), 1 << 30);
        let old = |i: u64| Spec::new(i, T0 - 5 * HOUR_NS + i * WINDOW_NS);
        let (mine, swapped, fresh) = (old(0), old(1), Spec::new(2, T0 - WINDOW_NS));
        for w in [&mine, &swapped, &fresh] {
            store.write(&w.profile()).unwrap();
        }

        // After indexing, an attacker swaps one of ember's old windows for
        // a symlink to a file elsewhere (the window itself, moved out).
        let swapped_name = format!("{}.pb.gz", swapped.id());
        let moved = outside.join(&swapped_name);
        std::fs::rename(dir.join(&swapped_name), &moved).unwrap();
        std::os::unix::fs::symlink(&moved, dir.join(&swapped_name)).unwrap();
        // And plants, under old window names: a symlink to a precious file,
        // a regular file that is not ember's, and a file of another name.
        let precious = outside.join("precious");
        std::fs::write(&precious, b"keep me").unwrap();
        let link_name = file_name((T0 - 6 * HOUR_NS, WINDOW_NS, 1));
        std::os::unix::fs::symlink(&precious, dir.join(&link_name)).unwrap();
        let foreign_name = file_name((T0 - 6 * HOUR_NS, WINDOW_NS, 2));
        std::fs::write(dir.join(&foreign_name), b"someone else's").unwrap();
        std::fs::write(dir.join("notes.txt"), b"not a window").unwrap();

        assert!(
            store.read_window(&swapped.id()).is_none(),
            "a symlink was followed"
        );
        // Both old windows are past retention; only the one still ember's
        // own file is deleted, the symlink in place of the other is left.
        assert_eq!(store.enforce_retention_at(T0), 1);
        assert!(!dir.join(format!("{}.pb.gz", mine.id())).exists());
        assert!(std::fs::symlink_metadata(dir.join(&swapped_name))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            pprof::read_profile(&std::fs::read(&moved).unwrap())
                .unwrap()
                .samples[0]
                .count,
            swapped.count,
            "the symlink's target was changed"
        );
        assert_store_holds(&store, &dir, &[&fresh]);

        // A fresh agent on the directory skips every planted file (the
        // symlinks as not regular, the other as foreign) and, even with
        // everything past retention, deletes only its own window.
        let again = Store::open(&dir, Duration::from_secs(3600), 1 << 30).unwrap();
        let mut warnings = Vec::new();
        again.rebuild_index(&mut |w| warnings.push(w));
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert_eq!(again.skipped(SkipReason::NotRegular), 2);
        assert_eq!(again.skipped(SkipReason::Unreadable), 1);
        assert_store_holds(&again, &dir, &[&fresh]);
        assert_eq!(again.enforce_retention_at(T0 + 10 * HOUR_NS), 1);
        assert_store_holds(&again, &dir, &[]);
        assert_eq!(
            window_files(&dir),
            {
                let mut v = vec![swapped_name, link_name, foreign_name];
                v.sort();
                v
            },
            "a planted file was deleted"
        );
        assert!(dir.join("notes.txt").exists());
        assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
        assert!(moved.exists());
    }
}
