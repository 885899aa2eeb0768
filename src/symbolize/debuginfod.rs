//! debuginfod: fetches the separate debug files of stripped binaries by
//! build ID from the servers `DEBUGINFOD_URLS` names, as gdb, perf and
//! elfutils do, into elfutils' cache layout (`CACHE/BUILDID/debuginfo`),
//! so ember, gdb and perf share one cache.
//!
//! Fetching never blocks the work: lookups only queue requests, which a
//! thread of their own runs (at most [`MAX_CONCURRENT`] at once, each
//! bounded by a timeout and [`MAX_DEBUGINFO_BYTES`]). A caller that can
//! afford to wait (the end of `ember record`) waits with a deadline; the
//! agent names later windows once a file arrives. Misses are remembered
//! for [`MISS_TTL`], failures for [`ERROR_TTL`]; a server that cannot be
//! reached is reported once.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Requests in flight at most.
pub const MAX_CONCURRENT: usize = 4;
/// Largest debug file fetched; a larger answer is dropped (counted).
pub const MAX_DEBUGINFO_BYTES: u64 = 1 << 30;
/// How long a build ID no server has is not asked again.
pub const MISS_TTL: Duration = Duration::from_secs(600);
/// How long a build ID whose fetch failed is not asked again.
pub const ERROR_TTL: Duration = Duration::from_secs(60);

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The debug file, in the cache.
    Found(PathBuf),
    /// Being fetched.
    Pending,
    /// No server has it, or fetching failed (for a while).
    Missing,
}

/// Counts for the summary and `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FetchStats {
    /// Debug files found already in the cache (fetched earlier, by ember,
    /// gdb or perf).
    pub hits: u64,
    /// Requests made.
    pub requests: u64,
    /// Debug files fetched.
    pub fetched: u64,
    /// Build IDs no server had.
    pub missing: u64,
    /// Requests that failed (unreachable, timed out, too large, bad
    /// status).
    pub errors: u64,
    /// Bytes written into the cache.
    pub bytes: u64,
}

enum State {
    Pending,
    Missing(Instant),
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    requests: AtomicU64,
    fetched: AtomicU64,
    missing: AtomicU64,
    errors: AtomicU64,
    bytes: AtomicU64,
}

struct Shared {
    state: Mutex<HashMap<String, State>>,
    changed: Condvar,
    counters: Counters,
    warned: AtomicBool,
    /// Keep the first failure for the caller instead of printing it.
    quiet: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// A debuginfod client.
pub struct Debuginfod {
    cache: PathBuf,
    shared: Arc<Shared>,
    jobs: tokio::sync::mpsc::UnboundedSender<String>,
}

/// The servers `DEBUGINFOD_URLS` names (space-separated), if any.
pub fn urls_from_env() -> Vec<String> {
    std::env::var("DEBUGINFOD_URLS")
        .unwrap_or_default()
        .split_whitespace()
        .map(|u| u.trim_end_matches('/').to_string())
        .filter(|u| u.starts_with("http://") || u.starts_with("https://"))
        .collect()
}

/// elfutils' cache directory: `DEBUGINFOD_CACHE_PATH`, else
/// `$XDG_CACHE_HOME/debuginfod_client`, else `~/.cache/debuginfod_client`.
pub fn cache_from_env() -> PathBuf {
    if let Some(p) = std::env::var_os("DEBUGINFOD_CACHE_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("debuginfod_client");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/debuginfod_client")
}

/// A lower-case hex build ID, nothing else (it becomes a path component
/// and a URL segment).
fn valid_build_id(id: &str) -> bool {
    id.len() >= 2 && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Debuginfod {
    /// A client of `urls` caching into `cache` (created root-only if
    /// missing), each request bounded by `timeout`; None without URLs or
    /// when the fetch thread cannot start.
    pub fn new(urls: Vec<String>, cache: PathBuf, timeout: Duration) -> Option<Debuginfod> {
        if urls.is_empty() {
            return None;
        }
        let _ = std::fs::create_dir_all(&cache);
        let shared = Arc::new(Shared {
            state: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            counters: Counters::default(),
            warned: AtomicBool::new(false),
            quiet: AtomicBool::new(false),
            failure: Mutex::new(None),
        });
        let (jobs, rx) = tokio::sync::mpsc::unbounded_channel();
        let (s, c) = (shared.clone(), cache.clone());
        std::thread::Builder::new()
            .name("ember-debuginfod".into())
            .spawn(move || fetcher(urls, c, timeout, s, rx))
            .ok()?;
        Some(Debuginfod {
            cache,
            shared,
            jobs,
        })
    }

    /// Where a build ID's debug file is cached.
    pub fn cached_path(&self, build_id: &str) -> PathBuf {
        self.cache.join(build_id).join("debuginfo")
    }

    /// The debug file of `build_id` if cached; else queues its fetch
    /// (once, and not again for a while after a miss).
    pub fn lookup(&self, build_id: &str) -> Lookup {
        if !valid_build_id(build_id) {
            return Lookup::Missing;
        }
        let path = self.cached_path(build_id);
        if path.is_file() {
            return Lookup::Found(path);
        }
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.get(build_id) {
            Some(State::Pending) => return Lookup::Pending,
            Some(State::Missing(until)) if Instant::now() < *until => return Lookup::Missing,
            _ => {}
        }
        if self.jobs.send(build_id.to_string()).is_err() {
            return Lookup::Missing;
        }
        state.insert(build_id.to_string(), State::Pending);
        Lookup::Pending
    }

    /// Waits until none of `ids` is being fetched, or `deadline`.
    pub fn wait(&self, ids: &[String], deadline: Instant) {
        let mut state = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let pending = ids
                .iter()
                .any(|id| matches!(state.get(id), Some(State::Pending)));
            let now = Instant::now();
            if !pending || now >= deadline {
                return;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Keeps the first failure for [`take_failure`](Self::take_failure)
    /// instead of printing it (a recording says it in its summary).
    pub fn collect_failures(&self) {
        self.shared.quiet.store(true, Ordering::Relaxed);
    }

    /// The first failure, once, if one was kept.
    pub fn take_failure(&self) -> Option<String> {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Marks the failure as reported by the caller: the fetch thread says
    /// nothing more.
    pub fn mark_reported(&self) {
        self.shared.warned.store(true, Ordering::Relaxed);
    }

    /// Counts a debug file found in the cache.
    pub fn count_hit(&self) {
        self.shared.counters.hits.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts so far.
    pub fn stats(&self) -> FetchStats {
        let c = &self.shared.counters;
        FetchStats {
            hits: c.hits.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            fetched: c.fetched.load(Ordering::Relaxed),
            missing: c.missing.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
        }
    }
}

/// How one request ended.
enum Fetched {
    Stored(u64),
    NotThere,
    Failed(String),
}

/// The fetch thread: runs queued requests, [`MAX_CONCURRENT`] at a time.
fn fetcher(
    urls: Vec<String>,
    cache: PathBuf,
    timeout: Duration,
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let Ok(client) = crate::net::https_client(false, None) else {
        return;
    };
    let urls = Arc::new(urls);
    let cache = Arc::new(cache);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT));
    rt.block_on(async move {
        while let Some(id) = rx.recv().await {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (client, urls, cache, shared) =
                (client.clone(), urls.clone(), cache.clone(), shared.clone());
            tokio::spawn(async move {
                let outcome = fetch_one(&client, &urls, &cache, &id, timeout, &shared).await;
                drop(permit);
                let c = &shared.counters;
                let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
                match outcome {
                    Fetched::Stored(n) => {
                        c.fetched.fetch_add(1, Ordering::Relaxed);
                        c.bytes.fetch_add(n, Ordering::Relaxed);
                        state.remove(&id);
                    }
                    Fetched::NotThere => {
                        c.missing.fetch_add(1, Ordering::Relaxed);
                        state.insert(id, State::Missing(Instant::now() + MISS_TTL));
                    }
                    Fetched::Failed(why) => {
                        c.errors.fetch_add(1, Ordering::Relaxed);
                        if !shared.warned.swap(true, Ordering::Relaxed) {
                            let msg = format!(
                                "debuginfod: {why}; frames of stripped binaries without local debug files stay unnamed"
                            );
                            if shared.quiet.load(Ordering::Relaxed) {
                                *shared.failure.lock().unwrap_or_else(|e| e.into_inner()) =
                                    Some(msg);
                            } else {
                                eprintln!("ember: {msg}");
                            }
                        }
                        state.insert(id, State::Missing(Instant::now() + ERROR_TTL));
                    }
                }
                drop(state);
                shared.changed.notify_all();
            });
        }
    });
}

/// Asks each server in turn for `id`'s debug file; the first that has it
/// is stored (written under a temporary name, then renamed).
async fn fetch_one(
    client: &crate::net::HttpClient,
    urls: &[String],
    cache: &Path,
    id: &str,
    timeout: Duration,
    shared: &Shared,
) -> Fetched {
    use http_body_util::BodyExt;
    let mut failed = None;
    for base in urls {
        shared.counters.requests.fetch_add(1, Ordering::Relaxed);
        let url = format!("{base}/buildid/{id}/debuginfo");
        let Ok(req) = hyper::Request::get(&url)
            .header("user-agent", concat!("ember/", env!("CARGO_PKG_VERSION")))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
        else {
            failed = Some(format!("{url} is not a valid URL"));
            continue;
        };
        let res = match tokio::time::timeout(timeout, client.request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                failed = Some(format!("cannot reach {base} ({e})"));
                continue;
            }
            Err(_) => {
                failed = Some(format!("{base} did not answer within {timeout:?}"));
                continue;
            }
        };
        let encoding = res
            .headers()
            .get(hyper::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("identity")
            .to_ascii_lowercase();
        match res.status().as_u16() {
            200 => {}
            404 => continue,
            s => {
                failed = Some(format!("{base} answered {s}"));
                continue;
            }
        }
        let dir = cache.join(id);
        if std::fs::create_dir_all(&dir).is_err() {
            return Fetched::Failed(format!("cannot create {}", dir.display()));
        }
        let Ok(mut tmp) = tempfile::NamedTempFile::new_in(&dir) else {
            return Fetched::Failed(format!("cannot write into {}", dir.display()));
        };
        let mut body = res.into_body();
        let mut written = 0u64;
        let deadline = tokio::time::Instant::now() + timeout * 4;
        let complete = loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(f))) => f,
                Ok(None) => break true,
                _ => break false,
            };
            if let Ok(data) = frame.into_data() {
                written += data.len() as u64;
                if written > MAX_DEBUGINFO_BYTES || tmp.write_all(&data).is_err() {
                    break false;
                }
            }
        };
        if !complete {
            failed = Some(format!(
                "{base} sent a debug file that was cut short, too slow or over {} MiB",
                MAX_DEBUGINFO_BYTES >> 20
            ));
            continue;
        }
        // A server (or a proxy) may send it compressed.
        let tmp = match decode(tmp, &encoding, &dir) {
            Ok(t) => t,
            Err(why) => {
                failed = Some(format!("{base} sent a debug file that {why}"));
                continue;
            }
        };
        if tmp.persist(dir.join("debuginfo")).is_err() {
            return Fetched::Failed(format!("cannot store into {}", dir.display()));
        }
        return Fetched::Stored(written);
    }
    match failed {
        Some(why) => Fetched::Failed(why),
        None => Fetched::NotThere,
    }
}

/// The body as sent, decoded per its `Content-Encoding` (gzip or xz),
/// within [`MAX_DEBUGINFO_BYTES`].
fn decode(
    raw: tempfile::NamedTempFile,
    encoding: &str,
    dir: &Path,
) -> Result<tempfile::NamedTempFile, &'static str> {
    use std::io::{Read, Seek};
    let mut input = raw.reopen().map_err(|_| "could not be read back")?;
    input.rewind().map_err(|_| "could not be read back")?;
    let mut reader: Box<dyn Read> = match encoding {
        "identity" | "" => return Ok(raw),
        "gzip" | "x-gzip" => Box::new(flate2::read::GzDecoder::new(input)),
        "xz" => Box::new(lzma_rust2::XzReader::new_mem_limit(
            std::io::BufReader::new(input),
            false,
            super::minidebug::DECODER_MEM_LIMIT_KB,
        )),
        _ => return Err("is in an encoding ember cannot read"),
    };
    let mut out = tempfile::NamedTempFile::new_in(dir).map_err(|_| "could not be stored")?;
    let n = std::io::copy(
        &mut (&mut reader).take(MAX_DEBUGINFO_BYTES + 1),
        out.as_file_mut(),
    )
    .map_err(|_| "did not decompress")?;
    if n > MAX_DEBUGINFO_BYTES {
        return Err("is too large once decompressed");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_ids_and_env() {
        assert!(valid_build_id("ab12cd"));
        assert!(!valid_build_id("../etc"));
        assert!(!valid_build_id("a"));
        assert!(!valid_build_id(&"a".repeat(129)));
        // No URLs: no client.
        assert!(
            Debuginfod::new(Vec::new(), PathBuf::from("/nonexistent"), Duration::ZERO).is_none()
        );
    }

    /// Bodies sent gzip- or xz-encoded are stored decoded; an unknown
    /// encoding is refused.
    #[test]
    fn encoded_bodies_are_decoded() {
        use std::io::Read;
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let stored = |encoding: &str, bytes: &[u8]| {
            let mut t = tempfile::NamedTempFile::new_in(dir.path()).unwrap();
            t.write_all(bytes).unwrap();
            decode(t, encoding, dir.path()).map(|out| {
                let mut v = Vec::new();
                out.reopen().unwrap().read_to_end(&mut v).unwrap();
                v
            })
        };
        assert_eq!(stored("identity", &content).unwrap(), content);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&content).unwrap();
        assert_eq!(stored("gzip", &gz.finish().unwrap()).unwrap(), content);
        let raw = dir.path().join("raw");
        std::fs::write(&raw, &content).unwrap();
        let st = std::process::Command::new("xz")
            .arg("-k")
            .arg(&raw)
            .status();
        assert!(
            st.is_ok_and(|s| s.success()),
            "xz (scripts/setup.sh installs it)"
        );
        let xz = std::fs::read(dir.path().join("raw.xz")).unwrap();
        assert_eq!(stored("xz", &xz).unwrap(), content);
        assert!(stored("br", &xz).is_err());
        assert!(stored("gzip", b"not gzip").is_err());
    }

    /// A server that refuses connections: the lookup queues, the wait ends
    /// with the fetch failed (counted), and the miss is remembered.
    #[test]
    fn unreachable_server_fails_once_and_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        let d = Debuginfod::new(
            vec![format!("http://127.0.0.1:{port}")],
            dir.path().to_path_buf(),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(d.lookup("abcdef"), Lookup::Pending);
        d.wait(&["abcdef".into()], Instant::now() + Duration::from_secs(10));
        assert_eq!(d.lookup("abcdef"), Lookup::Missing);
        let st = d.stats();
        assert_eq!((st.requests, st.errors, st.fetched), (1, 1, 0));
    }
}
