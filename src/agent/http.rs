//! The agent's HTTP endpoint (hyper), bound to 127.0.0.1 by default:
//!
//! - `/debug/pprof/profile?seconds=N[&pid=P][&service_name=S]`: the next N
//!   seconds, host-wide unless filtered, as gzip pprof (what
//!   `go tool pprof http://HOST:PORT/debug/pprof/profile?seconds=10` reads);
//! - `/windows[?since=10m]`: recent stored windows as JSON;
//!   `/windows/ID`: one window's pprof;
//! - `/metrics`: Prometheus text; `/healthz`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::push::Pusher;
use super::{LiveRequest, Settings, Shared};
use crate::aggregate::Aggregate;

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
            let std_listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen on {addr}; another process may use the port, set http.listen or --http-listen"))?;
            std_listener.set_nonblocking(true)?;
            Some(std_listener)
        }
        None => None,
    };
    Ok(std::thread::Builder::new()
        .name("ember-io".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Some(l) = listener {
                    match tokio::net::TcpListener::from_std(l) {
                        Ok(l) => {
                            tokio::spawn(serve(l, shared.clone()));
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

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(req, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
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

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let q = query(&req);
    let text = "text/plain; charset=utf-8";
    let resp = match path.as_str() {
        "/healthz" => reply(StatusCode::OK, text, "ok\n"),
        "/metrics" => reply(StatusCode::OK, "text/plain; version=0.0.4", shared.metrics.render()),
        "/debug/pprof/profile" => {
            let seconds: u64 = match q.get("seconds").map(|s| s.parse()) {
                None => 30,
                Some(Ok(n)) if (1..=600).contains(&n) => n,
                _ => return Ok(reply(StatusCode::BAD_REQUEST, text, "seconds must be 1 to 600\n")),
            };
            let pid = match q.get("pid").map(|s| s.parse::<u32>()) {
                None => None,
                Some(Ok(p)) => Some(p),
                Some(Err(_)) => return Ok(reply(StatusCode::BAD_REQUEST, text, "pid must be a number\n")),
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            shared.live.lock().unwrap_or_else(|e| e.into_inner()).push(LiveRequest {
                seconds,
                primed: false,
                deadline: Instant::now() + Duration::from_secs(seconds),
                started: SystemTime::now(),
                pid,
                service: q.get("service_name").cloned(),
                agg: Aggregate::default(),
                reply: tx,
            });
            match tokio::time::timeout(Duration::from_secs(seconds + 30), rx).await {
                Ok(Ok(bytes)) => Response::builder()
                    .status(StatusCode::OK)
                    .header("content-type", "application/octet-stream")
                    .header("content-disposition", "attachment; filename=\"profile.pb.gz\"")
                    .body(Full::new(Bytes::from(bytes)))
                    .expect("valid response"),
                _ => reply(StatusCode::SERVICE_UNAVAILABLE, text, "the agent is stopping; no profile\n"),
            }
        }
        "/windows" => match &shared.store {
            None => reply(StatusCode::NOT_FOUND, text, "the local store is disabled (store.dir is empty)\n"),
            Some(store) => {
                let since = q.get("since").map(|s| crate::record::parse_duration(s));
                let since = match since {
                    None => Duration::from_secs(600),
                    Some(Ok(d)) => d,
                    Some(Err(_)) => return Ok(reply(StatusCode::BAD_REQUEST, text, "since must be a duration such as 10m\n")),
                };
                let from = super::store::now_ns().saturating_sub(since.as_nanos() as u64);
                let list: Vec<serde_json::Value> = store
                    .list()
                    .into_iter()
                    .filter(|e| e.start_ns + e.duration_ns >= from)
                    .map(|e| {
                        let labels = std::fs::read(&e.path)
                            .ok()
                            .and_then(|b| crate::profile::pprof::read(&b).ok())
                            .map(|p| super::store::labels_of(&p))
                            .unwrap_or_default();
                        serde_json::json!({
                            "id": e.id, "start_ns": e.start_ns, "duration_ns": e.duration_ns,
                            "bytes": e.bytes, "labels": labels, "url": format!("/windows/{}", e.id),
                        })
                    })
                    .collect();
                reply(StatusCode::OK, "application/json", serde_json::to_string_pretty(&list).unwrap_or_default())
            }
        },
        p if p.starts_with("/windows/") => {
            let id = p.trim_start_matches("/windows/").trim_end_matches(".pb.gz");
            match shared.store.as_ref().and_then(|s| s.list().into_iter().find(|e| e.id == id)) {
                Some(e) => match std::fs::read(&e.path) {
                    Ok(b) => reply(StatusCode::OK, "application/octet-stream", b),
                    Err(_) => reply(StatusCode::NOT_FOUND, text, "window expired\n"),
                },
                None => reply(StatusCode::NOT_FOUND, text, "no such window\n"),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            text,
            "ember agent: /debug/pprof/profile?seconds=N, /windows, /windows/ID, /metrics, /healthz\n",
        ),
    };
    Ok(resp)
}
