//! Push: ships each window's profiles to Pyroscope or Parca.
//!
//! Every backend has a bounded in-memory queue (by bytes). A window is
//! encoded once per backend when it is cut, trimmed and split to the
//! server's documented limits, then sent by a tokio task with exponential
//! backoff and full jitter. Retries happen on network errors, timeouts, 429
//! and 5xx; any other 4xx is logged once per status and dropped (counted).
//! Past the bound the oldest profile is dropped (counted). Sampling never
//! waits on push: `submit` only encodes and enqueues.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use prost::Message;

use super::config::{PushKind as Kind, PushTarget, Settings};
use super::metrics::PushMetrics;
use super::Shared;
use crate::net::HttpClient;
use crate::profile::pprof;
use crate::profile::Profile;

/// Pyroscope's and Parca's request messages (push.proto, profilestore.proto).
pub mod wire {
    #![allow(missing_docs)]

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelPair {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `push.v1.PushRequest`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushRequest {
        #[prost(message, repeated, tag = "1")]
        pub series: Vec<RawProfileSeries>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawProfileSeries {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<LabelPair>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<RawSample>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct RawSample {
        #[prost(bytes = "vec", tag = "1")]
        pub raw_profile: Vec<u8>,
        #[prost(string, tag = "2")]
        pub id: String,
    }

    /// `parca.profilestore.v1alpha1.WriteRawRequest`
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRawRequest {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(message, repeated, tag = "2")]
        pub series: Vec<ParcaSeries>,
        #[prost(bool, tag = "3")]
        pub normalized: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ParcaSeries {
        #[prost(message, optional, tag = "1")]
        pub labels: Option<LabelSet>,
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<ParcaSample>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LabelSet {
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<LabelPair>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ParcaSample {
        #[prost(bytes = "vec", tag = "1")]
        pub raw_profile: Vec<u8>,
    }
}

/// Pyroscope's documented per-profile limits (validation defaults).
const MAX_SAMPLES: usize = 16_000;
const MAX_PROFILE_BYTES: usize = 4 << 20;
/// Kept well under Pyroscope's 2 MB ingestion burst, which a single larger
/// profile could never pass.
const TARGET_PROFILE_BYTES: usize = 1 << 20;
const MAX_LABELS: usize = 30;
const MAX_LABEL_VALUE: usize = 2048;
/// Pyroscope rejects profiles older than 1 h; leave margin for the trip.
const MAX_AGE: Duration = Duration::from_secs(50 * 60);
/// Bytes of any response body read; the servers' real answers are a few
/// hundred bytes, and a larger body is never read further.
const MAX_RESPONSE_BYTES: usize = 64 << 10;
/// 307/308 redirects followed for one request.
const MAX_REDIRECTS: u64 = 3;
/// Characters of backend text (bodies, messages, errors) in one log line.
const LOGGED_CHARS: usize = 200;

struct Item {
    uri: String,
    body: Bytes,
    created: Instant,
}

struct Backend {
    kind: Kind,
    /// The backend's checked config, credentials read.
    cfg: PushTarget,
    /// `kind url` with the URL redacted: what logs and metrics show.
    name: String,
    /// Scheme and authority of the configured URL: credentials go only there.
    origin: (String, String),
    queue: Mutex<VecDeque<Item>>,
    queued_bytes: Mutex<u64>,
    notify: tokio::sync::Notify,
    index: usize,
}

/// Handle to every configured backend.
#[derive(Clone)]
pub struct Pusher {
    backends: Arc<Vec<Arc<Backend>>>,
    shared: Arc<Shared>,
    max_bytes: u64,
    frequency: u64,
    closed: Arc<AtomicBool>,
}

impl Pusher {
    /// Prepares the backends (credentials were read by
    /// [`Config::validate`](super::config::Config::validate), so a missing
    /// file is a start-up error). Nothing is sent until [`Pusher::run`].
    pub fn new(s: &Settings, shared: Arc<Shared>) -> Result<Pusher> {
        let mut backends = Vec::new();
        let mut metrics = Vec::new();
        for (i, cfg) in s.push.iter().enumerate() {
            let name = format!("{} {}", cfg.kind.name(), crate::util::redact_url(&cfg.url));
            metrics.push(PushMetrics {
                name: name.clone(),
                ..Default::default()
            });
            backends.push(Arc::new(Backend {
                kind: cfg.kind,
                cfg: cfg.clone(),
                name,
                origin: origin_of(&cfg.uri),
                queue: Mutex::new(VecDeque::new()),
                queued_bytes: Mutex::new(0),
                notify: tokio::sync::Notify::new(),
                index: i,
            }));
        }
        *shared
            .metrics
            .push
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = metrics;
        Ok(Pusher {
            backends: Arc::new(backends),
            shared,
            max_bytes: s.queue_max_bytes,
            frequency: s.frequency,
            closed: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Encodes a window's profile for every backend and queues it.
    pub fn submit(&self, p: Arc<Profile>) {
        if self.backends.is_empty() || p.samples.is_empty() {
            return;
        }
        for b in self.backends.iter() {
            for (uri, body) in encode(b, &p, self.frequency) {
                self.enqueue(
                    b,
                    Item {
                        uri,
                        body: Bytes::from(body),
                        created: Instant::now(),
                    },
                );
            }
        }
    }

    fn enqueue(&self, b: &Backend, item: Item) {
        let mut q = b.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = b.queued_bytes.lock().unwrap_or_else(|e| e.into_inner());
        *bytes += item.body.len() as u64;
        q.push_back(item);
        let mut dropped = 0;
        // The head may be in flight; it is popped by the sender, so drop
        // from the second-oldest on.
        while *bytes > self.max_bytes && q.len() > 1 {
            if let Some(old) = q.remove(1) {
                *bytes -= old.body.len() as u64;
                dropped += 1;
            }
        }
        let (n, total) = (q.len() as u64, *bytes);
        drop(bytes);
        drop(q);
        self.shared.metrics.with_push(b.index, |m| {
            m.dropped_queue_full += dropped;
            m.queued_items = n;
            m.queued_bytes = total;
        });
        b.notify.notify_one();
    }

    /// Asks the senders to flush what is queued and stop.
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        for b in self.backends.iter() {
            b.notify.notify_one();
        }
    }

    /// Runs one sender task per backend until closed and flushed (or the
    /// flush deadline passes).
    pub async fn run(self) {
        let mut tasks = Vec::new();
        for b in self.backends.iter().cloned() {
            let me = self.clone();
            tasks.push(tokio::spawn(async move { me.sender(b).await }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn sender(&self, b: Arc<Backend>) {
        let ca = b.cfg.ca_file.as_deref();
        let (client, h2) = match (
            crate::net::https_client(false, ca),
            crate::net::https_client(true, ca),
        ) {
            (Ok(a), Ok(h)) => (a, h),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!(
                    "ember agent: {}: {}; not pushing there",
                    b.name,
                    crate::util::printable(&format!("{e:#}"), 300)
                );
                return;
            }
        };
        let mut backoff = Duration::from_millis(500);
        let mut seen_status: HashSet<u16> = HashSet::new();
        let mut flush_deadline: Option<Instant> = None;
        loop {
            let head = {
                let q = b.queue.lock().unwrap_or_else(|e| e.into_inner());
                q.front()
                    .map(|i| (i.uri.clone(), i.body.clone(), i.created))
            };
            let Some((uri, body, created)) = head else {
                if self.closed.load(Ordering::SeqCst) {
                    return;
                }
                b.notify.notified().await;
                continue;
            };
            if self.closed.load(Ordering::SeqCst) {
                // On shutdown, give the queue a bounded time to drain.
                let d = *flush_deadline.get_or_insert_with(|| {
                    Instant::now() + b.cfg.timeout.max(Duration::from_secs(5))
                });
                if Instant::now() > d {
                    return;
                }
            }
            if created.elapsed() > MAX_AGE {
                self.pop(&b, |m| m.dropped_expired += 1);
                continue;
            }
            self.shared.metrics.with_push(b.index, |m| m.attempts += 1);
            let c = if b.kind == Kind::Parca { &h2 } else { &client };
            let (outcome, hops) = send(c, &b, &uri, body).await;
            if hops.followed + hops.refused + hops.oversized > 0 {
                self.shared.metrics.with_push(b.index, |m| {
                    m.redirects_followed += hops.followed;
                    m.redirects_refused += hops.refused;
                    m.oversized_responses += hops.oversized;
                });
            }
            match outcome {
                Outcome::Ok => {
                    backoff = Duration::from_millis(500);
                    self.pop(&b, |m| m.successes += 1);
                }
                Outcome::Reject(status, msg) => {
                    if seen_status.insert(status) {
                        eprintln!(
                            "ember agent: {} rejected a profile ({status}): {}; dropping it (not retried)",
                            b.name,
                            crate::util::printable(&msg, LOGGED_CHARS)
                        );
                    }
                    self.pop(&b, |m| {
                        m.failures += 1;
                        m.rejected += 1;
                    });
                }
                Outcome::Retry(why) => {
                    self.shared.metrics.with_push(b.index, |m| m.failures += 1);
                    if self.closed.load(Ordering::SeqCst)
                        && flush_deadline.is_some_and(|d| Instant::now() + backoff > d)
                    {
                        eprintln!(
                            "ember agent: {} is unreachable ({}); {} profiles were not pushed",
                            b.name,
                            crate::util::printable(&why, LOGGED_CHARS),
                            b.queue.lock().map(|q| q.len()).unwrap_or(0)
                        );
                        return;
                    }
                    // Full jitter: a fleet that lost its backend does not
                    // come back in lockstep.
                    let wait =
                        Duration::from_secs_f64(backoff.as_secs_f64() * (0.5 + 0.5 * jitter()));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = b.notify.notified(), if self.closed.load(Ordering::SeqCst) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
            }
        }
    }

    fn pop(&self, b: &Backend, count: impl FnOnce(&mut PushMetrics)) {
        let mut q = b.queue.lock().unwrap_or_else(|e| e.into_inner());
        let mut bytes = b.queued_bytes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = q.pop_front() {
            *bytes -= i.body.len() as u64;
        }
        let (n, total) = (q.len() as u64, *bytes);
        drop(bytes);
        drop(q);
        self.shared.metrics.with_push(b.index, |m| {
            count(m);
            m.queued_items = n;
            m.queued_bytes = total;
        });
    }
}

enum Outcome {
    Ok,
    Retry(String),
    Reject(u16, String),
}

/// Redirects and oversized replies seen while sending one profile.
#[derive(Default)]
struct Hops {
    followed: u64,
    refused: u64,
    oversized: u64,
}

/// `(scheme, authority)`, lower-case.
fn origin_of(u: &hyper::Uri) -> (String, String) {
    (
        u.scheme_str().unwrap_or("").to_ascii_lowercase(),
        u.authority()
            .map(|a| a.as_str().to_ascii_lowercase())
            .unwrap_or_default(),
    )
}

/// Where a `Location` sends a request made to `base`: an absolute http(s)
/// URL, a scheme-relative `//host/path`, an absolute path or a path
/// relative to `base`'s directory.
fn resolve_location(base: &hyper::Uri, loc: &str) -> Option<hyper::Uri> {
    if loc.is_empty() {
        return None;
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let target = if loc.contains("://") {
        loc.to_string()
    } else if let Some(rest) = loc.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if loc.starts_with('/') {
        format!("{scheme}://{authority}{loc}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        let dir = if dir.is_empty() { "/" } else { dir };
        format!("{scheme}://{authority}{dir}{loc}")
    };
    let uri: hyper::Uri = target.parse().ok()?;
    let ok = matches!(uri.scheme_str(), Some("http") | Some("https"))
        && uri.host().is_some()
        && !uri.authority()?.as_str().contains('@');
    ok.then_some(uri)
}

/// Where a redirect answered to a request for `target` leads, if ember
/// follows it: only 307 and 308 (which keep the method and body), at most
/// [`MAX_REDIRECTS`] in a row, to an http(s) URL, never from https to plain
/// http. The error is the sentence logged.
fn next_hop(
    target: &hyper::Uri,
    status: StatusCode,
    loc: &str,
    followed: u64,
) -> Result<hyper::Uri> {
    let shown = crate::util::redact_url(loc);
    if !matches!(
        status,
        StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
    ) {
        bail!(
            "HTTP {status} to {shown:?} is not followed (only 307 and 308 keep a POST and its body); set url to where the server lives"
        );
    }
    if followed >= MAX_REDIRECTS {
        bail!("HTTP {status} to {shown:?}: more than {MAX_REDIRECTS} redirects in a row");
    }
    let u = resolve_location(target, loc).ok_or_else(|| {
        anyhow!("HTTP {status} to {shown:?}: not an http(s) URL ember can follow")
    })?;
    if target.scheme_str() == Some("https") && u.scheme_str() != Some("https") {
        bail!("HTTP {status} to {shown:?} is refused: it would leave https for plain http");
    }
    Ok(u)
}

/// The response body, at most [`MAX_RESPONSE_BYTES`] of it (the rest is
/// never read: dropping the body closes or resets the stream), its
/// trailers if they came within the cap, and whether it was cut.
async fn read_capped(
    mut body: hyper::body::Incoming,
) -> std::result::Result<(Vec<u8>, Option<hyper::HeaderMap>, bool), hyper::Error> {
    let mut buf = Vec::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                let room = MAX_RESPONSE_BYTES - buf.len();
                buf.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    return Ok((buf, trailers, true));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok((buf, trailers, false))
}

fn build_request(
    b: &Backend,
    uri: &hyper::Uri,
    body: Bytes,
) -> std::result::Result<Request<Full<Bytes>>, hyper::http::Error> {
    let mut req = Request::post(uri.clone())
        .header("user-agent", concat!("ember/", env!("CARGO_PKG_VERSION")));
    match b.kind {
        Kind::Pyroscope => {
            req = req
                .header("content-type", "application/proto")
                .header("connect-protocol-version", "1");
            if b.cfg.gzip {
                req = req.header("content-encoding", "gzip");
            }
        }
        Kind::PyroscopeIngest => req = req.header("content-type", "application/octet-stream"),
        Kind::Parca => {
            req = req
                .header("content-type", "application/grpc")
                .header("te", "trailers")
        }
        Kind::ParcaJson => req = req.header("content-type", "application/json"),
    }
    if let Some(t) = &b.cfg.tenant {
        req = req.header("x-scope-orgid", t);
    }
    // Credentials (and the configured headers, which may be credentials)
    // go only to the configured scheme and host, never after a redirect
    // elsewhere.
    if origin_of(uri) == b.origin {
        if let Some(a) = &b.cfg.auth {
            let mut v = hyper::header::HeaderValue::from_str(a.expose())?;
            v.set_sensitive(true);
            req = req.header("authorization", v);
        }
        for (k, v) in &b.cfg.headers {
            req = req.header(k.as_str(), v.expose());
        }
    }
    req.body(Full::new(body))
}

async fn send(c: &HttpClient, b: &Backend, uri: &str, body: Bytes) -> (Outcome, Hops) {
    let mut hops = Hops::default();
    let mut target: hyper::Uri = match uri.parse() {
        Ok(u) => u,
        Err(e) => return (Outcome::Reject(0, format!("bad request URL: {e}")), hops),
    };
    loop {
        let req = match build_request(b, &target, body.clone()) {
            Ok(r) => r,
            Err(e) => {
                return (
                    Outcome::Reject(0, format!("cannot build the request: {e}")),
                    hops,
                )
            }
        };
        let resp = match tokio::time::timeout(b.cfg.timeout, c.request(req)).await {
            Err(_) => return (Outcome::Retry("timed out".into()), hops),
            Ok(Err(e)) => return (Outcome::Retry(error_chain(&e)), hops),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        let (bytes, trailers, cut) =
            match tokio::time::timeout(b.cfg.timeout, read_capped(resp.into_body())).await {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => return (Outcome::Retry(error_chain(&e)), hops),
                Err(_) => {
                    return (
                        Outcome::Retry("timed out reading the response".into()),
                        hops,
                    )
                }
            };
        if cut {
            hops.oversized += 1;
        }
        if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
            let loc = headers
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let next = next_hop(&target, status, loc, hops.followed);
            match next {
                Ok(u) => {
                    hops.followed += 1;
                    target = u;
                    continue;
                }
                Err(e) => {
                    hops.refused += 1;
                    return (Outcome::Reject(status.as_u16(), e.to_string()), hops);
                }
            }
        }
        if b.kind == Kind::Parca && status == StatusCode::OK {
            // gRPC reports errors in the trailers (or the headers, for a
            // trailers-only response).
            let trailers = trailers.unwrap_or_default();
            let get = |k: &str| {
                trailers
                    .get(k)
                    .or_else(|| headers.get(k))
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let code: u32 = get("grpc-status")
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let msg =
                crate::util::printable(&get("grpc-message").unwrap_or_default(), LOGGED_CHARS);
            let outcome = match code {
                0 => Outcome::Ok,
                // UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE, DATA_LOSS
                2 | 4 | 8 | 10 | 13 | 14 | 15 => {
                    Outcome::Retry(format!("grpc-status {code}: {msg}"))
                }
                _ => Outcome::Reject(
                    u16::try_from(code).unwrap_or(u16::MAX),
                    format!("grpc-status {code}: {msg}"),
                ),
            };
            return (outcome, hops);
        }
        let text = crate::util::printable(&String::from_utf8_lossy(&bytes), LOGGED_CHARS);
        let outcome = if status.is_success() {
            Outcome::Ok
        } else if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            Outcome::Retry(format!("HTTP {status}: {text}"))
        } else {
            Outcome::Reject(status.as_u16(), format!("HTTP {status}: {text}"))
        };
        return (outcome, hops);
    }
}

/// Request URIs and bodies for one profile on one backend, split to the
/// server's limits. A profile with off-CPU time goes as two profile types,
/// each its own series, as the servers keep them: CPU as always, and
/// off-CPU as Pyroscope names it (`__name__` `off_cpu`, sample type
/// `off_cpu/nanoseconds`, no period: `off_cpu:off_cpu:nanoseconds::`, the
/// type Pyroscope gives OpenTelemetry's off-CPU profiles) or as Parca's
/// UI knows it (`parca_agent:wallclock:nanoseconds:samples:count:delta`,
/// shown as "Off-CPU"). Pyroscope's legacy `/ingest` has no off-CPU type:
/// it gets the CPU part only.
fn encode(b: &Backend, p: &Profile, frequency: u64) -> Vec<(String, Vec<u8>)> {
    if !p.off_cpu {
        return encode_type(b, p, frequency, None);
    }
    let mut out = encode_type(b, &p.cpu_part(), frequency, None);
    let off = p.off_cpu_part();
    if !off.samples.is_empty() {
        match b.kind {
            Kind::Pyroscope => out.extend(encode_type(
                b,
                &off,
                frequency,
                Some(("off_cpu", ("off_cpu", None))),
            )),
            Kind::Parca | Kind::ParcaJson => out.extend(encode_type(
                b,
                &off,
                frequency,
                Some(("parca_agent", ("wallclock", Some(("samples", "count"))))),
            )),
            Kind::PyroscopeIngest => {}
        }
    }
    out
}

/// The off-CPU part's series name and pprof types (see [`encode`]).
type OffCpuAs = (
    &'static str,
    (&'static str, Option<(&'static str, &'static str)>),
);

/// [`encode`] for one profile type.
fn encode_type(
    b: &Backend,
    p: &Profile,
    frequency: u64,
    off_cpu: Option<OffCpuAs>,
) -> Vec<(String, Vec<u8>)> {
    let root = b.cfg.url.trim_end_matches('/');
    // Pyroscope turns string sample labels into series labels; thread
    // names would multiply series, so only comm is kept.
    let opts = pprof::EncodeOptions {
        thread_names: !matches!(b.kind, Kind::Pyroscope | Kind::PyroscopeIngest),
        off_cpu_only: off_cpu.map(|o| o.1),
    };
    let parts = pprof::split(
        p,
        opts,
        MAX_SAMPLES,
        TARGET_PROFILE_BYTES.min(MAX_PROFILE_BYTES),
    );
    let mut labels = series_labels(p, b.kind);
    if let Some((name, _)) = off_cpu {
        labels[0].1 = name.to_string();
    }
    let mut out = Vec::new();
    for part in parts {
        let raw = pprof::gzip(&part.encode_to_vec());
        match b.kind {
            Kind::Pyroscope => {
                let req = wire::PushRequest {
                    series: vec![wire::RawProfileSeries {
                        labels: labels
                            .iter()
                            .map(|(k, v)| wire::LabelPair {
                                name: k.clone(),
                                value: v.clone(),
                            })
                            .collect(),
                        samples: vec![wire::RawSample {
                            raw_profile: raw,
                            id: uuid_v4(),
                        }],
                    }],
                };
                let body = req.encode_to_vec();
                out.push((
                    format!("{root}/push.v1.PusherService/Push"),
                    if b.cfg.gzip { pprof::gzip(&body) } else { body },
                ));
            }
            Kind::PyroscopeIngest => {
                let service = labels
                    .iter()
                    .find(|(k, _)| k == "service_name")
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                let tags: Vec<String> = labels
                    .iter()
                    .filter(|(k, _)| k != "service_name" && k != "__name__")
                    .map(|(k, v)| format!("{k}={}", v.replace([',', '}', '{'], "_")))
                    .collect();
                let name = format!(
                    "{}{{{}}}",
                    service.replace(
                        |c: char| !(c.is_ascii_alphanumeric() || "_.-/".contains(c)),
                        "_"
                    ),
                    tags.join(",")
                );
                let from = part.time_nanos / 1_000_000_000;
                let until = (part.time_nanos + part.duration_nanos) / 1_000_000_000;
                let q = format!(
                    "name={}&from={from}&until={until}&format=pprof&spyName=ember&sampleRate={frequency}",
                    urlencode(&name)
                );
                out.push((format!("{root}/ingest?{q}"), raw));
            }
            Kind::Parca | Kind::ParcaJson => {
                let req = wire::WriteRawRequest {
                    tenant: String::new(),
                    series: vec![wire::ParcaSeries {
                        labels: Some(wire::LabelSet {
                            labels: labels
                                .iter()
                                .map(|(k, v)| wire::LabelPair {
                                    name: k.clone(),
                                    value: v.clone(),
                                })
                                .collect(),
                        }),
                        samples: vec![wire::ParcaSample { raw_profile: raw }],
                    }],
                    normalized: true,
                };
                if b.kind == Kind::Parca {
                    let msg = req.encode_to_vec();
                    let mut frame = Vec::with_capacity(msg.len() + 5);
                    frame.push(0);
                    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
                    frame.extend_from_slice(&msg);
                    out.push((
                        format!("{root}/parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw"),
                        frame,
                    ));
                } else {
                    let b64 = |v: &[u8]| base64::engine::general_purpose::STANDARD.encode(v);
                    let json = serde_json::json!({
                        "series": req.series.iter().map(|s| serde_json::json!({
                            "labels": {"labels": s.labels.as_ref().map(|l| l.labels.iter().map(|x| serde_json::json!({"name": x.name, "value": x.value})).collect::<Vec<_>>()).unwrap_or_default()},
                            "samples": s.samples.iter().map(|x| serde_json::json!({"rawProfile": b64(&x.raw_profile)})).collect::<Vec<_>>(),
                        })).collect::<Vec<_>>(),
                        "normalized": true,
                    });
                    out.push((
                        format!("{root}/api/profiles/writeraw"),
                        json.to_string().into_bytes(),
                    ));
                }
            }
        }
    }
    out
}

/// The series labels a backend gets: `__name__` first, then the target's
/// labels without `pid` (one series per process would exhaust the
/// servers' series limits), names made Prometheus-safe, values trimmed, at
/// most the servers' label count.
fn series_labels(p: &Profile, kind: Kind) -> Vec<(String, String)> {
    let name = if matches!(kind, Kind::Parca | Kind::ParcaJson) {
        "parca_agent"
    } else {
        "process_cpu"
    };
    let mut out = vec![("__name__".to_string(), name.to_string())];
    let service = p
        .labels
        .get("service_name")
        .cloned()
        .unwrap_or_else(|| "unknown".into());
    out.push(("service_name".into(), trim(&service)));
    for (k, v) in &p.labels {
        if k == "pid" || k == "service_name" || k.starts_with("__") || v.is_empty() {
            continue;
        }
        if out.len() >= MAX_LABELS {
            break;
        }
        out.push((sanitize(k), trim(v)));
    }
    out.sort_by(|a, b| (a.0 != "__name__", &a.0).cmp(&(b.0 != "__name__", &b.0)));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// "client error (Connect): tcp connect error: Connection refused": hyper's
/// own message names only the stage.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn sanitize(k: &str) -> String {
    let mut s: String = k
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

fn trim(v: &str) -> String {
    if v.len() <= MAX_LABEL_VALUE {
        return v.to_string();
    }
    let mut end = MAX_LABEL_VALUE;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // SAFETY: getrandom writes at most N bytes into buf.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut _, N, 0) };
    if n != N as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 16) * 8)) as u8 ^ i as u8;
        }
    }
    buf
}

fn jitter() -> f64 {
    u64::from_ne_bytes(random_bytes::<8>()) as f64 / u64::MAX as f64
}

/// A random (version 4) UUID.
pub fn uuid_v4() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_safe() {
        assert_eq!(sanitize("k8s.pod-name"), "k8s_pod_name");
        assert_eq!(sanitize("1x"), "_1x");
        assert_eq!(trim(&"é".repeat(2000)).len(), 2048);
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_eq!(urlencode("a{b=c}"), "a%7Bb%3Dc%7D");
    }

    #[test]
    fn redirects() {
        let base: hyper::Uri = "https://pyro:4040/a/push.v1.PusherService/Push"
            .parse()
            .unwrap();
        let go = |status: u16, loc: &str, n: u64| {
            next_hop(&base, StatusCode::from_u16(status).unwrap(), loc, n)
                .map(|u| u.to_string())
                .map_err(|e| e.to_string())
        };
        assert_eq!(go(307, "/b/x", 0).unwrap(), "https://pyro:4040/b/x");
        assert_eq!(
            go(308, "y?z=1", 0).unwrap(),
            "https://pyro:4040/a/push.v1.PusherService/y?z=1"
        );
        assert_eq!(go(307, "//other/p", 0).unwrap(), "https://other/p");
        assert_eq!(
            go(307, "https://other:1/p", 2).unwrap(),
            "https://other:1/p"
        );
        // Not followed: a downgrade, a loop past the bound, a POST-changing
        // status, something that is not an http(s) URL, userinfo.
        assert!(go(307, "http://pyro:4040/x", 0)
            .unwrap_err()
            .contains("plain http"));
        assert!(go(307, "/x", 3).unwrap_err().contains("more than 3"));
        assert!(go(302, "/x", 0).unwrap_err().contains("only 307 and 308"));
        assert!(go(307, "ftp://x/y", 0).is_err());
        assert!(go(307, "", 0).is_err());
        let e = go(307, "https://u:secret@h/x", 0).unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        let plain: hyper::Uri = "http://h/p".parse().unwrap();
        let up = next_hop(&plain, StatusCode::TEMPORARY_REDIRECT, "https://h/p", 0).unwrap();
        assert_eq!(up.scheme_str(), Some("https"));
        assert_ne!(origin_of(&up), origin_of(&plain));
    }
}
