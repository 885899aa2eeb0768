//! export: writes a [`Profile`] as pprof, folded stacks or an SVG flamegraph.
#![warn(missing_docs)]

pub mod folded;
pub mod svg;

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{bail, Result};

use crate::profile::{pprof, Profile};

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// gzip-compressed pprof protobuf (`go tool pprof`, Pyroscope, Parca).
    Pprof,
    /// Brendan Gregg's collapsed stacks (`comm;outer;...;inner count`).
    Folded,
    /// An interactive SVG flamegraph.
    Svg,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Format, String> {
        match s.to_ascii_lowercase().as_str() {
            "pprof" => Ok(Format::Pprof),
            "folded" => Ok(Format::Folded),
            "svg" => Ok(Format::Svg),
            _ => Err(format!("unknown format {s:?}; use pprof, folded or svg")),
        }
    }
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
    /// What folded and SVG outputs weigh stacks by.
    pub sample_type: SampleType,
}

/// What folded and SVG outputs weigh each stack by (pprof carries every
/// type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SampleType {
    /// CPU samples (the default).
    #[default]
    Cpu,
    /// Nanoseconds spent off CPU (waiting).
    OffCpu,
    /// Wall-clock nanoseconds: CPU time (samples × period) plus off-CPU.
    Wall,
}

impl std::str::FromStr for SampleType {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<SampleType, String> {
        match s.to_ascii_lowercase().replace('_', "-").as_str() {
            "cpu" | "samples" => Ok(SampleType::Cpu),
            "off-cpu" | "offcpu" => Ok(SampleType::OffCpu),
            "wall" => Ok(SampleType::Wall),
            _ => Err(format!(
                "unknown sample type {s:?}; use cpu, off-cpu or wall"
            )),
        }
    }
}

impl SampleType {
    /// A stack's weight in a profile sample.
    pub fn weight(self, p: &Profile, s: &crate::profile::Sample) -> u64 {
        match self {
            SampleType::Cpu => s.count,
            SampleType::OffCpu => s.off_cpu,
            SampleType::Wall => s
                .count
                .saturating_mul(p.period_ns())
                .saturating_add(s.off_cpu),
        }
    }

    /// What a weight counts, for titles and tooltips.
    pub fn unit(self) -> &'static str {
        match self {
            SampleType::Cpu => "samples",
            SampleType::OffCpu | SampleType::Wall => "ns",
        }
    }

    /// How titles name it.
    pub fn title(self) -> &'static str {
        match self {
            SampleType::Cpu => "CPU",
            SampleType::OffCpu => "off-CPU time",
            SampleType::Wall => "wall-clock time (CPU + off-CPU)",
        }
    }
}

/// Writes `p` to `path` atomically: into a new file with an unpredictable
/// name in the same directory (created with `O_CREAT|O_EXCL|O_NOFOLLOW`, mode
/// 0600, so nothing planted there can be written through), then renamed over
/// `path`. A failed write never leaves a half file behind, and a symlink at
/// `path` is replaced, not followed.
pub fn write_file(p: &Profile, format: Format, path: &Path, opts: ExportOptions) -> Result<()> {
    let mut tmp = temp_in(path)?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        write_to(p, format, &mut w, opts)?;
        w.flush()
            .map_err(|e| anyhow::anyhow!("cannot write {} ({})", path.display(), plain_io(&e)))?;
    }
    // The file was created 0600; outputs are as readable as a plain
    // create would make them (0644 less the umask).
    let mode = 0o666 & !umask();
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write {} ({})", path.display(), plain_io(&e)))?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {} ({})", path.display(), plain_io(&e.error)))?;
    Ok(())
}

/// Writes bytes made elsewhere (a diff, a page) to `path` the way
/// [`write_file`] writes a profile: atomically, never through a link.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_in(path)?;
    let mode = 0o666 & !umask();
    let mut f = tmp.as_file();
    f.write_all(bytes)
        .and_then(|()| f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode)))
        .and_then(|()| f.sync_all())
        .map_err(|e| anyhow::anyhow!("cannot write {} ({})", path.display(), plain_io(&e)))?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("cannot write {} ({})", path.display(), plain_io(&e.error)))?;
    Ok(())
}

/// A new temporary file beside `path` (removed when dropped).
fn temp_in(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The prefix is only for a human looking at the directory mid-write;
    // the random suffix is what makes the name unguessable.
    let prefix: String = format!(".{name}").chars().take(48).collect();
    tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".ember-tmp")
        .rand_bytes(12)
        .tempfile_in(dir)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot write {} ({}); choose an output path in a writable directory (checked {})",
                path.display(),
                plain_io(&e),
                dir.display()
            )
        })
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The process's umask, read without changing it (umask(2) would change
/// it for every thread for a moment); 022 if the kernel does not say.
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let v = s.lines().find_map(|l| l.strip_prefix("Umask:"))?;
            u32::from_str_radix(v.trim(), 8).ok()
        })
        .unwrap_or(0o022)
        & 0o777
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

/// Fails early, before sampling, if `path` cannot be written: it is not a
/// directory, and a file can be created beside it (the same way
/// [`write_file`] will: an unpredictable name, never following a link; it is
/// removed at once). Nothing at `path` itself is opened or changed.
pub fn check_writable(path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!(
            "the output path {} is a directory; give a file name such as {}/flamegraph.svg",
            path.display(),
            path.display()
        );
    }
    temp_in(path).map(drop)
}

/// An io error without the "(os error N)" noise.
pub fn plain_io(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_lowercase(),
        None => s,
    }
}
