//! Faithful stand-ins for the Pyroscope and Parca ingestion servers, for
//! push tests. They decode requests with the servers' message definitions
//! and apply the validation rules read from the servers' source
//! (Pyroscope's distributor and validation packages, Parca's normalizer),
//! answering with the status codes the real servers use. One port serves all four APIs (HTTP/1.1 and h2c).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

use ember::agent::push::wire;
use ember::profile::pprof::proto;

/// Which API a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Pyroscope,
    PyroscopeIngest,
    Parca,
    ParcaJson,
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub backend: Backend,
    /// Lower-case header names.
    pub headers: Vec<(String, String)>,
    /// Series labels.
    pub labels: BTreeMap<String, String>,
    /// Decoded profiles.
    pub profiles: Vec<proto::Profile>,
    /// HTTP status answered.
    pub status: u16,
    /// gRPC status answered (Parca gRPC only).
    pub grpc_status: Option<u32>,
    /// The validation error reported, if any.
    pub error: Option<String>,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    forced: Mutex<Option<u16>>,
    /// Raw body sent with the forced status instead of the API's error.
    forced_body: Mutex<Option<Bytes>>,
    tenant: Mutex<Option<String>>,
    /// Every answer carries a body of this many bytes, streamed.
    huge_body: Mutex<Option<u64>>,
    /// (Location base, path prefix): requests outside the prefix get a 307
    /// to base + prefix + path.
    redirect: Mutex<Option<(String, String)>>,
    /// Redirects answered.
    redirected: Mutex<u64>,
}

/// A response body of `left` zero bytes, produced 64 KiB at a time (never
/// held whole).
struct Zeros {
    left: u64,
    chunk: Bytes,
}

impl hyper::body::Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64) as usize;
        self.left -= n as u64;
        let data = self.chunk.slice(..n);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.left)
    }
}

/// A running stand-in server.
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Body = BoxBody<Bytes, Infallible>;

impl Receiver {
    /// On a free port of 127.0.0.1.
    pub fn start() -> Receiver {
        Receiver::start_on("127.0.0.1:0".parse().unwrap())
    }

    /// Over TLS with this certificate and key (PEM), on a free port.
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Receiver {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls_pki_types::PrivateKeyDer::from_pem_file(key).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Receiver::serve(
            "127.0.0.1:0".parse().unwrap(),
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg))),
        )
    }

    /// On a given address (a port reserved earlier: "backend comes up").
    pub fn start_on(addr: SocketAddr) -> Receiver {
        Receiver::serve(addr, None)
    }

    fn serve(addr: SocketAddr, tls: Option<tokio_rustls::TlsAcceptor>) -> Receiver {
        let mut tries = 0;
        let listener = loop {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => panic!("stand-in cannot bind {addr}: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    tokio::select! {
                        _ = &mut rx => break,
                        acc = listener.accept() => {
                            let Ok((stream, _)) = acc else { continue };
                            let st = st.clone();
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                let svc = hyper::service::service_fn(move |req| handle(req, st.clone()));
                                let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                                match tls {
                                    Some(acceptor) => {
                                        if let Ok(s) = acceptor.accept(stream).await {
                                            let _ = server.serve_connection(TokioIo::new(s), svc).await;
                                        }
                                    }
                                    None => {
                                        let _ = server.serve_connection(TokioIo::new(stream), svc).await;
                                    }
                                }
                            });
                        }
                    }
                }
            });
        });
        Receiver {
            addr,
            state,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer every request with this status (recorded first).
    pub fn set_forced_status(&self, status: Option<u16>) {
        *self.state.forced.lock().unwrap() = status;
    }

    /// With a forced status, answer with this raw body (text/plain).
    pub fn set_forced_body(&self, body: Option<&[u8]>) {
        *self.state.forced_body.lock().unwrap() = body.map(Bytes::copy_from_slice);
    }

    /// Answer every request (after recording it) with a body of `n` bytes,
    /// streamed in 64 KiB chunks.
    pub fn set_huge_body(&self, n: Option<u64>) {
        *self.state.huge_body.lock().unwrap() = n;
    }

    /// Answer requests whose path is outside `prefix` with a 307 to
    /// `base + prefix + path` (`base` empty: a path-only Location); requests
    /// under `prefix` are served as if it were not there.
    pub fn set_redirect(&self, r: Option<(&str, &str)>) {
        *self.state.redirect.lock().unwrap() = r.map(|(b, p)| (b.to_string(), p.to_string()));
    }

    /// Redirects answered so far.
    pub fn redirected(&self) -> u64 {
        *self.state.redirected.lock().unwrap()
    }

    /// Require this `X-Scope-OrgID`, as a multi-tenant Pyroscope does.
    pub fn require_tenant(&self, tenant: Option<String>) {
        *self.state.tenant.lock().unwrap() = tenant;
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Requests answered with success.
    pub fn accepted(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.status == 200 && r.grpc_status.unwrap_or(0) == 0)
            .collect()
    }

    /// Shuts the server down and frees the port.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn full(status: u16, ctype: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

fn connect_error(status: u16, code: &str, msg: &str) -> Response<Body> {
    full(
        status,
        "application/json",
        serde_json::json!({"code": code, "message": msg}).to_string(),
    )
}

fn grpc(code: u32, msg: &str) -> Response<Body> {
    let mut trailers = hyper::HeaderMap::new();
    trailers.insert("grpc-status", code.to_string().parse().unwrap());
    if !msg.is_empty() {
        let clean: String = msg
            .chars()
            .filter(|c| c.is_ascii() && !c.is_ascii_control())
            .collect();
        trailers.insert("grpc-message", clean.parse().unwrap());
    }
    let body = Full::new(Bytes::new())
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .body(body)
        .unwrap()
}

async fn handle(req: Request<Incoming>, st: Arc<State>) -> Result<Response<Body>, Infallible> {
    let mut resp = handle_api(req, st.clone()).await?;
    if let Some(n) = *st.huge_body.lock().unwrap() {
        resp.headers_mut().remove("content-length");
        let (parts, _) = resp.into_parts();
        let body = Zeros {
            left: n,
            chunk: Bytes::from(vec![0u8; 64 << 10]),
        };
        resp = Response::from_parts(parts, body.boxed());
    }
    Ok(resp)
}

async fn handle_api(req: Request<Incoming>, st: Arc<State>) -> Result<Response<Body>, Infallible> {
    let mut path = req.uri().path().to_string();
    let redirect = st.redirect.lock().unwrap().clone();
    if let Some((base, prefix)) = redirect {
        match path.strip_prefix(prefix.as_str()) {
            Some(rest) => path = rest.to_string(),
            None => {
                let q = req
                    .uri()
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                let _ = req.into_body().collect().await;
                *st.redirected.lock().unwrap() += 1;
                return Ok(Response::builder()
                    .status(307)
                    .header("location", format!("{base}{prefix}{path}{q}"))
                    .body(Full::new(Bytes::new()).boxed())
                    .unwrap());
            }
        }
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().clone();
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_lowercase(),
                v.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let header = |k: &str| headers.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let backend = match path.as_str() {
        "/push.v1.PusherService/Push" => Backend::Pyroscope,
        "/ingest" | "/pyroscope/ingest" => Backend::PyroscopeIngest,
        "/parca.profilestore.v1alpha1.ProfileStoreService/WriteRaw" => Backend::Parca,
        "/api/profiles/writeraw" => Backend::ParcaJson,
        _ => return Ok(full(404, "text/plain", "404 page not found")),
    };
    if method != hyper::Method::POST {
        return Ok(full(405, "text/plain", "method not allowed"));
    }
    let mut rec = Received {
        backend,
        headers: headers.clone(),
        labels: BTreeMap::new(),
        profiles: vec![],
        status: 200,
        grpc_status: None,
        error: None,
    };

    // Decode and validate first, so even rejected requests are recorded.
    let result: Result<(), (u16, String)> = (|| {
        if let Some(t) = st.tenant.lock().unwrap().clone() {
            if matches!(backend, Backend::Pyroscope | Backend::PyroscopeIngest)
                && header("x-scope-orgid").as_deref() != Some(t.as_str())
            {
                return Err((401, "no org id".into()));
            }
        }
        match backend {
            Backend::Pyroscope => {
                let ct = header("content-type").unwrap_or_default();
                if ct != "application/proto" {
                    return Err((415, format!("unsupported content-type {ct:?}")));
                }
                let raw = match header("content-encoding").as_deref() {
                    Some("gzip") => gunzip(&body, 256 << 20).map_err(|e| (400, e))?,
                    None | Some("identity") => body.to_vec(),
                    Some(other) => {
                        return Err((501, format!("unsupported content-encoding {other}")))
                    }
                };
                let req = wire::PushRequest::decode(&raw[..])
                    .map_err(|e| (400, format!("bad PushRequest: {e}")))?;
                if req.series.is_empty() || req.series.iter().any(|s| s.samples.is_empty()) {
                    return Err((400, "no profiles received".into()));
                }
                for s in &req.series {
                    let labels: Vec<(String, String)> = s
                        .labels
                        .iter()
                        .map(|l| (l.name.clone(), l.value.clone()))
                        .collect();
                    rec.labels = pyroscope_labels(&labels).map_err(|e| (400, e))?;
                    for smp in &s.samples {
                        rec.profiles
                            .push(pyroscope_profile(&smp.raw_profile).map_err(|e| (400, e))?);
                    }
                }
                Ok(())
            }
            Backend::PyroscopeIngest => {
                let q = parse_query(&query);
                let name = q.get("name").cloned().unwrap_or_default();
                rec.labels = ingest_name(&name).map_err(|e| (400, e))?;
                if q.get("format").map(String::as_str) != Some("pprof") {
                    return Err((422, "expected format=pprof for a raw pprof body".into()));
                }
                rec.profiles
                    .push(pyroscope_profile(&body).map_err(|e| (422, e))?);
                Ok(())
            }
            Backend::Parca => {
                if !header("content-type")
                    .unwrap_or_default()
                    .starts_with("application/grpc")
                {
                    return Err((415, "not gRPC".into()));
                }
                if body.len() < 5 || body[0] != 0 {
                    return Err((400, "bad gRPC frame".into()));
                }
                let n = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
                if body.len() != 5 + n {
                    return Err((400, "gRPC frame length mismatch".into()));
                }
                let req = wire::WriteRawRequest::decode(&body[5..])
                    .map_err(|e| (400, format!("failed to parse request: {e}")))?;
                parca_request(&mut rec, &req)
            }
            Backend::ParcaJson => {
                let v: serde_json::Value =
                    serde_json::from_slice(&body).map_err(|e| (400, format!("bad JSON: {e}")))?;
                let mut req = wire::WriteRawRequest {
                    normalized: v["normalized"].as_bool().unwrap_or(false),
                    ..Default::default()
                };
                for s in v["series"].as_array().cloned().unwrap_or_default() {
                    let labels = s["labels"]["labels"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|l| wire::LabelPair {
                            name: l["name"].as_str().unwrap_or("").into(),
                            value: l["value"].as_str().unwrap_or("").into(),
                        })
                        .collect();
                    let samples = s["samples"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|x| {
                            let b = base64::engine::general_purpose::STANDARD
                                .decode(x["rawProfile"].as_str().unwrap_or(""))
                                .unwrap_or_default();
                            wire::ParcaSample { raw_profile: b }
                        })
                        .collect();
                    req.series.push(wire::ParcaSeries {
                        labels: Some(wire::LabelSet { labels }),
                        samples,
                    });
                }
                parca_request(&mut rec, &req)
            }
        }
    })();

    let forced = *st.forced.lock().unwrap();
    let (status, err) = match (forced, result) {
        (Some(s), _) => (s, Some(format!("forced status {s}"))),
        (None, Ok(())) => (200, None),
        (None, Err((s, e))) => (s, Some(e)),
    };
    rec.error = err.clone();
    let resp = match backend {
        Backend::Parca => {
            let code = match status {
                200 => 0,
                400 | 415 => 3,
                401 => 16,
                429 => 8,
                503 => 14,
                _ => 2,
            };
            rec.grpc_status = Some(code);
            grpc(code, err.as_deref().unwrap_or(""))
        }
        Backend::ParcaJson if status != 200 => full(
            status,
            "application/json",
            serde_json::json!({"code": 3, "message": err}).to_string(),
        ),
        Backend::ParcaJson => full(200, "application/json", "{}"),
        Backend::Pyroscope if status == 200 => full(200, "application/proto", Bytes::new()),
        _ if status == 200 => full(200, "text/plain", Bytes::new()),
        _ if forced.is_some() && st.forced_body.lock().unwrap().is_some() => full(
            status,
            "text/plain",
            st.forced_body.lock().unwrap().clone().unwrap(),
        ),
        _ => {
            let code = match status {
                401 => "unauthenticated",
                429 => "resource_exhausted",
                503 => "unavailable",
                s if s >= 500 => "internal",
                _ => "invalid_argument",
            };
            connect_error(status, code, err.as_deref().unwrap_or(""))
        }
    };
    rec.status = if backend == Backend::Parca {
        200
    } else {
        status
    };
    st.received.lock().unwrap().push(rec);
    Ok(resp)
}

fn parca_request(rec: &mut Received, req: &wire::WriteRawRequest) -> Result<(), (u16, String)> {
    for s in &req.series {
        let labels = s
            .labels
            .as_ref()
            .map(|l| l.labels.clone())
            .unwrap_or_default();
        if !labels.iter().any(|l| l.name == "__name__") {
            return Err((400, "missing __name__ label".into()));
        }
        let mut seen = BTreeMap::new();
        for l in &labels {
            if !legacy_label_name(&l.name) {
                return Err((400, format!("invalid label name {:?}", l.name)));
            }
            if seen.insert(l.name.clone(), l.value.clone()).is_some() {
                return Err((400, format!("duplicate label name {:?}", l.name)));
            }
        }
        rec.labels = seen;
        for smp in &s.samples {
            rec.profiles
                .push(parca_profile(&smp.raw_profile).map_err(|e| (400, e))?);
        }
    }
    Ok(())
}

fn gunzip(b: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("bad gzip: {e}"))?;
    if out.len() > limit {
        return Err(format!(
            "uncompressed profile payload size exceeds limit of {limit} bytes"
        ));
    }
    Ok(out)
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn legacy_label_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

fn metric_name(n: &str) -> bool {
    let mut c = n.chars();
    matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_' || x == ':')
}

/// Pyroscope's series-label rules (validation.ValidateLabels).
fn pyroscope_labels(labels: &[(String, String)]) -> Result<BTreeMap<String, String>, String> {
    if labels.len() > 30 {
        return Err(format!(
            "profile series has {} label names; limit 30",
            labels.len()
        ));
    }
    let mut out = BTreeMap::new();
    for (k, v) in labels {
        if k.len() > 1024 || v.len() > 2048 {
            return Err(format!("label {k:?} too long"));
        }
        if !legacy_label_name(k) {
            return Err(format!("invalid label name {k:?}"));
        }
        if out.insert(k.clone(), v.clone()).is_some() {
            return Err(format!("duplicate label name {k:?}"));
        }
    }
    match out.get("__name__") {
        Some(n) if metric_name(n) => {}
        _ => return Err("invalid metric name: __name__ missing or invalid".into()),
    }
    if out.get("service_name").is_none_or(|s| s.is_empty()) {
        return Err("service_name is required".into());
    }
    Ok(out)
}

/// The `name` parameter of /ingest: `app{k=v,...}`.
fn ingest_name(name: &str) -> Result<BTreeMap<String, String>, String> {
    let (app, rest) = match name.find('{') {
        Some(i) => (name[..i].trim(), &name[i + 1..]),
        None => (name.trim(), ""),
    };
    if app.is_empty() {
        return Err("service name is required".into());
    }
    if !app
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c))
    {
        return Err(format!("invalid app name {app:?}"));
    }
    let mut out = BTreeMap::new();
    out.insert("service_name".to_string(), app.to_string());
    let body = rest.split('}').next().unwrap_or("");
    for kv in body.split(',').filter(|s| !s.trim().is_empty()) {
        let (k, v) = kv.split_once('=').ok_or(format!("invalid tag {kv:?}"))?;
        let k = k.trim();
        if !k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            || k.is_empty()
        {
            return Err(format!("invalid tag key {k:?}"));
        }
        out.insert(k.to_string(), v.trim().to_string());
    }
    Ok(out)
}

fn check_strings(p: &proto::Profile) -> Result<(), String> {
    if p.string_table.first().map(String::as_str) != Some("") {
        return Err("string_table[0] must be \"\"".into());
    }
    let n = p.string_table.len() as i64;
    let ok = |i: i64| (0..n).contains(&i);
    let mut idx: Vec<i64> = Vec::new();
    for v in p.sample_type.iter().chain(p.period_type.iter()) {
        idx.extend([v.r#type, v.unit]);
    }
    for m in &p.mapping {
        idx.extend([m.filename, m.build_id]);
    }
    for f in &p.function {
        idx.extend([f.name, f.system_name, f.filename]);
    }
    for s in &p.sample {
        for l in &s.label {
            idx.extend([l.key, l.str, l.num_unit]);
        }
    }
    idx.extend(p.comment.iter().copied());
    if let Some(bad) = idx.into_iter().find(|&i| !ok(i)) {
        return Err(format!("string index {bad} out of range"));
    }
    Ok(())
}

/// Pyroscope's pprof rules (ValidateProfile), on a gzip raw_profile.
fn pyroscope_profile(raw: &[u8]) -> Result<proto::Profile, String> {
    if raw.len() < 10 || !raw.starts_with(&[0x1f, 0x8b]) {
        return Err("raw_profile must be gzip-compressed pprof".into());
    }
    let bytes = gunzip(raw, 4 * 1024 * 1024)?;
    let p =
        proto::Profile::decode(&bytes[..]).map_err(|e| format!("failed to parse profile: {e}"))?;
    check_strings(&p)?;
    if p.sample_type.is_empty() {
        return Err("empty profile".into());
    }
    for v in &p.sample_type {
        let t = &p.string_table[v.r#type as usize];
        let u = &p.string_table[v.unit as usize];
        if t.contains('-') || u.contains('-') {
            return Err(format!("sample type {t}/{u} contains '-'"));
        }
    }
    if p.sample.len() > 16000 {
        return Err(format!(
            "profile has {} samples; limit 16000",
            p.sample.len()
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64;
    if p.time_nanos > 0
        && (p.time_nanos < now - 3_600_000_000_000 || p.time_nanos > now + 600_000_000_000)
    {
        return Err("profile timestamp is outside of ingestion window".into());
    }
    if p.location.iter().any(|l| l.id == 0) || p.function.iter().any(|f| f.id == 0) {
        return Err("location or function id 0".into());
    }
    for s in &p.sample {
        if s.value.len() != p.sample_type.len() {
            return Err("sample value length mismatch".into());
        }
        if s.label.len() > 100 {
            return Err("too many sample labels".into());
        }
    }
    Ok(p)
}

/// Parca's pprof rules (ValidatePprofProfile): stricter on ids.
fn parca_profile(raw: &[u8]) -> Result<proto::Profile, String> {
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        gunzip(raw, 512 << 20)?
    } else {
        raw.to_vec()
    };
    let p =
        proto::Profile::decode(&bytes[..]).map_err(|e| format!("failed to parse profile: {e}"))?;
    check_strings(&p)?;
    for (i, m) in p.mapping.iter().enumerate() {
        if m.id != i as u64 + 1 {
            return Err(format!("mapping id is not sequential: {} at {i}", m.id));
        }
    }
    for (i, f) in p.function.iter().enumerate() {
        if f.id != i as u64 + 1 {
            return Err(format!("function id is not sequential: {} at {i}", f.id));
        }
    }
    for (i, l) in p.location.iter().enumerate() {
        if l.id != i as u64 + 1 {
            return Err(format!("location id is not sequential: {} at {i}", l.id));
        }
        if l.mapping_id as usize > p.mapping.len() {
            return Err("location mapping id out of range".into());
        }
        for ln in &l.line {
            if ln.function_id == 0 || ln.function_id as usize > p.function.len() {
                return Err("line function id out of range".into());
            }
        }
    }
    if p.sample_type.is_empty() && !p.sample.is_empty() {
        return Err("samples without sample types".into());
    }
    for v in &p.sample_type {
        for s in [
            &p.string_table[v.r#type as usize],
            &p.string_table[v.unit as usize],
        ] {
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "sample type {s:?} is not a valid profile type part"
                ));
            }
        }
    }
    if p.time_nanos == 0 {
        return Err("time_nanos is 0".into());
    }
    for s in &p.sample {
        if s.value.len() != p.sample_type.len() {
            return Err("sample value length mismatch".into());
        }
        if s.location_id
            .iter()
            .any(|&l| l == 0 || l as usize > p.location.len())
        {
            return Err("sample location id out of range".into());
        }
        if s.label.iter().any(|l| l.key == 0) {
            return Err("label key 0".into());
        }
    }
    Ok(p)
}
