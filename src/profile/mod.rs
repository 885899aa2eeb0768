//! profile: one symbolized profile, the common input of every exporter.
//!
//! Tables are interned the way pprof wants them (mappings, functions,
//! locations with inline lines innermost first), so the pprof encoder is a
//! straight copy and the folded/SVG writers walk the same data. Every table
//! is filled through one interner (`intern.rs`): by the [`Builder`] (fresh
//! samples), the [`merge::Merger`] (stored windows) and [`pprof::split`]
//! (parts of one profile).
//!
//! Every location carries its [`FrameKind`]. The kinds other than plain user
//! code live in pseudo-mappings the builder creates ([`FrameKind::mapping_file`]),
//! which is how a kind survives a pprof round trip: the decoder derives it
//! from the mapping, in one place ([`pprof::decode`]).
#![warn(missing_docs)]

mod build;
mod intern;
pub mod merge;
pub mod pprof;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

pub use build::{build, build_entries, prepare, BuildOptions, Builder, Frame};

/// What a location is, for display and for telling kernel frames apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// Native user code, or anonymous code no perf map names.
    User,
    /// Kernel code.
    Kernel,
    /// JIT-compiled code named by a perf map.
    Jit,
    /// A Python function (a CPython frame: code object and line).
    Python,
    /// Not code: a marker for a stack that could not be recorded whole.
    Marker(Marker),
}

/// Why a stack is not whole, for [`FrameKind::Marker`] locations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Marker {
    /// The kernel stack could not be stored.
    LostKernel,
    /// The user stack could not be read or stored.
    LostUser,
    /// The user stack walk stopped before the outermost frame.
    Truncated,
}

impl FrameKind {
    /// Every kind, for tables over kinds.
    pub const ALL: [FrameKind; 7] = [
        FrameKind::User,
        FrameKind::Kernel,
        FrameKind::Jit,
        FrameKind::Python,
        FrameKind::Marker(Marker::LostKernel),
        FrameKind::Marker(Marker::LostUser),
        FrameKind::Marker(Marker::Truncated),
    ];

    /// The file name of the pseudo-mapping holding every location of this
    /// kind, or `None` for user code (which lives in the process's own
    /// mappings). No mapping of `/proc/PID/maps` can carry these names:
    /// files there are absolute paths, and the names a process may give
    /// anonymous memory are shown as `[anon:NAME]`.
    pub const fn mapping_file(self) -> Option<&'static str> {
        match self {
            FrameKind::User => None,
            // What perf and pprof tools call the kernel.
            FrameKind::Kernel => Some("[kernel.kallsyms]"),
            FrameKind::Jit => Some("[jit]"),
            FrameKind::Python => Some("[python]"),
            FrameKind::Marker(Marker::LostKernel) => Some("[ember:lost-kernel-stack]"),
            FrameKind::Marker(Marker::LostUser) => Some("[ember:lost-user-stack]"),
            FrameKind::Marker(Marker::Truncated) => Some("[ember:truncated-stack]"),
        }
    }

    /// The kind of the locations of a mapping named `file`: the inverse of
    /// [`FrameKind::mapping_file`], [`FrameKind::User`] for any other name.
    pub fn of_mapping_file(file: &str) -> FrameKind {
        FrameKind::ALL
            .into_iter()
            .find(|k| k.mapping_file() == Some(file))
            .unwrap_or(FrameKind::User)
    }

    /// True for markers, which stand for missing frames rather than code.
    pub fn is_marker(self) -> bool {
        matches!(self, FrameKind::Marker(_))
    }
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
    /// Path, `[vdso]`..., or the pseudo-file of a kind
    /// ([`FrameKind::mapping_file`]).
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
    /// Kind of frame; agrees with the mapping: a kind with a pseudo-mapping
    /// ([`FrameKind::mapping_file`]) is in that mapping, user code is not.
    pub kind: FrameKind,
}

/// One sample bucket.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Locations, leaf first.
    pub locations: Vec<u32>,
    /// Samples counted.
    pub count: u64,
    /// Nanoseconds spent off CPU (waiting) in this stack; 0 in CPU-only
    /// profiles.
    pub off_cpu: u64,
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
    /// Off-CPU time was recorded: the profile carries the `off_cpu`
    /// sample type.
    pub off_cpu: bool,
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

    /// Total off-CPU nanoseconds.
    pub fn off_cpu_total(&self) -> u64 {
        self.samples
            .iter()
            .fold(0u64, |t, s| t.saturating_add(s.off_cpu))
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

    /// The CPU part of a profile with off-CPU time: its samples with CPU
    /// samples, and the CPU types only.
    pub fn cpu_part(&self) -> Profile {
        let mut p = self.clone();
        p.off_cpu = false;
        p.samples.retain(|s| s.count > 0);
        for s in &mut p.samples {
            s.off_cpu = 0;
        }
        p
    }

    /// The off-CPU part: its samples with off-CPU time (their CPU counts
    /// zeroed).
    pub fn off_cpu_part(&self) -> Profile {
        let mut p = self.clone();
        p.samples.retain(|s| s.off_cpu > 0);
        for s in &mut p.samples {
            s.count = 0;
        }
        p
    }

    /// Off-CPU time by the kernel function threads waited in (the first
    /// kernel frame, from the leaf, that is not the scheduler's own:
    /// `do_nanosleep`, `futex_wait`, `anon_pipe_read`...; `[preempted]` when
    /// the thread was taken off the CPU on its way back to user space),
    /// largest first.
    pub fn top_waits(&self, n: usize) -> Vec<(String, u64)> {
        let mut by: std::collections::HashMap<String, u64> = Default::default();
        for s in self.samples.iter().filter(|s| s.off_cpu > 0) {
            let mut name = None;
            for &l in &s.locations {
                let loc = &self.locations[l as usize];
                if loc.kind != FrameKind::Kernel {
                    continue;
                }
                let f = self.frame_name(loc, loc.lines.last());
                if f.contains("schedule") || f.contains("_resched") {
                    continue;
                }
                name = Some(if f.contains("exit_to_user_mode") {
                    "[preempted]".to_string()
                } else {
                    f
                });
                break;
            }
            let n = by
                .entry(name.unwrap_or_else(|| "[unknown]".into()))
                .or_default();
            *n = n.saturating_add(s.off_cpu);
        }
        let mut v: Vec<_> = by.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
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
