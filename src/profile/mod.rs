//! profile: one symbolized profile, the common input of every exporter.
//!
//! Tables are interned the way pprof wants them (mappings, functions,
//! locations with inline lines innermost first), so the pprof encoder is a
//! straight copy and the folded/SVG writers walk the same data.

mod build;
pub mod merge;
pub mod pprof;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use build::{build, build_entries, prepare, BuildOptions};

/// What a location is, for display and for telling kernel frames apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Native user code.
    User,
    /// Kernel code.
    Kernel,
    /// JIT-compiled code named by a perf map.
    Jit,
    /// A marker for a stack that could not be recorded whole.
    Lost,
}

/// A memory mapping (pprof `Mapping`).
#[derive(Debug, Clone)]
pub struct Mapping {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub limit: u64,
    /// File offset of `start`.
    pub offset: u64,
    /// Path, or `[kernel.kallsyms]`, `[vdso]`...
    pub file: Arc<str>,
    /// Hex build ID, or empty.
    pub build_id: String,
    /// Some location here has a function name.
    pub has_functions: bool,
    /// Some location here has a file name.
    pub has_filenames: bool,
    /// Some location here has a line number.
    pub has_line_numbers: bool,
    /// Some location here has inline frames.
    pub has_inline_frames: bool,
}

/// A function (pprof `Function`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Function {
    /// Demangled name.
    pub name: Arc<str>,
    /// Mangled name.
    pub system_name: Arc<str>,
    /// Source file, or empty.
    pub filename: Arc<str>,
}

/// One function frame of a location.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    /// Index into `Profile::functions`.
    pub function: u32,
    /// Source line, 0 when unknown.
    pub line: u32,
}

/// A code address (pprof `Location`).
#[derive(Debug, Clone)]
pub struct Location {
    /// Index into `Profile::mappings`.
    pub mapping: Option<u32>,
    /// Virtual address in the process (kernel address for kernel frames).
    pub address: u64,
    /// Function frames, innermost first; empty when unsymbolized.
    pub lines: Vec<Line>,
    /// Kind of frame.
    pub kind: FrameKind,
}

/// One sample bucket.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Locations, leaf first.
    pub locations: Vec<u32>,
    /// Samples counted.
    pub count: u64,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Process name.
    pub comm: Arc<str>,
    /// Thread name.
    pub thread_name: Arc<str>,
}

/// A symbolized CPU profile.
#[derive(Debug, Clone)]
pub struct Profile {
    /// When sampling started.
    pub start: SystemTime,
    /// How long sampling ran.
    pub duration: Duration,
    /// Samples per second per CPU.
    pub frequency: u64,
    /// What was profiled, for titles.
    pub target: String,
    /// Labels of the target (agent windows); stored as pprof comments.
    pub labels: std::collections::BTreeMap<String, String>,
    /// Mappings.
    pub mappings: Vec<Mapping>,
    /// Functions.
    pub functions: Vec<Function>,
    /// Locations.
    pub locations: Vec<Location>,
    /// Samples.
    pub samples: Vec<Sample>,
}

impl Profile {
    /// Nanoseconds of CPU one sample stands for.
    pub fn period_ns(&self) -> u64 {
        1_000_000_000 / self.frequency.max(1)
    }

    /// Total samples.
    pub fn total(&self) -> u64 {
        self.samples
            .iter()
            .fold(0u64, |t, s| t.saturating_add(s.count))
    }

    /// Display name of a location's frame `i` (0 = innermost).
    pub fn frame_name(&self, loc: &Location, line: Option<&Line>) -> String {
        if let Some(l) = line {
            return self.functions[l.function as usize].name.to_string();
        }
        match loc.mapping.map(|m| &self.mappings[m as usize]) {
            Some(m) if loc.kind == FrameKind::User => {
                let base = m.file.rsplit('/').next().unwrap_or(&m.file);
                // Wrapping: a merged profile's addresses come from files.
                format!(
                    "{base}+0x{:x}",
                    loc.address.wrapping_sub(m.start).wrapping_add(m.offset)
                )
            }
            _ => "[unknown]".to_string(),
        }
    }

    /// Functions by self samples (leaf frame), highest first.
    pub fn top_self(&self, n: usize) -> Vec<(String, u64)> {
        let mut by: std::collections::HashMap<String, u64> = Default::default();
        for s in &self.samples {
            if let Some(&leaf) = s.locations.first() {
                let loc = &self.locations[leaf as usize];
                let n = by
                    .entry(self.frame_name(loc, loc.lines.first()))
                    .or_default();
                *n = n.saturating_add(s.count);
            }
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}
