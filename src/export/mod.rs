//! export: writes a [`Profile`] as pprof, folded stacks or an SVG flamegraph.

pub mod folded;
pub mod svg;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::profile::{pprof, Profile};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Format {
    /// gzip-compressed pprof protobuf (`go tool pprof`, Pyroscope, Parca).
    Pprof,
    /// Brendan Gregg's collapsed stacks (`comm;outer;...;inner count`).
    Folded,
    /// An interactive SVG flamegraph.
    Svg,
}

impl Format {
    /// The file written when no path is given.
    pub fn default_path(self) -> &'static str {
        match self {
            Format::Pprof => "profile.pb.gz",
            Format::Folded => "stacks.folded",
            Format::Svg => "flamegraph.svg",
        }
    }

    /// The format a file name implies, if any.
    pub fn from_path(p: &Path) -> Option<Format> {
        let name = p.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".pb.gz") || name.ends_with(".pprof") || name.ends_with(".pb") {
            Some(Format::Pprof)
        } else if name.ends_with(".svg") {
            Some(Format::Svg)
        } else if name.ends_with(".folded")
            || name.ends_with(".txt")
            || name.ends_with(".collapsed")
        {
            Some(Format::Folded)
        } else {
            None
        }
    }
}

/// Options shared by the text exporters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportOptions {
    /// Add a per-thread frame under each process root.
    pub threads: bool,
}

/// Writes `p` to `path` atomically (temporary file, then rename), so a
/// failed write never leaves a half file behind.
pub fn write_file(p: &Profile, format: Format, path: &Path, opts: ExportOptions) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| -> Result<()> {
        let f = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        let mut w = BufWriter::new(f);
        write_to(p, format, &mut w, opts)?;
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `p` in `format` to any writer.
pub fn write_to(
    p: &Profile,
    format: Format,
    w: &mut impl Write,
    opts: ExportOptions,
) -> Result<()> {
    match format {
        Format::Pprof => pprof::write(p, w)?,
        Format::Folded => folded::write(p, w, opts)?,
        Format::Svg => svg::write(p, w, opts)?,
    }
    Ok(())
}

/// Fails early, before sampling, if `path` cannot be written.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!(
            "the output path {} is a directory; give a file name such as {}/flamegraph.svg",
            path.display(),
            path.display()
        );
    }
    let tmp = tmp_path(path);
    match File::create(&tmp) {
        Ok(_) => {
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            bail!(
                "cannot write {} ({}); choose an output path in a writable directory (checked {})",
                path.display(),
                plain_io(&e),
                dir.display()
            )
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.ember-tmp"))
}

/// An io error without the "(os error N)" noise.
pub fn plain_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}
