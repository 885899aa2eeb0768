//! `ember diff`: compares two pprof profiles (files written by `record`,
//! `query` or any pprof writer) and writes a differential flamegraph, its
//! folded lines or a table of the changed functions
//! ([`view::diff`](crate::view::diff)).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::profile::{pprof, Profile};
use crate::view::diff::{self, DiffFormat, DiffOptions};

/// Largest profile file read (compressed or not); the decoder bounds what
/// it inflates to on its own.
pub const MAX_PROFILE_FILE_BYTES: u64 = 256 << 20;

/// What `ember diff` compares and writes.
#[derive(Debug, Clone)]
pub struct DiffArgs {
    /// The baseline.
    pub before: PathBuf,
    /// The profile compared with it.
    pub after: PathBuf,
    /// Output file (default: standard output).
    pub output: Option<PathBuf>,
    /// Format (default: from the output's extension, else SVG).
    pub format: Option<DiffFormat>,
    /// Raw counts, not shares.
    pub absolute: bool,
}

/// Reads a pprof file, bounded in size.
pub fn read_profile(path: &Path) -> Result<Profile> {
    use std::io::Read;
    let cannot = |e: std::io::Error| {
        anyhow!(
            "cannot read {} ({})",
            path.display(),
            crate::export::plain_io(&e)
        )
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(cannot)?
        .take(MAX_PROFILE_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot)?;
    if bytes.len() as u64 > MAX_PROFILE_FILE_BYTES {
        anyhow::bail!(
            "{} is larger than {} MiB; ember compares profiles up to that size",
            path.display(),
            MAX_PROFILE_FILE_BYTES >> 20
        );
    }
    pprof::read_profile(&bytes).map_err(|e| {
        anyhow!(
            "{} is not a readable pprof profile ({e}); give a .pb.gz written by ember record, ember query or another pprof writer",
            path.display()
        )
    })
}

/// Compares the two profiles and writes the result.
pub fn run(a: &DiffArgs) -> Result<()> {
    let format = match (a.format, &a.output) {
        (Some(f), _) => f,
        (None, Some(p)) => DiffFormat::from_path(p).ok_or_else(|| {
            anyhow!(
                "cannot tell the format of {} from its name; end it in .svg, .folded or .txt, or pass --format",
                p.display()
            )
        })?,
        (None, None) => DiffFormat::Svg,
    };
    let before = read_profile(&a.before)?;
    let after = read_profile(&a.after)?;
    let title = format!("ember diff: {} → {}", a.before.display(), a.after.display());
    let o = DiffOptions {
        absolute: a.absolute,
    };
    let mut buf = Vec::new();
    diff::write(&before, &after, o, format, &title, &mut buf)?;
    match &a.output {
        Some(p) => crate::export::write_bytes(p, &buf)?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
    eprintln!(
        "ember: compared {} samples before with {} after{}",
        before.total(),
        after.total(),
        a.output
            .as_ref()
            .map(|p| format!(", wrote {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}
