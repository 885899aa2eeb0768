//! python: CPython frames in every stack.
//!
//! A CPython process runs its program in an interpreter loop
//! (`_PyEval_EvalFrameDefault`), so native stacks show towers of that one
//! function and nothing of the program. ember finds CPython processes
//! ([`Tracker`]), tells the BPF sampler where each one's interpreters are
//! and how its version lays out threads and frames ([`Layout`]); the
//! sampler then walks the Python frames of the sampled thread next to its
//! native stack, recording a (code object, instruction) pair per frame.
//! Userspace names code objects by reading them from the process
//! ([`code::Names`]) and the profile builder puts each run of Python frames
//! in place of the native eval-loop frame that ran it.
//!
//! Supported: CPython 3.8 to 3.13, executables and `libpython3.X.so`,
//! stripped or not (the symbols used are in `.dynsym`). Each version's
//! offsets were read from its own headers (`offsetof` against
//! `Include/internal`); from 3.13 on the interpreter publishes its offsets
//! in `_PyRuntime.debug_offsets`, which ember reads and prefers.

pub mod code;

use std::collections::HashMap;
use std::fs::File;
use std::ops::Range;

use object::{Object, ObjectSegment, ObjectSymbol};

use crate::process::{BinaryId, ProcessTable};
use crate::sample::abi::{self, PyLayout, PyProc};
use crate::sample::Sampler;

/// No such field (`0xffff` in `struct py_layout`).
const NONE: u16 = 0xffff;

/// How a version's line table is encoded and what its frames' instruction
/// value counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineFormat {
    /// 3.8-3.9: `co_lnotab`; `f_lasti` counts bytes.
    Lnotab,
    /// 3.10: `co_linetable` (address/line delta pairs); `f_lasti` counts
    /// code units.
    Linetable310,
    /// 3.11+: the location table; the frame holds an instruction pointer.
    Locations,
}

/// Where one CPython version keeps what ember reads: the walk's part
/// ([`PyLayout`], for BPF) and the code objects' part, for naming.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Minor version (3.X).
    pub minor: u8,
    /// Offset of `interpreters.head` in `_PyRuntime`.
    pub runtime_interp_head: u16,
    /// The BPF walk's offsets.
    pub walk: PyLayout,
    /// The code objects' offsets.
    pub code: CodeLayout,
}

/// Offsets in code and string objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeLayout {
    /// `co_name`.
    pub name: u16,
    /// `co_qualname` (3.11+).
    pub qualname: Option<u16>,
    /// `co_filename`.
    pub filename: u16,
    /// `co_firstlineno`.
    pub firstlineno: u16,
    /// `co_lnotab` or `co_linetable`.
    pub linetable: u16,
    /// `co_code_adaptive`, where instructions start (3.11+).
    pub adaptive: Option<u16>,
    /// `sizeof(PyASCIIObject)`: where a compact ASCII string's bytes are.
    pub ascii_size: u16,
    /// `sizeof(PyCompactUnicodeObject)`: where other compact strings' are.
    pub compact_size: u16,
    /// The line table's encoding.
    pub lines: LineFormat,
}

#[allow(clippy::too_many_arguments)]
const fn walk(
    interp_next: u16,
    interp_threads: u16,
    tstate_thread_id: u16,
    tstate_frame: u16,
    cframe_frame: u16,
    frame_previous: u16,
    frame_code: u16,
    frame_instr: u16,
    frame_owner: u16,
    frame_is_entry: u16,
    frame_read: u16,
    kind: u8,
) -> PyLayout {
    PyLayout {
        interp_next,
        interp_threads,
        tstate_next: 8,
        tstate_thread_id,
        tstate_frame,
        cframe_frame,
        frame_previous,
        frame_code,
        frame_instr,
        frame_owner,
        frame_is_entry,
        frame_read,
        kind,
        _pad: [0; 7],
    }
}

const FRAME_OBJECT: u8 = abi::PY_KIND_FRAME_OBJECT;
const INTERP_FRAME: u8 = abi::PY_KIND_INTERP_FRAME;

/// 3.8 and 3.9 share every offset ember reads.
const CODE_38: CodeLayout = CodeLayout {
    name: 112,
    qualname: None,
    filename: 104,
    firstlineno: 40,
    linetable: 120,
    adaptive: None,
    ascii_size: 48,
    compact_size: 72,
    lines: LineFormat::Lnotab,
};

/// The layouts ember knows, by minor version (from each version's headers:
/// `offsetof(_PyRuntimeState, interpreters.head)` and so on).
pub const LAYOUTS: &[Layout] = &[
    Layout {
        minor: 8,
        runtime_interp_head: 32,
        walk: walk(
            0,
            8,
            176,
            24,
            NONE,
            24,
            32,
            104,
            NONE,
            NONE,
            112,
            FRAME_OBJECT,
        ),
        code: CODE_38,
    },
    Layout {
        minor: 9,
        runtime_interp_head: 32,
        walk: walk(
            0,
            8,
            176,
            24,
            NONE,
            24,
            32,
            104,
            NONE,
            NONE,
            112,
            FRAME_OBJECT,
        ),
        code: CODE_38,
    },
    Layout {
        minor: 10,
        runtime_interp_head: 32,
        walk: walk(
            0,
            8,
            176,
            24,
            NONE,
            24,
            32,
            96,
            NONE,
            NONE,
            104,
            FRAME_OBJECT,
        ),
        code: CodeLayout {
            lines: LineFormat::Linetable310,
            ..CODE_38
        },
    },
    Layout {
        minor: 11,
        runtime_interp_head: 40,
        walk: walk(0, 16, 152, 56, 8, 48, 32, 56, NONE, 68, 72, INTERP_FRAME),
        code: CodeLayout {
            name: 120,
            qualname: Some(128),
            filename: 112,
            firstlineno: 72,
            linetable: 136,
            adaptive: Some(184),
            ascii_size: 48,
            compact_size: 72,
            lines: LineFormat::Locations,
        },
    },
    Layout {
        minor: 12,
        runtime_interp_head: 40,
        walk: walk(0, 72, 136, 56, 0, 8, 0, 56, 70, NONE, 72, INTERP_FRAME),
        code: CodeLayout {
            name: 120,
            qualname: Some(128),
            filename: 112,
            firstlineno: 68,
            linetable: 136,
            adaptive: Some(192),
            ascii_size: 40,
            compact_size: 56,
            lines: LineFormat::Locations,
        },
    },
    Layout {
        minor: 13,
        runtime_interp_head: 632,
        walk: walk(
            7264,
            7344,
            152,
            72,
            NONE,
            8,
            0,
            56,
            70,
            NONE,
            72,
            INTERP_FRAME,
        ),
        code: CodeLayout {
            name: 120,
            qualname: Some(128),
            filename: 112,
            firstlineno: 68,
            linetable: 136,
            adaptive: Some(200),
            ascii_size: 40,
            compact_size: 56,
            lines: LineFormat::Locations,
        },
    },
];

/// The layout of a minor version, if ember knows it.
pub fn layout_of(minor: u8) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|l| l.minor == minor)
}

/// A CPython binary (executable or libpython): its version and the
/// addresses (ELF virtual addresses) of what ember reads.
#[derive(Debug, Clone)]
pub struct PyBinary {
    /// (major, minor, micro).
    pub version: (u8, u8, u8),
    /// `_PyRuntime`.
    pub runtime: u64,
    /// `PyCode_Type`: every code object's type.
    pub code_type: Option<u64>,
    /// `_PyEval_EvalFrameDefault`'s code.
    pub eval: Option<Range<u64>>,
    /// The layout: the table's, or the one the binary publishes (3.13+).
    pub layout: Layout,
    /// (file offset, virtual address) of each loadable segment.
    segments: Vec<(u64, u64)>,
}

impl PyBinary {
    /// The load bias of this binary in a process that maps file offset
    /// `offset` at `start`.
    pub fn bias(&self, start: u64, offset: u64) -> Option<u64> {
        let &(seg_off, seg_vaddr) = self
            .segments
            .iter()
            .rev()
            .find(|&&(o, _)| (o & !0xfff) <= offset)?;
        Some(
            start
                .wrapping_sub(offset)
                .wrapping_add(seg_off)
                .wrapping_sub(seg_vaddr),
        )
    }
}

/// Why a binary that looks like CPython is not followed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// A version ember has no layout for.
    Version(u8, u8),
    /// No `_PyRuntime` symbol.
    NoRuntime,
    /// The file could not be parsed as ELF.
    Unreadable,
    /// A free-threaded (no GIL) build, whose layout differs.
    FreeThreaded,
}

/// Whether a file name is a CPython executable or library, and which
/// version its name gives: `python3.11`, `libpython3.11.so.1.0`,
/// `python3.13d`... (`python3` alone gives none).
pub fn version_from_name(path: &str) -> Option<Option<(u8, u8)>> {
    let name = path.rsplit('/').next().unwrap_or(path);
    let rest = name
        .strip_prefix("libpython")
        .or_else(|| name.strip_prefix("python"))?;
    let mut parts = rest.splitn(2, '.');
    let major = parts.next()?;
    if major.is_empty() {
        return Some(None);
    }
    let major: u8 = major.parse().ok()?;
    let minor: String = parts
        .next()
        .unwrap_or("")
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    Some(minor.parse().ok().map(|m| (major, m)))
}

/// Bytes read from a binary for its version and debug offsets.
const MAX_DATA_READ: usize = 512;

/// Reads what ember needs of a CPython binary.
pub fn inspect(file: &File, path: &str) -> Result<PyBinary, Unsupported> {
    use object::read::ReadCache;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|_| Unsupported::Unreadable)?;
    let mut runtime = None;
    let mut code_type = None;
    let mut py_version = None;
    let mut eval = None;
    // .dynsym first: stripped builds (Debian's) keep these there.
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        let Ok(name) = sym.name() else { continue };
        match name {
            "_PyRuntime" if runtime.is_none() => runtime = Some(sym.address()),
            "PyCode_Type" if code_type.is_none() => code_type = Some(sym.address()),
            "Py_Version" if py_version.is_none() => py_version = Some(sym.address()),
            "_PyEval_EvalFrameDefault" if eval.is_none() && sym.size() > 0 => {
                eval = Some(sym.address()..sym.address() + sym.size())
            }
            _ => {}
        }
        if runtime.is_some() && code_type.is_some() && py_version.is_some() && eval.is_some() {
            break;
        }
    }
    let runtime = runtime.ok_or(Unsupported::NoRuntime)?;
    let segments: Vec<(u64, u64)> = obj
        .segments()
        .map(|s| (s.file_range().0, s.address()))
        .collect();
    let read_at = |vaddr: u64, len: usize| -> Option<Vec<u8>> {
        obj.segments()
            .find_map(|s| s.data_range(vaddr, len as u64).ok().flatten())
            .map(|d| d.to_vec())
    };
    // The version: Py_Version (3.11+), else the file's name.
    let mut version = py_version
        .and_then(|a| read_at(a, 4))
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .map(|v| ((v >> 24) as u8, (v >> 16) as u8, (v >> 8) as u8));
    if version.is_none() {
        if let Some(Some((major, minor))) = version_from_name(path) {
            version = Some((major, minor, 0));
        }
    }
    let version = version.ok_or(Unsupported::Version(0, 0))?;
    if version.0 != 3 {
        return Err(Unsupported::Version(version.0, version.1));
    }
    let mut layout = *layout_of(version.1).ok_or(Unsupported::Version(version.0, version.1))?;
    // From 3.13 on, the interpreter says where its fields are.
    if version.1 >= 13 {
        if let Some(raw) = read_at(runtime, MAX_DATA_READ.min(352)) {
            match debug_offsets(&raw, &layout) {
                Ok(Some(l)) => layout = l,
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(PyBinary {
        version,
        runtime,
        code_type,
        eval,
        layout,
        segments,
    })
}

/// The layout `_PyRuntime.debug_offsets` describes (3.13's structure:
/// cookie, version, free_threaded, then sections of u64 offsets), over the
/// table's `base`; None when the bytes do not start with the cookie.
fn debug_offsets(raw: &[u8], base: &Layout) -> Result<Option<Layout>, Unsupported> {
    if raw.len() < 352 || &raw[..8] != b"xdebugpy" {
        return Ok(None);
    }
    let u = |i: usize| u64::from_le_bytes(raw[i..i + 8].try_into().expect("8 bytes"));
    if u(16) != 0 {
        return Err(Unsupported::FreeThreaded);
    }
    let small = |i: usize| u16::try_from(u(i)).ok();
    let fields = (|| {
        let mut l = *base;
        l.runtime_interp_head = small(40)?;
        l.walk.interp_next = small(64)?;
        l.walk.interp_threads = small(72)?;
        l.walk.tstate_next = small(168)?;
        l.walk.tstate_frame = small(184)?;
        l.walk.tstate_thread_id = small(192)?;
        l.walk.frame_previous = small(232)?;
        l.walk.frame_code = small(240)?;
        l.walk.frame_instr = small(248)?;
        l.walk.frame_owner = small(264)?;
        l.code.filename = small(280)?;
        l.code.name = small(288)?;
        l.code.qualname = Some(small(296)?);
        l.code.linetable = small(304)?;
        l.code.firstlineno = small(312)?;
        l.code.adaptive = Some(small(344)?);
        // Pointers are 8 bytes; the owner field one.
        let need = [l.walk.frame_previous, l.walk.frame_code, l.walk.frame_instr]
            .into_iter()
            .max()?
            .checked_add(8)?
            .max(l.walk.frame_owner.checked_add(1)?);
        (need <= abi::PY_FRAME_READ).then_some(())?;
        l.walk.frame_read = need.max(l.walk.frame_read).min(abi::PY_FRAME_READ);
        Some(l)
    })();
    Ok(Some(fields.ok_or(Unsupported::Unreadable)?))
}

/// One CPython process: its binary's facts placed at the process's
/// addresses.
#[derive(Debug, Clone)]
pub struct PyProcess {
    /// The version, (major, minor, micro).
    pub version: (u8, u8, u8),
    /// Address of `_PyRuntime`.
    pub runtime: u64,
    /// Address of `PyCode_Type`.
    pub code_type: Option<u64>,
    /// Where `_PyEval_EvalFrameDefault` is, in the process.
    pub eval: Option<Range<u64>>,
    /// The code objects' layout.
    pub code: CodeLayout,
}

/// Counts of what the tracker found, for the summary and `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TrackerStats {
    /// Python processes followed (registered with the sampler) so far.
    pub processes: u64,
    /// Python binaries found with a version ember has no layout for.
    pub unsupported_version: u64,
    /// Python binaries without `_PyRuntime`, unreadable, or free-threaded.
    pub unusable_binary: u64,
    /// Registrations the sampler refused (its map full).
    pub register_failed: u64,
}

/// Finds CPython processes and registers them with the sampler.
pub struct Tracker {
    /// Per binary: what it is (None: not CPython or not usable).
    binaries: HashMap<BinaryId, Option<PyBinary>>,
    /// Processes registered, and the binary they were registered for.
    registered: HashMap<u32, BinaryId>,
    /// Processes seen but not registered: looked at again on every
    /// [`recheck`](Self::recheck) for a while, as a dynamically linked
    /// python maps libpython only after its first instructions ran.
    pending: HashMap<u32, std::time::Instant>,
    /// Processes counted in `stats.processes` and not exited: one that
    /// execs (python into python) is counted once.
    counted: std::collections::HashSet<u32>,
    stats: TrackerStats,
}

/// How long a process that did not look like CPython is looked at again.
const PENDING_FOR: std::time::Duration = std::time::Duration::from_secs(3);
/// Processes looked at again at most.
const MAX_PENDING: usize = 4096;

impl Tracker {
    /// Describes every known layout to the sampler.
    pub fn new(sampler: &Sampler) -> anyhow::Result<Tracker> {
        for (i, l) in LAYOUTS.iter().enumerate() {
            sampler.set_python_layout(i as u32, &l.walk)?;
        }
        Ok(Tracker {
            binaries: HashMap::new(),
            registered: HashMap::new(),
            pending: HashMap::new(),
            counted: Default::default(),
            stats: TrackerStats::default(),
        })
    }

    /// Looks at a process's mappings for a CPython binary and, when it has
    /// one, registers the process with the sampler and with `names`. Cheap
    /// when nothing changed: each binary is inspected once.
    pub fn check(
        &mut self,
        sampler: &Sampler,
        procs: &mut ProcessTable,
        names: &mut code::Names,
        pid: u32,
    ) {
        let Some(p) = procs.process(pid) else { return };
        // Mappings of CPython binaries: the executable, libpython, or both
        // (then the library holds the runtime).
        // Not an old image's: a python that forked and exec'd another
        // program leaves its mappings in the child's entry (to name samples
        // taken inside execve), and that program is not Python.
        let mut candidates: Vec<(BinaryId, u64, u64, std::sync::Arc<str>)> = Vec::new();
        for m in p.current() {
            let Some(id) = procs.binary_of(m) else {
                continue;
            };
            if version_from_name(&m.path).is_some() && !candidates.iter().any(|c| c.0 == id) {
                candidates.push((id, m.start, m.offset, m.path.clone()));
            }
        }
        let mut found = None;
        for (id, start, offset, path) in candidates {
            if self.registered.get(&pid) == Some(&id) {
                return;
            }
            if !self.binaries.contains_key(&id) {
                let info = match procs.open(id) {
                    Some(f) => inspect(f, &path),
                    None => Err(Unsupported::Unreadable),
                };
                match &info {
                    Err(Unsupported::Version(..)) => self.stats.unsupported_version += 1,
                    // An executable that links libpython has no runtime of
                    // its own: not a failure.
                    Err(Unsupported::NoRuntime) => {}
                    Err(_) => self.stats.unusable_binary += 1,
                    Ok(_) => {}
                }
                self.binaries.insert(id, info.ok());
            }
            if let Some(Some(_)) = self.binaries.get(&id) {
                found = Some((id, start, offset));
                break;
            }
        }
        let Some((id, start, offset)) = found else {
            if !self.registered.contains_key(&pid) && self.pending.len() < MAX_PENDING {
                self.pending
                    .entry(pid)
                    .or_insert_with(std::time::Instant::now);
            }
            return;
        };
        self.pending.remove(&pid);
        let Some(Some(bin)) = self.binaries.get(&id) else {
            return;
        };
        let Some(bias) = bin.bias(start, offset) else {
            return;
        };
        let Some(index) = LAYOUTS.iter().position(|l| l.minor == bin.layout.minor) else {
            return;
        };
        // A layout from the binary's own debug offsets takes a slot of its
        // own after the table's.
        let index = if layout_eq(&LAYOUTS[index], &bin.layout) {
            index as u32
        } else {
            let slot = (LAYOUTS.len() + self.custom_slot(id)) as u32;
            if slot >= abi::PY_LAYOUTS || sampler.set_python_layout(slot, &bin.layout.walk).is_err()
            {
                return;
            }
            slot
        };
        let proc = PyProc {
            interp_head: bias.wrapping_add(bin.runtime) + bin.layout.runtime_interp_head as u64,
            layout: index,
            _pad: 0,
        };
        if sampler.set_python_process(pid, Some(&proc)).is_err() {
            self.stats.register_failed += 1;
            return;
        }
        names.add_process(
            pid,
            PyProcess {
                version: bin.version,
                runtime: bias.wrapping_add(bin.runtime),
                code_type: bin.code_type.map(|a| bias.wrapping_add(a)),
                eval: bin
                    .eval
                    .as_ref()
                    .map(|r| bias.wrapping_add(r.start)..bias.wrapping_add(r.end)),
                code: bin.layout.code,
            },
        );
        self.registered.insert(pid, id);
        if self.counted.insert(pid) {
            self.stats.processes += 1;
        }
    }

    /// A process exec'd or exited: whatever it was is forgotten, in the
    /// sampler too. (The sampler drops a process that execs or exits on its
    /// own, but a registration made after that, from mappings read before
    /// it, would outlive it: a python that forks and execs another program
    /// must not leave that program walked as Python.)
    pub fn forget(&mut self, sampler: &Sampler, pid: u32, exited: bool) {
        if self.registered.remove(&pid).is_some() {
            let _ = sampler.set_python_process(pid, None);
        }
        self.pending.remove(&pid);
        if exited {
            self.counted.remove(&pid);
        }
    }

    /// Looks again at the processes seen lately that were not CPython yet.
    pub fn recheck(
        &mut self,
        sampler: &Sampler,
        procs: &mut ProcessTable,
        names: &mut code::Names,
    ) {
        if self.pending.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        self.pending
            .retain(|_, since| now.duration_since(*since) < PENDING_FOR);
        let pids: Vec<u32> = self.pending.keys().copied().collect();
        for pid in pids {
            self.check(sampler, procs, names, pid);
        }
    }

    /// A stable small index for a binary's own layout.
    fn custom_slot(&self, id: BinaryId) -> usize {
        let mut ids: Vec<BinaryId> = self
            .binaries
            .iter()
            .filter(|(_, b)| {
                b.as_ref()
                    .is_some_and(|b| !LAYOUTS.iter().any(|l| layout_eq(l, &b.layout)))
            })
            .map(|(&i, _)| i)
            .collect();
        ids.sort_unstable();
        ids.iter().position(|&i| i == id).unwrap_or(usize::MAX / 2)
    }

    /// What it found so far.
    pub fn stats(&self) -> TrackerStats {
        self.stats
    }
}

fn layout_eq(a: &Layout, b: &Layout) -> bool {
    a.minor == b.minor
        && a.runtime_interp_head == b.runtime_interp_head
        && abi::bytes_of(&a.walk) == abi::bytes_of(&b.walk)
        && a.code == b.code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_versions() {
        assert_eq!(
            version_from_name("/usr/bin/python3.11"),
            Some(Some((3, 11)))
        );
        assert_eq!(
            version_from_name("/x/lib/libpython3.8.so.1.0"),
            Some(Some((3, 8)))
        );
        assert_eq!(version_from_name("/usr/bin/python3"), Some(None));
        assert_eq!(version_from_name("/usr/lib/libc.so.6"), None);
        assert_eq!(version_from_name("/usr/bin/pythonista"), None);
        assert_eq!(version_from_name("python3.13d"), Some(Some((3, 13))));
    }

    #[test]
    fn every_layout_reads_within_the_frame_buffer() {
        for l in LAYOUTS {
            let w = &l.walk;
            assert!(w.frame_read <= abi::PY_FRAME_READ, "3.{}", l.minor);
            for off in [w.frame_previous, w.frame_code, w.frame_instr] {
                assert!(off + 8 <= w.frame_read, "3.{}: {off}", l.minor);
            }
            for off in [w.frame_owner, w.frame_is_entry] {
                assert!(off == NONE || off < w.frame_read, "3.{}", l.minor);
            }
            assert!((l.minor >= 11) == (w.kind == INTERP_FRAME));
        }
    }
}
