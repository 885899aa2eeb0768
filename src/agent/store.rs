//! Local history: one gzip pprof file per window and target, named
//! `<start_ns>-<duration_ns>-<labels_hash>.pb.gz`, with the target's labels in
//! the profile's comments (`label:key=value`). Files are written atomically;
//! anything else in the directory is skipped with a warning.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

use crate::export::{self, ExportOptions, Format};
use crate::profile::merge::Merger;
use crate::profile::{pprof, Profile};

/// Labels of a target.
pub type Labels = BTreeMap<String, String>;

/// One stored window of one target.
#[derive(Debug, Clone)]
pub struct Entry {
    /// File name without extension: a stable id for the HTTP endpoint.
    pub id: String,
    /// Path of the file.
    pub path: PathBuf,
    /// Window start, ns since the epoch.
    pub start_ns: u64,
    /// Window length, ns.
    pub duration_ns: u64,
    /// File size in bytes.
    pub bytes: u64,
}

/// What a query selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only windows that end after this time (ns since the epoch).
    pub since_ns: u64,
    /// `service_name` must equal this.
    pub service: Option<String>,
    /// Only samples of this pid.
    pub pid: Option<u32>,
    /// Every `key=value` must match a target label.
    pub labels: Vec<(String, String)>,
}

/// The window directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    retention: Duration,
    max_bytes: u64,
}

impl Store {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path, retention: Duration, max_bytes: u64) -> Result<Store> {
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create the store directory {}; set store.dir to a writable directory",
                dir.display()
            )
        })?;
        Ok(Store {
            dir: dir.to_path_buf(),
            retention,
            max_bytes,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one target's window.
    pub fn write(&self, p: &Profile) -> Result<PathBuf> {
        let start = p
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let name = format!(
            "{start}-{}-{:016x}.pb.gz",
            p.duration.as_nanos() as u64,
            labels_hash(&p.labels)
        );
        let path = self.dir.join(name);
        export::write_file(p, Format::Pprof, &path, ExportOptions::default())?;
        Ok(path)
    }

    /// Stored windows, oldest first. Foreign files are skipped.
    pub fn list(&self) -> Vec<Entry> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_suffix(".pb.gz")?.to_string();
                let mut it = id.split('-');
                let start_ns = it.next()?.parse().ok()?;
                let duration_ns = it.next()?.parse().ok()?;
                u64::from_str_radix(it.next()?, 16).ok()?;
                let bytes = e.metadata().ok()?.len();
                Some(Entry {
                    id,
                    path: e.path(),
                    start_ns,
                    duration_ns,
                    bytes,
                })
            })
            .collect();
        out.sort_by_key(|e| (e.start_ns, e.id.clone()));
        out
    }

    /// Deletes windows past the retention age, then the oldest until the
    /// directory fits its size bound. Returns how many were deleted.
    pub fn enforce_retention(&self) -> usize {
        let now = now_ns();
        let oldest = now.saturating_sub(self.retention.as_nanos() as u64);
        let entries = self.list();
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        let mut deleted = 0;
        for e in &entries {
            let expired = e.start_ns + e.duration_ns < oldest || total > self.max_bytes;
            if expired && std::fs::remove_file(&e.path).is_ok() {
                deleted += 1;
                total -= e.bytes;
            }
        }
        deleted
    }

    /// Merges every stored window that matches `f` into one profile.
    /// Unreadable files are skipped with one warning each.
    pub fn query(&self, f: &Filter, warn: &mut dyn FnMut(String)) -> (Profile, usize) {
        let mut merger = Merger::new(describe(f));
        let mut used = 0;
        for e in self.list() {
            if e.start_ns + e.duration_ns < f.since_ns {
                continue;
            }
            let p = match std::fs::read(&e.path)
                .map_err(anyhow::Error::from)
                .and_then(|b| pprof::read(&b))
            {
                Ok(p) => p,
                Err(err) => {
                    warn(format!(
                        "skipping {}: not a readable profile ({err})",
                        e.path.display()
                    ));
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
}

/// Target labels stored in a profile's comments.
pub fn labels_of(p: &pprof::proto::Profile) -> Labels {
    p.comment
        .iter()
        .filter_map(|&i| p.string_table.get(i as usize))
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
