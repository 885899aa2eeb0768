//! `ember query`: merges the windows an agent stored into one profile and
//! writes it in any output format; with `--diff-since`, also merges an
//! earlier range as a baseline and writes the difference
//! ([`view::diff`](crate::view::diff)).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::agent::store::{self, Filter, Store};
use crate::export::{self, ExportOptions, Format};
use crate::util::{self, limits};
use crate::view::diff::{self, DiffFormat, DiffOptions};

/// What to merge and where to write it, as given on the command line.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// The agent's store directory.
    pub store_dir: PathBuf,
    /// How far back, as the user wrote it (`10m`, `1h`...).
    pub since: String,
    /// Only this `service_name`.
    pub service: Option<String>,
    /// Only samples of this process.
    pub pid: Option<u32>,
    /// Only targets with these labels, each `key=value`.
    pub labels: Vec<String>,
    /// Output format (default: from the output's extension, else SVG).
    pub format: Option<Format>,
    /// Output file (default: standard output).
    pub output: Option<PathBuf>,
    /// Compare with a baseline as long as `since` that starts this long
    /// ago (`--since 1h --diff-since 2h`: the hour before the last one).
    pub diff_since: Option<String>,
    /// Diff format (default: from the output's extension, else SVG).
    pub diff_format: Option<DiffFormat>,
    /// Compare raw counts, not shares.
    pub absolute: bool,
}

/// Merges the matching windows and writes the result; the summary goes to
/// standard error.
pub fn run(o: &QueryOptions) -> Result<()> {
    if !o.store_dir.is_dir() {
        bail!(
            "no agent store at {}; pass --store-dir (or --config) naming the agent's store.dir",
            o.store_dir.display()
        );
    }
    let since = util::duration_in(
        &format!("--since {}", util::quote(&o.since)),
        &o.since,
        Duration::from_millis(1),
        limits::RETENTION.1,
    )?;
    let mut labels = Vec::new();
    for l in &o.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--label {l:?} must look like key=value"))?;
        labels.push((k.to_string(), v.to_string()));
    }
    let diff_since = o
        .diff_since
        .as_deref()
        .map(|d| {
            util::duration_in(
                &format!("--diff-since {}", util::quote(d)),
                d,
                Duration::from_millis(1),
                limits::RETENTION.1,
            )
        })
        .transpose()?;
    if let Some(d) = diff_since {
        if d <= since {
            bail!(
                "--diff-since must reach further back than --since (the baseline starts --diff-since ago and is as long as --since), e.g. --since 1h --diff-since 2h"
            );
        }
        return run_diff(o, since, d, labels);
    }
    let format = match (o.format, &o.output) {
        (Some(f), _) => f,
        (None, Some(p)) => Format::from_path(p).ok_or_else(|| {
            anyhow::anyhow!(
                "cannot tell the format of {} from its name; pass --format",
                p.display()
            )
        })?,
        (None, None) => Format::Svg,
    };
    let store = Store::open_read(&o.store_dir)?;
    let filter = Filter {
        since_ns: store::now_ns().saturating_sub(since.as_nanos() as u64),
        until_ns: None,
        service: o.service.clone(),
        pid: o.pid,
        labels,
    };
    let (profile, windows) = store.query(&filter, &mut |w| eprintln!("ember: warning: {w}"));
    let opts = ExportOptions::default();
    match &o.output {
        Some(p) => export::write_file(&profile, format, p, opts)?,
        None => {
            let mut out = std::io::stdout().lock();
            export::write_to(&profile, format, &mut out, opts)?;
        }
    }
    eprintln!(
        "ember: merged {windows} windows, {} samples{}",
        profile.total(),
        o.output
            .as_ref()
            .map(|p| format!(", wrote {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

/// `--diff-since`: the baseline is `[now - diff_since, now - diff_since +
/// since)`, the profile compared with it the last `since`.
fn run_diff(
    o: &QueryOptions,
    since: Duration,
    diff_since: Duration,
    labels: Vec<(String, String)>,
) -> Result<()> {
    let format = match (o.diff_format, &o.output) {
        (Some(f), _) => f,
        (None, Some(p)) => DiffFormat::from_path(p).ok_or_else(|| {
            anyhow::anyhow!(
                "cannot tell the diff format of {} from its name; end it in .svg, .folded or .txt, or pass --diff-format",
                p.display()
            )
        })?,
        (None, None) => DiffFormat::Svg,
    };
    let store = Store::open_read(&o.store_dir)?;
    let now = store::now_ns();
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    let base_from = now.saturating_sub(ns(diff_since));
    let filter = |since_ns: u64, until_ns: Option<u64>| Filter {
        since_ns,
        until_ns,
        service: o.service.clone(),
        pid: o.pid,
        labels: labels.clone(),
    };
    let mut warn = |w: String| eprintln!("ember: warning: {w}");
    let (before, wb) = store.query(
        &filter(base_from, Some(base_from.saturating_add(ns(since)))),
        &mut warn,
    );
    let (after, wa) = store.query(&filter(now.saturating_sub(ns(since)), None), &mut warn);
    let title = format!(
        "ember query: last {} against the {} from {} ago",
        util::format_duration(since),
        util::format_duration(since),
        util::format_duration(diff_since)
    );
    let mut buf = Vec::new();
    diff::write(
        &before,
        &after,
        DiffOptions {
            absolute: o.absolute,
        },
        format,
        &title,
        &mut buf,
    )?;
    match &o.output {
        Some(p) => export::write_bytes(p, &buf)?,
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
    eprintln!(
        "ember: baseline {wb} windows, {} samples; compared {wa} windows, {} samples{}",
        before.total(),
        after.total(),
        o.output
            .as_ref()
            .map(|p| format!(", wrote {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}
