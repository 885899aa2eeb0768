//! `ember query`: merges the windows an agent stored into one profile and
//! writes it in any output format.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::agent::store::{self, Filter, Store};
use crate::export::{self, ExportOptions, Format};
use crate::util::{self, limits};

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
