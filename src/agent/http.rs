//! The agent's HTTP endpoint (hyper), bound to 127.0.0.1 by default:
//!
//! - `/debug/pprof/profile?seconds=N[&pid=P][&service_name=S]`: the next N
//!   seconds, host-wide unless filtered, as gzip pprof (what
//!   `go tool pprof http://HOST:PORT/debug/pprof/profile?seconds=10` reads);
//! - `/windows[?since=10m]`: recent stored windows as JSON;
//!   `/windows/ID`: one window's pprof;
//! - `/`: the node's page, `/flamegraph.svg` and `/profile.pb.gz` (the
//!   views of [`super::views`], with the page's query);
//! - `/metrics`: Prometheus text; `/healthz`.
//!
//! Access: `/healthz` and `/metrics` (counts only) are open. Everything that
//! exposes stacks, binaries or labels is restricted: a loopback client is
//! identified by the owner uid of its socket in `/proc/net/tcp{,6}` (once
//! per connection) and allowed if it is root or in `http.allow_uids` /
//! `http.allow_groups`; any client sending `Authorization: Bearer <token>`
//! with the token of `http.bearer_token_file` is allowed. Refusals are 403
//! with one sentence, counted by reason.
//!
//! Limits: a header read timeout (which also ends idle keep-alive
//! connections), at most [`MAX_CONNECTIONS`] connections (past it the oldest
//! idle one is closed, or the new one gets 503 when none is idle), a backoff
//! on accept errors, and at most [`MAX_LIVE_REQUESTS`] live profiles (429
//! past it), each cancelled when its client goes away.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CStr, CString};
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::config::HttpConfig;
use super::push::Pusher;
use super::{LiveRequest, Settings, Shared};
use crate::aggregate::Aggregate;

/// Most connections open at once (fewer if a quarter of the descriptor
/// limit is less: connections must not take the descriptors the store and
/// the symbolizer need). Past it the oldest connection not serving an
/// authorized request is closed to make room; if every one is busy, the
/// new connection gets 503 and is closed.
pub const MAX_CONNECTIONS: usize = 256;

/// A client must send a request's whole header within this time, on a new
/// connection and between keep-alive requests (so it is also the idle
/// timeout).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Most `/debug/pprof/profile` requests collecting at once; past it 429.
pub const MAX_LIVE_REQUESTS: usize = 8;

/// First and longest pause after a failed `accept` (e.g. out of file
/// descriptors), doubling in between.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// See [`ACCEPT_BACKOFF_MIN`].
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Most bytes of `/proc/net/tcp` (and of `tcp6`) read to identify a peer;
/// a socket not found within them is not identified (refused).
pub const MAX_PROC_NET_TCP_BYTES: u64 = 32 << 20;

/// Most `/proc/net/tcp` scans running at once (each on a blocking thread):
/// clients can ask for them, so they are bounded.
const MAX_PEER_LOOKUPS: usize = 4;

static PEER_LOOKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_PEER_LOOKUPS);

/// Most windows one `/windows` answer lists (the newest).
pub const MAX_WINDOWS_LISTED: usize = 10_000;

/// Largest request head (request line and headers) read.
const MAX_REQUEST_HEAD_BYTES: usize = 64 << 10;

/// Largest bearer token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Shortest bearer token accepted.
const MIN_TOKEN_LEN: usize = 16;

/// Who may read profiles and windows: decided at start from `[http]`.
#[derive(Clone, Default)]
pub struct Access {
    /// Besides root: uids from `allow_uids` and members of `allow_groups`.
    allow_uids: BTreeSet<u32>,
    /// The bearer token, never logged.
    token: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("allow_uids", &self.allow_uids)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Access {
    /// Reads the token file and resolves groups; checks that a
    /// non-loopback listen address comes with a token.
    pub fn from_config(c: &HttpConfig, listen: Option<SocketAddr>) -> Result<Access> {
        let token = match &c.bearer_token_file {
            Some(p) => Some(read_token(p)?),
            None => None,
        };
        if let Some(a) = listen {
            if !a.ip().to_canonical().is_loopback() && token.is_none() {
                bail!(
                    "http.listen = \"{a}\" is not a loopback address, where clients cannot be identified by user; set http.bearer_token_file to a file holding a secret token (clients then send Authorization: Bearer <token>) or listen on 127.0.0.1"
                );
            }
        }
        let mut allow_uids: BTreeSet<u32> = c.allow_uids.iter().copied().collect();
        for g in &c.allow_groups {
            allow_uids.extend(group_uids(g)?);
        }
        Ok(Access {
            allow_uids,
            token: token.map(Arc::from),
        })
    }

    /// Root, or a uid allowed by the config.
    pub fn allows_uid(&self, uid: u32) -> bool {
        uid == 0 || self.allow_uids.contains(&uid)
    }
}

fn plain(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Reads and checks a bearer token file: one token of printable ASCII (a
/// trailing newline is allowed), at least [`MIN_TOKEN_LEN`] long. Errors
/// never contain the token.
fn read_token(p: &Path) -> Result<Vec<u8>> {
    let key = "http.bearer_token_file";
    let mut buf = super::config::read_bounded(p, MAX_TOKEN_FILE_BYTES, true)
        .map_err(|e| anyhow!("{key}: cannot read {} ({})", p.display(), plain(&e)))?
        .ok_or_else(|| {
            anyhow!(
                "{key}: {} is larger than {MAX_TOKEN_FILE_BYTES} bytes; it must hold one token",
                p.display()
            )
        })?
        .into_bytes();
    if buf.ends_with(b"\n") {
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
    }
    if buf.is_empty() {
        bail!(
            "{key}: {} is empty; put one random token in it, e.g. head -c 32 /dev/urandom | base64 > {}",
            p.display(),
            p.display()
        );
    }
    if !buf.iter().all(|b| b.is_ascii_graphic()) {
        bail!(
            "{key}: the token in {} contains whitespace, a line break or non-printable characters; it must be one line of printable ASCII",
            p.display()
        );
    }
    if buf.len() < MIN_TOKEN_LEN {
        bail!(
            "{key}: the token in {} is shorter than {MIN_TOKEN_LEN} characters; use a long random one, e.g. head -c 32 /dev/urandom | base64",
            p.display()
        );
    }
    Ok(buf)
}

/// Uids of a group's members: those listed in it and those whose primary
/// group it is (from /etc/passwd). Resolved once, at start.
fn group_uids(name: &str) -> Result<Vec<u32>> {
    let (gid, members) = getgrnam(name)?.ok_or_else(|| {
        anyhow!(
            "http.allow_groups: there is no group {name:?}; create it or remove it from the list"
        )
    })?;
    let mut uids: Vec<u32> = members.iter().filter_map(|m| getpwnam_uid(m)).collect();
    if let Ok(f) = std::fs::File::open("/etc/passwd") {
        for line in BufReader::new(f.take(16 << 20))
            .lines()
            .map_while(|l| l.ok())
        {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && f[3].parse::<u32>().ok() == Some(gid) {
                if let Ok(u) = f[2].parse() {
                    uids.push(u);
                }
            }
        }
    }
    Ok(uids)
}

/// (gid, member names) of a group, through NSS.
fn getgrnam(name: &str) -> Result<Option<(u32, Vec<String>)>> {
    let c = CString::new(name)
        .map_err(|_| anyhow!("http.allow_groups: {name:?} is not a group name"))?;
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    loop {
        // SAFETY: zeroed group is a valid out-parameter; buf outlives the
        // pointers read from grp below.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let r = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut grp,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < (16 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if r != 0 {
            bail!(
                "http.allow_groups: cannot look up the group {name:?} ({})",
                plain(&std::io::Error::from_raw_os_error(r))
            );
        }
        if result.is_null() {
            return Ok(None);
        }
        let mut members = Vec::new();
        let mut p = grp.gr_mem;
        // SAFETY: gr_mem is a NULL-terminated array of C strings in buf.
        unsafe {
            while !p.is_null() && !(*p).is_null() {
                members.push(CStr::from_ptr(*p).to_string_lossy().into_owned());
                p = p.add(1);
            }
        }
        return Ok(Some((grp.gr_gid, members)));
    }
}

/// A user's uid, through NSS.
fn getpwnam_uid(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: zeroed passwd is a valid out-parameter; buf is large enough
    // or the call fails with ERANGE.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let r = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pw,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (r == 0 && !result.is_null()).then_some(pw.pw_uid)
}

/// Owner uid of the client's socket of a loopback connection whose server
/// end is `local` and client end `peer`: the `/proc/net/tcp{,6}` entry whose
/// local address is `peer` and remote address `local`.
pub fn peer_uid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|path| {
        let f = std::fs::File::open(path).ok()?;
        find_socket_uid(BufReader::new(f.take(MAX_PROC_NET_TCP_BYTES)), peer, local)
    })
}

/// Scans `/proc/net/tcp`-format text for the socket `local -> remote` and
/// returns its uid. Sockets without an inode (orphaned or in TIME_WAIT: the
/// kernel shows uid 0 for those, and no process can read from them) never
/// match.
fn find_socket_uid(r: impl BufRead, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    for line in r.lines().skip(1) {
        let Ok(line) = line else { break };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        if parse_hex_addr(f[1]) != Some(local) || parse_hex_addr(f[2]) != Some(remote) {
            continue;
        }
        if f[9] == "0" {
            continue;
        }
        return f[7].parse().ok();
    }
    None
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6) and a port: the kernel
/// prints each 32-bit word of the address in host order.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (a, p) = s.split_once(':')?;
    if !a.bytes().all(|b| b.is_ascii_hexdigit()) || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| u32::from_str_radix(&a[i * 8..i * 8 + 8], 16).ok();
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?.to_ne_bytes())),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip.to_canonical(), port))
}

/// Equality whose time depends only on the length of `want`.
fn ct_eq(given: &[u8], want: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != want.len());
    for (i, w) in want.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(0) ^ w;
    }
    std::hint::black_box(diff) == 0
}

/// Why a request for profiles or windows was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Uid(u32),
    NotLoopback,
    BadToken,
    Unidentified,
}

const REFUSAL_LABELS: [&str; 4] = [
    "uid_not_allowed",
    "not_loopback",
    "bad_token",
    "unidentified",
];

impl Refusal {
    fn index(self) -> usize {
        match self {
            Refusal::Uid(_) => 0,
            Refusal::NotLoopback => 1,
            Refusal::BadToken => 2,
            Refusal::Unidentified => 3,
        }
    }

    fn sentence(self) -> String {
        match self {
            Refusal::Uid(u) => format!(
                "uid {u} may not read profiles or windows from this agent; run the request as root, add {u} to http.allow_uids (or one of its groups to http.allow_groups) in the agent's config and restart it, or send the agent's bearer token as Authorization: Bearer <token>.\n"
            ),
            Refusal::NotLoopback => "profiles and windows are served to non-loopback clients only with the agent's bearer token (the contents of its http.bearer_token_file), sent as Authorization: Bearer <token>.\n".into(),
            Refusal::BadToken => "the bearer token does not match the agent's http.bearer_token_file; send that file's contents as Authorization: Bearer <token>.\n".into(),
            Refusal::Unidentified => "the user behind this connection could not be identified from /proc/net/tcp, so profiles and windows are refused; connect over loopback as root or as a user in http.allow_uids, or send the agent's bearer token as Authorization: Bearer <token>.\n".into(),
        }
    }
}

/// The endpoint's counters.
#[derive(Default)]
pub struct HttpMetrics {
    connections: AtomicU64,
    connections_rejected: AtomicU64,
    connections_evicted: AtomicU64,
    header_timeouts: AtomicU64,
    accept_errors: AtomicU64,
    refused: [AtomicU64; 4],
    live_rejected: AtomicU64,
    live_cancelled: AtomicU64,
}

impl HttpMetrics {
    fn render(&self, live: usize) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: String| {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{v}\n"
            ));
        };
        line(
            "ember_http_connections",
            "gauge",
            "HTTP connections open.",
            format!(" {}", g(&self.connections)),
        );
        line(
            "ember_http_connections_rejected_total",
            "counter",
            "Connections answered 503 and closed: the connection cap was reached and none was idle.",
            format!(" {}", g(&self.connections_rejected)),
        );
        line(
            "ember_http_connections_evicted_total",
            "counter",
            "Idle connections closed to make room under the connection cap.",
            format!(" {}", g(&self.connections_evicted)),
        );
        line(
            "ember_http_header_timeouts_total",
            "counter",
            "Connections closed because a request header did not arrive in time (or the connection sat idle).",
            format!(" {}", g(&self.header_timeouts)),
        );
        line(
            "ember_http_accept_errors_total",
            "counter",
            "Failed accepts (each followed by a backoff).",
            format!(" {}", g(&self.accept_errors)),
        );
        line(
            "ember_http_refused_total",
            "counter",
            "Requests for profiles or windows refused with 403, by reason.",
            REFUSAL_LABELS
                .iter()
                .zip(&self.refused)
                .map(|(l, n)| format!("{{reason=\"{l}\"}} {}", g(n)))
                .collect::<Vec<_>>()
                .join("\nember_http_refused_total"),
        );
        line(
            "ember_http_live_requests",
            "gauge",
            "Live profile requests collecting samples.",
            format!(" {live}"),
        );
        line(
            "ember_http_live_rejected_total",
            "counter",
            "Live profile requests refused with 429 (too many at once).",
            format!(" {}", g(&self.live_rejected)),
        );
        line(
            "ember_http_live_cancelled_total",
            "counter",
            "Live profile requests dropped before their answer (client gone).",
            format!(" {}", g(&self.live_cancelled)),
        );
        s
    }
}

/// Starts the I/O thread: the HTTP endpoint (when configured) and the push
/// senders. It returns once the pushers have flushed after `Pusher::close`.
pub fn spawn(
    s: &Settings,
    shared: Arc<Shared>,
    pusher: Pusher,
) -> Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = match s.listen {
        Some(addr) => {
            raise_nofile_limit();
            let std_listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}; another process may use the port, set http.listen or --http-listen"))?;
            std_listener.set_nonblocking(true)?;
            Some(std_listener)
        }
        None => None,
    };
    let access = Arc::new(s.http_access.clone());
    Ok(std::thread::Builder::new()
        .name("ember-io".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Some(l) = listener {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => {
                            tokio::spawn(serve(l, shared.clone(), access));
                        }
                        Err(e) => eprintln!("ember agent: the HTTP endpoint failed to start: {e}"),
                    }
                }
                pusher.run().await;
                // Keep serving until the sampler thread is done with its
                // last window (a stored permit covers an early notify).
                if !shared.stop.load(Ordering::SeqCst) {
                    shared.stopped.notified().await;
                }
            })
        })?)
}

/// Raises the soft descriptor limit to the hard one (at most 65536): open
/// connections must not starve the symbolizer of descriptors, nor the
/// other way round.
fn raise_nofile_limit() {
    // SAFETY: a zeroed rlimit is a valid out-parameter.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return;
    }
    let want = r.rlim_max.min(65536);
    if r.rlim_cur < want {
        r.rlim_cur = want;
        // SAFETY: r is a valid rlimit within the hard limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
}

/// [`MAX_CONNECTIONS`], or a quarter of the descriptor limit if lower.
fn connection_cap() -> usize {
    // SAFETY: a zeroed rlimit is a valid out-parameter.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return MAX_CONNECTIONS;
    }
    let quarter = usize::try_from(r.rlim_cur / 4).unwrap_or(usize::MAX);
    MAX_CONNECTIONS.min(quarter).max(8)
}

/// One open connection.
struct Conn {
    /// Requests being handled.
    busy: AtomicUsize,
    /// Closes the connection (eviction).
    kill: tokio::sync::Notify,
    /// Our end.
    local: SocketAddr,
    /// The client's end.
    peer: SocketAddr,
    /// The client's uid, looked up once.
    uid: tokio::sync::OnceCell<Option<u32>>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    open: BTreeMap<u64, Arc<Conn>>,
}

/// What a connection past the cap gets when no connection is idle.
fn busy_response() -> Vec<u8> {
    let body = "the agent has all the connections it accepts busy; retry in a moment.\n";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, access: Arc<Access>) {
    let registry = Arc::new(Mutex::new(Registry::default()));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD_BYTES)
        .keep_alive(true);
    let max_connections = connection_cap();
    let mut backoff: Option<Duration> = None;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = None;
                x
            }
            Err(e) => {
                shared.http.accept_errors.fetch_add(1, Ordering::Relaxed);
                let pause = match backoff {
                    None => {
                        eprintln!("ember agent: cannot accept HTTP connections ({e}); retrying with backoff");
                        ACCEPT_BACKOFF_MIN
                    }
                    Some(d) => (d * 2).min(ACCEPT_BACKOFF_MAX),
                };
                backoff = Some(pause);
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            kill: tokio::sync::Notify::new(),
            local,
            peer,
            uid: tokio::sync::OnceCell::new(),
        });
        let mut evicted = false;
        let id = {
            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            if reg.open.len() >= max_connections {
                let idle = reg
                    .open
                    .iter()
                    .find(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
                    .map(|(&id, _)| id);
                match idle.and_then(|id| reg.open.remove(&id)) {
                    Some(old) => {
                        old.kill.notify_one();
                        evicted = true;
                        shared
                            .http
                            .connections_evicted
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        shared
                            .http
                            .connections_rejected
                            .fetch_add(1, Ordering::Relaxed);
                        let _ = stream.try_write(&busy_response());
                        continue;
                    }
                }
            }
            let id = reg.next;
            reg.next += 1;
            reg.open.insert(id, conn.clone());
            shared
                .http
                .connections
                .store(reg.open.len() as u64, Ordering::Relaxed);
            id
        };
        let (shared, access, registry, builder) = (
            shared.clone(),
            access.clone(),
            registry.clone(),
            builder.clone(),
        );
        if evicted {
            // Let the evicted connection's task close its socket before the
            // next accept needs a descriptor.
            tokio::task::yield_now().await;
        }
        tokio::spawn(async move {
            let c = conn.clone();
            let sh = shared.clone();
            let svc = hyper::service::service_fn(move |req| {
                handle(req, sh.clone(), c.clone(), access.clone())
            });
            let served = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = served => {
                    if r.is_err_and(|e| e.is_timeout()) {
                        shared.http.header_timeouts.fetch_add(1, Ordering::Relaxed);
                    }
                }
                _ = conn.kill.notified() => {}
            }
            let mut reg = registry.lock().unwrap_or_else(|e| e.into_inner());
            reg.open.remove(&id);
            shared
                .http
                .connections
                .store(reg.open.len() as u64, Ordering::Relaxed);
        });
    }
}

fn reply(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| {
            (
                k.to_string(),
                v.replace("%3D", "=").replace("%2F", "/").replace('+', " "),
            )
        })
        .collect()
}

/// Parses `since`: a whole number and a unit (`ms`, `s`, `m`, `h`, `d`;
/// seconds without one), in ns, with checked arithmetic.
fn parse_since(s: &str) -> Result<u64, &'static str> {
    const BAD: &str = "since must be a whole number with a unit, such as 30s, 10m, 2h or 7d\n";
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.len() > 20 {
        return Err(BAD);
    }
    let n: u64 = num.parse().map_err(|_| BAD)?;
    let per: u64 = match unit {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        "d" => 86_400_000_000_000,
        _ => return Err(BAD),
    };
    n.checked_mul(per)
        .ok_or("since is too large; use at most a few hundred years, such as 24h or 30d\n")
}

/// Checks that the client may read profiles and windows.
async fn authorize(req: &Request<Incoming>, conn: &Conn, access: &Access) -> Result<(), Refusal> {
    if let Some(token) = &access.token {
        if let Some(h) = req.headers().get(hyper::header::AUTHORIZATION) {
            let v = h.as_bytes();
            let ok = v.len() > 7
                && v[..7].eq_ignore_ascii_case(b"bearer ")
                && ct_eq(v[7..].trim_ascii(), token);
            return if ok { Ok(()) } else { Err(Refusal::BadToken) };
        }
    }
    if !conn.peer.ip().to_canonical().is_loopback() {
        return Err(Refusal::NotLoopback);
    }
    let uid = *conn
        .uid
        .get_or_init(|| async {
            let (local, peer) = (conn.local, conn.peer);
            let permit = PEER_LOOKUPS.acquire().await.ok()?;
            // The permit goes with the scan: it runs to its end even if
            // this connection is dropped meanwhile.
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                peer_uid(local, peer)
            })
            .await
            .ok()
            .flatten()
        })
        .await;
    match uid {
        Some(u) if access.allows_uid(u) => Ok(()),
        Some(u) => Err(Refusal::Uid(u)),
        None => Err(Refusal::Unidentified),
    }
}

/// Marks a connection busy while an authorized request is handled (busy
/// connections are not evicted).
struct BusyGuard(Arc<Conn>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Holds a live request's answer channel; when dropped (answered, timed
/// out, or the client went away and hyper dropped the handler), requests
/// nobody waits for any more leave `Shared.live` at once, so the sampler
/// stops aggregating for them.
struct LiveGuard {
    shared: Arc<Shared>,
    rx: Option<tokio::sync::oneshot::Receiver<Vec<u8>>>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.rx = None;
        let mut live = self.shared.live.lock().unwrap_or_else(|e| e.into_inner());
        let before = live.len();
        live.retain(|r| !r.reply.is_closed());
        let gone = (before - live.len()) as u64;
        if gone > 0 {
            self.shared
                .http
                .live_cancelled
                .fetch_add(gone, Ordering::Relaxed);
        }
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    access: Arc<Access>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let text = "text/plain; charset=utf-8";
    match path.as_str() {
        "/healthz" => return Ok(reply(StatusCode::OK, text, "ok\n")),
        "/metrics" => {
            let mut body = shared.metrics.render();
            let live = shared.live.lock().unwrap_or_else(|e| e.into_inner()).len();
            body.push_str(&shared.http.render(live));
            if let Some(store) = &shared.store {
                body.push_str(&store.render_metrics());
            }
            return Ok(reply(StatusCode::OK, "text/plain; version=0.0.4", body));
        }
        "/debug/pprof/profile" | "/windows" => {}
        p if p.starts_with("/windows/") => {}
        p if super::views::View::of_path(p).is_some() => {}
        _ => {
            return Ok(reply(
                StatusCode::NOT_FOUND,
                text,
                "ember agent: /, /flamegraph.svg, /profile.pb.gz, /debug/pprof/profile?seconds=N, /windows, /windows/ID, /metrics, /healthz\n",
            ))
        }
    }
    if let Err(r) = authorize(&req, &conn, &access).await {
        shared.http.refused[r.index()].fetch_add(1, Ordering::Relaxed);
        return Ok(reply(StatusCode::FORBIDDEN, text, r.sentence()));
    }
    // Only authorized work keeps a connection from being evicted: a client
    // still being identified (or refused) can be closed to make room.
    conn.busy.fetch_add(1, Ordering::SeqCst);
    let _busy = BusyGuard(conn.clone());
    if let Some(view) = super::views::View::of_path(&path) {
        let raw = req.uri().query().unwrap_or("").to_string();
        return Ok(super::views::serve(view, &raw, shared.clone()).await);
    }
    let q = query(&req);
    let resp = match path.as_str() {
        "/debug/pprof/profile" => {
            let seconds: u64 = match q.get("seconds").map(|s| s.parse()) {
                None => 30,
                Some(Ok(n)) if (1..=600).contains(&n) => n,
                _ => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        text,
                        "seconds must be a whole number from 1 to 600, such as seconds=30\n",
                    ))
                }
            };
            let pid = match q.get("pid").map(|s| s.parse::<u32>()) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(_)) => {
                    return Ok(reply(
                        StatusCode::BAD_REQUEST,
                        text,
                        "pid must be a process id (a decimal number), such as pid=1234\n",
                    ))
                }
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            {
                let mut live = shared.live.lock().unwrap_or_else(|e| e.into_inner());
                if live.len() >= MAX_LIVE_REQUESTS {
                    shared.http.live_rejected.fetch_add(1, Ordering::Relaxed);
                    return Ok(reply(
                        StatusCode::TOO_MANY_REQUESTS,
                        text,
                        format!("at most {MAX_LIVE_REQUESTS} live profiles run at once; retry when one of them has finished\n"),
                    ));
                }
                live.push(LiveRequest {
                    seconds,
                    primed: false,
                    deadline: Instant::now() + Duration::from_secs(seconds),
                    started: SystemTime::now(),
                    pid,
                    service: q.get("service_name").cloned(),
                    agg: Aggregate::default(),
                    reply: tx,
                });
            }
            let mut guard = LiveGuard {
                shared: shared.clone(),
                rx: Some(rx),
            };
            let rx = guard.rx.as_mut().expect("set above");
            match tokio::time::timeout(Duration::from_secs(seconds + 30), rx).await {
                Ok(Ok(bytes)) => Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/octet-stream")
                    .header(
                        "content-disposition",
                        "attachment; filename=\"profile.pb.gz\"",
                    )
                    .body(Full::new(Bytes::from(bytes)))
                    .expect("valid response"),
                _ => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    text,
                    "the agent is stopping; no profile\n",
                ),
            }
        }
        "/windows" => match &shared.store {
            None => reply(
                StatusCode::NOT_FOUND,
                text,
                "the local store is disabled (store.dir is empty)\n",
            ),
            Some(store) => {
                let since = match q.get("since").map(|s| parse_since(s)) {
                    None => 600_000_000_000,
                    Some(Ok(ns)) => ns,
                    Some(Err(e)) => return Ok(reply(StatusCode::BAD_REQUEST, text, e)),
                };
                let from = super::store::now_ns().saturating_sub(since);
                let list: Vec<serde_json::Value> = store
                    .list(from, MAX_WINDOWS_LISTED)
                    .into_iter()
                    .map(|e| {
                        serde_json::json!({
                            "id": e.id, "start_ns": e.start_ns, "duration_ns": e.duration_ns,
                            "bytes": e.bytes, "labels": *e.labels, "url": format!("/windows/{}", e.id),
                        })
                    })
                    .collect();
                reply(
                    StatusCode::OK,
                    "application/json",
                    serde_json::to_string_pretty(&list).unwrap_or_default(),
                )
            }
        },
        p => {
            let id = p.strip_prefix("/windows/").unwrap_or_default();
            let id = id.strip_suffix(".pb.gz").unwrap_or(id);
            match &shared.store {
                None => reply(StatusCode::NOT_FOUND, text, "the local store is disabled (store.dir is empty)\n"),
                Some(_) if super::store::parse_id(id).is_none() => reply(
                    StatusCode::BAD_REQUEST,
                    text,
                    "a window id is START-DURATION-HASH (decimal, decimal, 16 hex digits), as /windows lists it\n",
                ),
                Some(store) => match store.read_window(id) {
                    Some(b) => reply(StatusCode::OK, "application/octet-stream", b),
                    None => reply(StatusCode::NOT_FOUND, text, "no such window (it may have expired)\n"),
                },
            }
        }
    };
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_checked() {
        assert_eq!(parse_since("10m"), Ok(600_000_000_000));
        assert_eq!(parse_since("30"), Ok(30_000_000_000));
        assert_eq!(parse_since("500ms"), Ok(500_000_000));
        assert!(parse_since("99999999999999999h").is_err());
        assert!(parse_since("18446744073709551615d").is_err());
        assert!(parse_since("999999999999999999999999").is_err());
        for bad in ["", "h", "-1m", "1.5h", "10y", "1 m", "+5s"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
        let e = parse_since("99999999999999999h").unwrap_err();
        assert_eq!(e.trim_end().matches('\n').count(), 0);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn proc_net_tcp_lines_are_matched_by_both_ends() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1 0 100 0 0 10 0
   1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 2222 1 0 20 4 30 10 -1
   2: 0100007F:D432 0100007F:1F90 06 00000000:00000000 03:00000FA2 00000000     0        0 0 3 0
   3: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 3333 1 0 20 4 30 10 -1
";
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        assert_eq!(
            find_socket_uid(text.as_bytes(), client, server),
            Some(65534)
        );
        // A v4-mapped address (an IPv6 listener) finds the same socket.
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:54321".parse().unwrap();
        assert_eq!(
            find_socket_uid(text.as_bytes(), mapped, server),
            Some(65534)
        );
        // A time-wait socket (inode 0, uid shown as 0) is never taken.
        let tw: SocketAddr = "127.0.0.1:54322".parse().unwrap();
        assert_eq!(find_socket_uid(text.as_bytes(), tw, server), None);
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:D431 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4444 1 0 20 4 30 10 -1
";
        let s6: SocketAddr = "[::1]:8080".parse().unwrap();
        let c6: SocketAddr = "[::1]:54321".parse().unwrap();
        assert_eq!(find_socket_uid(v6.as_bytes(), c6, s6), Some(1000));
        assert_eq!(parse_hex_addr("0100007F:zz"), None);
        assert_eq!(parse_hex_addr("01é0007F:1F90"), None);
    }

    #[test]
    fn this_process_finds_its_own_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(peer_uid(s.local_addr().unwrap(), peer), Some(me));
        drop(c);
    }

    #[test]
    fn token_compare_and_files() {
        assert!(ct_eq(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!ct_eq(b"abcdefghijklmnoq", b"abcdefghijklmnop"));
        assert!(!ct_eq(b"abcdefghijklmno", b"abcdefghijklmnop"));
        assert!(!ct_eq(b"abcdefghijklmnopq", b"abcdefghijklmnop"));
        assert!(!ct_eq(b"", b"abcdefghijklmnop"));
        let dir = std::env::temp_dir().join(format!("ember-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tok");
        let secret = "s3cr3t-t0ken-0123456789";
        for (content, ok) in [
            (format!("{secret}\n"), true),
            (format!("{secret}\r\n"), true),
            (secret.to_string(), true),
            (String::new(), false),
            ("\n".into(), false),
            (format!("{secret} x\n"), false),
            (format!("{secret}\n\n"), false),
            ("short\n".into(), false),
        ] {
            std::fs::write(&f, &content).unwrap();
            match read_token(&f) {
                Ok(t) => {
                    assert!(ok, "{content:?} accepted");
                    assert_eq!(t, secret.as_bytes());
                }
                Err(e) => {
                    assert!(!ok, "{content:?}: {e}");
                    let e = e.to_string();
                    assert!(!e.contains(secret) && !e.contains('\n'), "{e}");
                }
            }
        }
        let mut c = HttpConfig {
            listen: "0.0.0.0:6060".into(),
            ..Default::default()
        };
        let listen = Some("0.0.0.0:6060".parse().unwrap());
        let e = Access::from_config(&c, listen).unwrap_err().to_string();
        assert!(e.contains("bearer_token_file"), "{e}");
        std::fs::write(&f, format!("{secret}\n")).unwrap();
        c.bearer_token_file = Some(f.clone());
        let a = Access::from_config(&c, listen).unwrap();
        assert!(!format!("{a:?}").contains(secret));
        assert!(
            Access::from_config(&HttpConfig::default(), Some("[::1]:6060".parse().unwrap()))
                .is_ok()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn groups_resolve_to_members() {
        let c = HttpConfig {
            allow_uids: vec![4242],
            allow_groups: vec!["root".into()],
            ..Default::default()
        };
        let a = Access::from_config(&c, None).unwrap();
        assert!(a.allows_uid(0) && a.allows_uid(4242));
        assert!(!a.allows_uid(4243));
        let c = HttpConfig {
            allow_groups: vec!["no-such-group-ember".into()],
            ..Default::default()
        };
        let e = Access::from_config(&c, None).unwrap_err().to_string();
        assert!(e.contains("no-such-group-ember"), "{e}");
    }
}
