//! The agent's page (`/`) and what it embeds and offers for download
//! (`/flamegraph.svg`, `/profile.pb.gz`), all with the same query
//! ([`PageQuery`]): a range of stored windows merged (the merge `ember
//! query` does) plus, for a range ending now, the window being collected,
//! which the sampler thread symbolizes on request ([`super::Snapshot`]).
//! With `diff_since`, an earlier range of the same length is the baseline
//! of a differential flamegraph and a table of changes.
//!
//! The HTTP layer authorizes these paths like every path that exposes
//! stacks; this module only builds the answers. Building one reads the
//! store and symbolizes nothing: it runs on a blocking thread, at most
//! [`MAX_VIEWS_BUILDING`] at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use super::store::{self, Filter};
use super::{Shared, Snapshot, MAX_SNAPSHOT_WAITERS};
use crate::profile::merge::Merger;
use crate::profile::{pprof, Profile};
use crate::view::diff::{self, DiffOptions};
use crate::view::page::{self, PageData, PageQuery};
use crate::view::table::{self, TableOptions};

/// Most views built at once (each reads and merges stored windows); more
/// requests wait for a turn.
pub const MAX_VIEWS_BUILDING: usize = 2;

/// How long a page waits for the sampler thread's snapshot of the current
/// window before it is served from the store alone.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(5);

static BUILDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_VIEWS_BUILDING);

/// One of the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `/`: the HTML page.
    Page,
    /// `/flamegraph.svg`: the (differential) flamegraph.
    Svg,
    /// `/profile.pb.gz`: the pprof behind the page.
    Pprof,
}

impl View {
    /// The view a path names.
    pub fn of_path(path: &str) -> Option<View> {
        match path {
            "/" => Some(View::Page),
            "/flamegraph.svg" => Some(View::Svg),
            "/profile.pb.gz" => Some(View::Pprof),
            _ => None,
        }
    }
}

/// The answer to an authorized request for a view.
pub async fn serve(view: View, query: &str, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    let q = match PageQuery::parse(query) {
        Ok(q) => q,
        Err(e) => {
            return respond(
                StatusCode::BAD_REQUEST,
                "text/plain; charset=utf-8",
                format!("{e}\n"),
                None,
            )
        }
    };
    let Ok(_permit) = BUILDING.acquire().await else {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain; charset=utf-8",
            "the agent is stopping\n",
            None,
        );
    };
    let mut notes = Vec::new();
    let snap = if q.until.is_none() {
        let s = current_window(&shared).await;
        if s.is_none() {
            notes.push(
                "the window being collected is left out: the sampler did not answer in time"
                    .to_string(),
            );
        }
        s
    } else {
        None
    };
    if shared.store.is_none() {
        notes.push(
            "the local store is disabled (store.dir is empty): only the window being collected is shown"
                .to_string(),
        );
    }
    let built =
        tokio::task::spawn_blocking(move || build(view, &q, &shared, snap.as_deref(), &notes))
            .await;
    match built {
        Ok(r) => r,
        Err(_) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "the view could not be built; see the agent's log\n",
            None,
        ),
    }
}

/// Asks the sampler thread for the current window.
async fn current_window(shared: &Shared) -> Option<Arc<Snapshot>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let mut w = shared.snapshots.lock().unwrap_or_else(|e| e.into_inner());
        w.retain(|r| !r.is_closed());
        if w.len() >= MAX_SNAPSHOT_WAITERS {
            return None;
        }
        w.push(tx);
    }
    tokio::time::timeout(SNAPSHOT_TIMEOUT, rx).await.ok()?.ok()
}

/// Content security for the page: nothing but its own style, the
/// embedded SVG and forms to itself.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; object-src 'self'; frame-src 'self'; child-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// inferno's SVG runs its own inline script, and nothing else.
const SVG_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'self'; base-uri 'none'";

fn respond(
    status: StatusCode,
    ctype: &str,
    body: impl Into<Bytes>,
    csp: Option<&str>,
) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("cache-control", "no-store");
    if let Some(c) = csp {
        b = b.header("content-security-policy", c);
    }
    b.body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The samples of `[from, until)` that `q` selects: stored windows, and
/// the current window's when `snap` is given (then stored windows that
/// start after it began are left out: it was cut meanwhile).
fn select(
    shared: &Shared,
    q: &PageQuery,
    from_ns: u64,
    until_ns: Option<u64>,
    snap: Option<&Snapshot>,
    title: String,
) -> (Profile, usize) {
    let filter = Filter {
        since_ns: from_ns,
        until_ns: until_ns.or(snap.map(|s| s.start_ns)),
        service: q.service.clone(),
        pid: q.pid,
        labels: q.labels.clone(),
    };
    let (stored, windows) = match &shared.store {
        Some(st) => st.query(&filter, &mut |w| eprintln!("ember agent: {w}")),
        None => (Merger::new(String::new()).finish(), 0),
    };
    let mut m = Merger::new(title);
    if windows > 0 {
        m.add_profile(&stored, |_| true);
    }
    for p in snap.map(|s| s.profiles.as_slice()).unwrap_or_default() {
        let l = &p.labels;
        if q.service
            .as_ref()
            .is_some_and(|s| l.get("service_name") != Some(s))
            || !q.labels.iter().all(|(k, v)| l.get(k) == Some(v))
        {
            continue;
        }
        m.add_profile(p, |pid| q.pid.is_none_or(|want| want == pid));
    }
    (m.finish(), windows)
}

fn build(
    view: View,
    q: &PageQuery,
    shared: &Shared,
    snap: Option<&Snapshot>,
    notes: &[String],
) -> Response<Full<Bytes>> {
    let now = store::now_ns();
    let node = shared.node.as_str();
    let title = format!("{} on {node}", q.describe());
    let (after, windows) = select(
        shared,
        q,
        now.saturating_sub(ns(q.since)),
        q.until.map(|u| now.saturating_sub(ns(u))),
        snap,
        title.clone(),
    );
    let before = q.diff_since.map(|d| {
        let from = now.saturating_sub(ns(d));
        let base_title = format!("baseline from {} ago", crate::util::format_duration(d));
        select(
            shared,
            q,
            from,
            Some(from.saturating_add(ns(q.range_len()))),
            None,
            base_title,
        )
        .0
    });
    match view {
        View::Pprof => {
            let mut out = Vec::new();
            if let Err(e) = pprof::write(&after, &mut out) {
                return respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("cannot encode the profile ({e})\n"),
                    None,
                );
            }
            let mut r = respond(StatusCode::OK, "application/octet-stream", out, None);
            r.headers_mut().insert(
                "content-disposition",
                hyper::header::HeaderValue::from_static("attachment; filename=\"ember.pb.gz\""),
            );
            r
        }
        View::Svg => {
            let mut out = Vec::new();
            let written = match &before {
                Some(b) => diff::write_svg(
                    b,
                    &after,
                    DiffOptions::default(),
                    &format!(
                        "ember: {title}, against the same length from {} ago",
                        crate::util::format_duration(q.diff_since.unwrap_or_default())
                    ),
                    &mut out,
                ),
                None => crate::export::svg::write(&after, &mut out, Default::default()),
            };
            match written {
                Ok(()) => respond(StatusCode::OK, "image/svg+xml", out, Some(SVG_CSP)),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    format!("cannot draw the flamegraph ({e})\n"),
                    None,
                ),
            }
        }
        View::Page => {
            let mut t = table::functions(&after, TableOptions::default());
            t.sort(q.sort);
            if let Some(s) = &q.search {
                t.filter(s);
            }
            let changes = before
                .as_ref()
                .map(|b| (diff::changes(b, &after, DiffOptions::default()), b.total()));
            let mut services: Vec<String> = shared
                .store
                .as_ref()
                .map(|st| {
                    st.list(now.saturating_sub(ns(q.since)), 10_000)
                        .into_iter()
                        .filter_map(|e| e.labels.get("service_name").cloned())
                        .collect()
                })
                .unwrap_or_default();
            if let Some(s) = snap {
                services.extend(
                    s.profiles
                        .iter()
                        .filter_map(|p| p.labels.get("service_name").cloned()),
                );
            }
            services.sort();
            services.dedup();
            services.truncate(1000);
            let html = page::render(&PageData {
                node,
                query: q,
                table: &t,
                windows,
                current: snap.is_some(),
                diff: changes.as_ref().map(|(c, n)| (c.as_slice(), *n)),
                services: &services,
                notes,
            });
            respond(
                StatusCode::OK,
                "text/html; charset=utf-8",
                html,
                Some(PAGE_CSP),
            )
        }
    }
}
