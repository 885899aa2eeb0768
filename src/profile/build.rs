//! Turns drained counts into a symbolized [`Profile`]: [`Builder`]
//! assembles a profile from resolved frames (it needs no symbolizer), and
//! [`build`] / [`build_entries`] feed it from a [`Symbolizer`].

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::intern::{FastHash, Interner};
use super::{FrameKind, Line, Marker, Profile};
use crate::aggregate::{Aggregate, StackTable};
use crate::process::{BinaryId, ProcessTable};
use crate::sample::abi::PY_FRAME_ENTRY;
use crate::sample::{
    SampleKey, SAMPLE_KERNEL_LOST, SAMPLE_MAP_FULL, SAMPLE_TRUNCATED, SAMPLE_USER_LOST,
};
use crate::symbolize::{SymFrame, Symbolizer, Unnamed};

/// Profile metadata.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// When sampling started.
    pub start: SystemTime,
    /// How long it ran.
    pub duration: Duration,
    /// Samples per second per CPU.
    pub frequency: u64,
    /// What was profiled.
    pub target: String,
    /// Off-CPU time was recorded (the profile carries its sample type even
    /// when no wait was seen).
    pub off_cpu: bool,
}

/// Where kernel addresses start (the kernel mapping's start).
const KERNEL_START: u64 = 0xffff_8000_0000_0000;

/// Symbolizes every sample of `agg`.
pub fn build(
    agg: &Aggregate,
    procs: &mut ProcessTable,
    sym: &mut Symbolizer,
    opts: &BuildOptions,
) -> Profile {
    let entries: Vec<(&SampleKey, u64)> = agg.counts.iter().map(|(k, &n)| (k, n)).collect();
    let off: Vec<(&SampleKey, u64)> = agg.off_cpu.iter().map(|(k, &n)| (k, n)).collect();
    prepare(procs, sym, entries.iter().chain(&off).map(|e| e.0.tgid));
    let mut p = build_entries(&entries, &off, &agg.stacks, procs, sym, opts);
    p.off_cpu |= opts.off_cpu;
    p
}

/// Refreshes what symbolization needs for these processes: libraries loaded
/// since each was captured, and perf maps, which JITs append to. Call once
/// before one or more [`build_entries`].
pub fn prepare(procs: &mut ProcessTable, sym: &mut Symbolizer, pids: impl Iterator<Item = u32>) {
    sym.reset_perf_maps();
    let mut pids: Vec<u32> = pids.collect();
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        if pid != 0 {
            procs.refresh(pid);
        }
    }
}

/// Symbolizes a subset of an aggregate's samples (one target's): CPU
/// samples (`entries`, counts) and off-CPU time (`off`, nanoseconds), after
/// [`prepare`].
pub fn build_entries(
    entries: &[(&SampleKey, u64)],
    off: &[(&SampleKey, u64)],
    stacks: &StackTable,
    procs: &mut ProcessTable,
    sym: &mut Symbolizer,
    opts: &BuildOptions,
) -> Profile {
    // Pass 1: collect what needs symbolizing, per binary and for the kernel.
    let mut per_bin: HashMap<BinaryId, Vec<u64>> = HashMap::new();
    // Per process: code outside every file mapping, and whether it lies in
    // an anonymous mapping (a JIT's) or in none ember knows.
    let mut jit: HashMap<u32, Vec<(u64, bool)>> = HashMap::new();
    let mut kernel_addrs = Vec::new();
    for (key, _) in entries.iter().chain(off) {
        if let Some(frames) = stacks.get(key.user_stack) {
            let proc = procs.process(key.tgid);
            for (i, &ip) in frames.iter().enumerate() {
                let a = adjust(ip, i);
                match proc
                    .and_then(|p| p.find(a))
                    .map(|m| (m, procs.binary_of(m)))
                {
                    Some((m, Some(bin))) => per_bin.entry(bin).or_default().push(m.file_offset(a)),
                    // Anonymous or unmapped code: a JIT's, named by its perf map.
                    found => jit.entry(key.tgid).or_default().push((a, found.is_some())),
                }
            }
        }
        if let Some(frames) = stacks.get(key.kernel_stack) {
            kernel_addrs.extend(frames.iter().enumerate().map(|(i, &ip)| adjust(ip, i)));
        }
        if let Some(words) = stacks.get(key.py_stack) {
            // Read at drain time; what is missing is read now if the
            // process still lives (cached either way).
            sym.python.resolve(key.tgid, words);
        }
    }
    let mut unnamed = Unnamed::default();
    for (bin, mut offsets) in per_bin {
        sym.symbolize_binary(procs, bin, &mut offsets.clone());
        offsets.sort_unstable();
        offsets.dedup();
        let readable = procs.binary(bin).readable();
        for o in offsets {
            if sym.binary_frames(bin, o).is_empty() {
                *if readable {
                    &mut unnamed.no_symbols
                } else {
                    &mut unnamed.unreadable
                } += 1;
            }
        }
    }
    for (pid, mut found) in jit {
        found.sort_unstable();
        found.dedup();
        sym.symbolize_jit(procs, pid, &mut found.iter().map(|f| f.0).collect());
        for (a, mapped) in found {
            if sym.jit_name(pid, a).is_none() {
                *if mapped {
                    &mut unnamed.no_perf_map
                } else {
                    &mut unnamed.unmapped
                } += 1;
            }
        }
    }
    sym.count_unnamed(&unnamed);
    sym.symbolize_kernel(&mut kernel_addrs);

    // Pass 2: intern locations and samples.
    let mut r = Resolver {
        procs: &*procs,
        sym: &*sym,
        b: Builder::new(),
        user_seen: HashMap::default(),
        kernel_seen: HashMap::default(),
        py_seen: HashMap::default(),
        py_unnamed: Arc::from("[unknown python frame]"),
    };
    if opts.off_cpu {
        r.b.set_off_cpu();
    }
    let mut locs = Vec::new();
    let cpu = entries.iter().map(|&(k, n)| (k, n, false));
    for (key, count, is_off) in cpu.chain(off.iter().map(|&(k, n)| (k, n, true))) {
        locs.clear();
        if key.flags & SAMPLE_KERNEL_LOST != 0 {
            locs.push(r.b.marker(Marker::LostKernel, lost_name(true, key.flags)));
        }
        if let Some(frames) = stacks.get(key.kernel_stack) {
            for (i, &ip) in frames.iter().enumerate() {
                locs.push(r.kernel(adjust(ip, i)));
            }
        }
        if key.flags & SAMPLE_USER_LOST != 0 {
            locs.push(r.b.marker(Marker::LostUser, lost_name(false, key.flags)));
        }
        let py = stacks.get(key.py_stack).filter(|w| w.len() >= 2);
        match (stacks.get(key.user_stack), py) {
            (native, Some(words)) => {
                r.merge_python(key.tgid, native.unwrap_or(&[]), words, &mut locs)
            }
            (Some(frames), None) => {
                for (i, &ip) in frames.iter().enumerate() {
                    locs.push(r.user(key.tgid, adjust(ip, i)));
                }
            }
            (None, None) => {}
        }
        // The walk stopped before the outermost frame: say so at the root
        // rather than pass the partial stack off as complete.
        if key.flags & SAMPLE_TRUNCATED != 0 {
            locs.push(r.b.marker(Marker::Truncated, "[truncated]"));
        }
        let (comm, thread) = (comm_name(&key.comm), comm_name(&key.thread_comm));
        if is_off {
            r.b.off_cpu(&locs, count, key.tgid, key.tid, &comm, &thread);
        } else {
            r.b.sample(&locs, count, key.tgid, key.tid, &comm, &thread);
        }
    }
    r.b.finish(opts)
}

/// Return addresses point after the call: step back into the call
/// instruction so lines and inline frames are those of the call site.
fn adjust(ip: u64, index: usize) -> u64 {
    if index == 0 {
        ip
    } else {
        ip.saturating_sub(1)
    }
}

/// The function name of a lost-stack marker.
fn lost_name(kernel: bool, flags: u32) -> &'static str {
    match (kernel, flags & SAMPLE_MAP_FULL != 0) {
        (true, true) => "[lost kernel stack: stack map full]",
        (true, false) => "[lost kernel stack: not readable]",
        (false, true) => "[lost user stack: stack map full]",
        (false, false) => "[lost user stack: not readable]",
    }
}

/// A NUL-padded task name as text (any process may name itself anything:
/// control characters are replaced).
fn comm_name(raw: &[u8; 16]) -> std::borrow::Cow<'_, str> {
    let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
    match String::from_utf8_lossy(&raw[..end]) {
        std::borrow::Cow::Borrowed(s) => crate::util::clean_name(s),
        std::borrow::Cow::Owned(s) => {
            std::borrow::Cow::Owned(crate::util::clean_name(&s).into_owned())
        }
    }
}

/// Feeds a [`Builder`] from a symbolizer, symbolizing each (process,
/// address) once: most frames recur across samples (every caller above the
/// leaf), and a hit here skips the mapping lookup and the interning.
struct Resolver<'s> {
    procs: &'s ProcessTable,
    sym: &'s Symbolizer,
    b: Builder,
    user_seen: HashMap<(u32, u64), u32, FastHash>,
    kernel_seen: HashMap<u64, u32, FastHash>,
    /// Python locations by (process, code object, line).
    py_seen: HashMap<(u32, u64, u32), u32, FastHash>,
    py_unnamed: Arc<str>,
}

impl Resolver<'_> {
    /// The locations of a sample with Python frames, leaf first: each run
    /// of Python frames that one native call of the eval loop ran
    /// (`words`: pairs of code object and instruction | flags, leaf first;
    /// a run ends at a frame flagged [`PY_FRAME_ENTRY`]) takes the place
    /// of that call's native frame, matched from the leaf. Runs left over
    /// (the native stack was cut short) go at the root. `-X perf`
    /// trampolines (`py::` perf-map entries) are dropped: the Python
    /// frames say the same.
    fn merge_python(&mut self, pid: u32, native: &[u64], words: &[u64], locs: &mut Vec<u32>) {
        let sym = self.sym;
        let eval = sym.python.process(pid).and_then(|p| p.eval.clone());
        let pairs = words.len() / 2;
        let mut next = 0usize; // the next Python frame to place
        let run_end = |from: usize| {
            (from..pairs)
                .find(|&i| (words[2 * i + 1] >> 32) as u32 & PY_FRAME_ENTRY != 0)
                .map_or(pairs, |i| i + 1)
        };
        let Some(eval) = eval else {
            // No eval loop to place them in: Python frames above the native
            // ones.
            for i in 0..pairs {
                locs.push(self.python(pid, words[2 * i], words[2 * i + 1]));
            }
            for (i, &ip) in native.iter().enumerate() {
                locs.push(self.user(pid, adjust(ip, i)));
            }
            return;
        };
        for (i, &ip) in native.iter().enumerate() {
            let a = adjust(ip, i);
            if eval.contains(&a) && next < pairs {
                let end = run_end(next);
                for k in next..end {
                    locs.push(self.python(pid, words[2 * k], words[2 * k + 1]));
                }
                next = end;
                continue;
            }
            if sym.jit_name(pid, a).is_some_and(|n| n.starts_with("py::")) {
                continue;
            }
            locs.push(self.user(pid, a));
        }
        for k in next..pairs {
            locs.push(self.python(pid, words[2 * k], words[2 * k + 1]));
        }
    }

    fn python(&mut self, pid: u32, code: u64, instr_flags: u64) -> u32 {
        let info = self.sym.python.code(pid, code);
        let line = info.map_or(0, |c| c.line(instr_flags as u32));
        if let Some(&id) = self.py_seen.get(&(pid, code, line)) {
            return id;
        }
        let id = match info {
            Some(c) => self.b.python(
                code,
                Some(Frame {
                    name: &c.name,
                    system_name: &c.name,
                    file: Some(&c.file),
                    line,
                }),
            ),
            None => {
                let name = self.py_unnamed.clone();
                self.b.python(
                    code,
                    Some(Frame {
                        name: &name,
                        system_name: &name,
                        file: None,
                        line: 0,
                    }),
                )
            }
        };
        self.py_seen.insert((pid, code, line), id);
        id
    }

    fn kernel(&mut self, addr: u64) -> u32 {
        if let Some(&id) = self.kernel_seen.get(&addr) {
            return id;
        }
        let frames = self.sym.kernel_frames(addr);
        let id = self.b.kernel(addr, frames.iter().map(Frame::from));
        self.kernel_seen.insert(addr, id);
        id
    }

    fn user(&mut self, pid: u32, addr: u64) -> u32 {
        if let Some(&id) = self.user_seen.get(&(pid, addr)) {
            return id;
        }
        let (procs, sym, b) = (self.procs, self.sym, &mut self.b);
        let m = procs
            .process(pid)
            .and_then(|p| p.find_index(addr).map(|i| &p.mappings[i]));
        let id = match m.map(|m| (m, procs.binary_of(m))) {
            // Code of a file.
            Some((m, Some(bin))) => {
                let build_id = procs.binary(bin).build_id.as_deref().unwrap_or("");
                let mapping = b.mapping(m.start, m.end, m.offset, &m.path, build_id);
                let frames = sym.binary_frames(bin, m.file_offset(addr));
                b.user(Some(mapping), addr, frames.iter().map(Frame::from))
            }
            // Anonymous or unmapped code: a JIT's, named by its perf map.
            _ => match sym.jit_name(pid, addr) {
                Some(name) => b.jit(m.map(|m| m.start..m.end), addr, &name),
                // Anonymous code no perf map names is shown like
                // unsymbolized native code.
                None => {
                    let mapping = m.map(|m| b.mapping(m.start, m.end, m.offset, &m.path, ""));
                    b.user(mapping, addr, [])
                }
            },
        };
        self.user_seen.insert((pid, addr), id);
        id
    }
}

/// One function frame of a resolved code address, as a symbolizer names it.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Demangled name.
    pub name: &'a Arc<str>,
    /// Name as in the symbol table (mangled).
    pub system_name: &'a Arc<str>,
    /// Source file, when known.
    pub file: Option<&'a Arc<str>>,
    /// Source line, 0 when unknown.
    pub line: u32,
}

impl<'a> From<&'a SymFrame> for Frame<'a> {
    fn from(f: &'a SymFrame) -> Frame<'a> {
        Frame {
            name: &f.name,
            system_name: &f.system_name,
            file: f.file.as_ref(),
            line: f.line,
        }
    }
}

/// Assembles a [`Profile`] from resolved code addresses and samples of
/// them, interning as it goes. It needs no symbolizer: [`build_entries`]
/// feeds it from one, tests feed it directly.
///
/// Each method returns a location id for [`Builder::sample`]; the kind of a
/// location is the method's ([`FrameKind`]), and kinds other than user code
/// go to their pseudo-mappings ([`FrameKind::mapping_file`]), which is how
/// pprof files keep them.
pub struct Builder {
    t: Interner,
    /// Filename of functions without one.
    empty: Arc<str>,
    kernel_mapping: Option<u32>,
    /// Scratch for a location's lines before it is interned.
    lines: Vec<Line>,
    has_off_cpu: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

impl Builder {
    /// An empty profile under construction.
    pub fn new() -> Builder {
        Builder {
            t: Interner::default(),
            empty: Arc::from(""),
            kernel_mapping: None,
            lines: Vec::new(),
            has_off_cpu: false,
        }
    }

    /// The id of a memory mapping of user code: file-backed (with its hex
    /// build ID, or empty) or anonymous. Its `has_*` flags are computed by
    /// [`Builder::finish`].
    pub fn mapping(
        &mut self,
        start: u64,
        limit: u64,
        offset: u64,
        file: &Arc<str>,
        build_id: &str,
    ) -> u32 {
        self.t.mapping(start, limit, offset, file, build_id)
    }

    /// The mapping of a kind's pseudo-file.
    fn pseudo_mapping(&mut self, kind: FrameKind, range: Range<u64>) -> u32 {
        let file = self
            .t
            .string(kind.mapping_file().expect("a kind with a pseudo-mapping"));
        self.t.mapping(range.start, range.end, 0, &file, "")
    }

    fn location<'f>(
        &mut self,
        kind: FrameKind,
        mapping: Option<u32>,
        address: u64,
        frames: impl IntoIterator<Item = Frame<'f>>,
    ) -> u32 {
        let mut lines = std::mem::take(&mut self.lines);
        lines.clear();
        for f in frames {
            let file = f.file.unwrap_or(&self.empty);
            lines.push(Line {
                function: self.t.function(f.name, f.system_name, file),
                line: f.line,
            });
        }
        let id = self.t.location(kind, mapping, address, &lines);
        self.lines = lines;
        id
    }

    /// A location of native user code at `address` in `mapping` (an id from
    /// [`Builder::mapping`], or `None` when no mapping holds the address),
    /// with its function frames innermost first; none when unsymbolized.
    pub fn user<'f>(
        &mut self,
        mapping: Option<u32>,
        address: u64,
        frames: impl IntoIterator<Item = Frame<'f>>,
    ) -> u32 {
        let mapping = mapping.filter(|&m| (m as usize) < self.t.mappings().len());
        debug_assert!(
            mapping.is_none_or(|m| {
                let file = &self.t.mappings()[m as usize].file;
                FrameKind::of_mapping_file(file) == FrameKind::User
            }),
            "user code in a pseudo-mapping"
        );
        self.location(FrameKind::User, mapping, address, frames)
    }

    /// A location of JIT-compiled code a perf map names `name`; `region` is
    /// the anonymous mapping holding it, when known.
    pub fn jit(&mut self, region: Option<Range<u64>>, address: u64, name: &Arc<str>) -> u32 {
        let mapping = self.pseudo_mapping(FrameKind::Jit, region.unwrap_or(0..0));
        let frame = Frame {
            name,
            system_name: name,
            file: None,
            line: 0,
        };
        self.location(FrameKind::Jit, Some(mapping), address, [frame])
    }

    /// A location of a Python function: its code object's address and
    /// `frame` (name, file, line); no frame when the code object could not
    /// be read.
    pub fn python(&mut self, address: u64, frame: Option<Frame<'_>>) -> u32 {
        let mapping = self.pseudo_mapping(FrameKind::Python, 0..0);
        self.location(FrameKind::Python, Some(mapping), address, frame)
    }

    /// A location of kernel code, with its function frames innermost first;
    /// none when unsymbolized.
    pub fn kernel<'f>(&mut self, address: u64, frames: impl IntoIterator<Item = Frame<'f>>) -> u32 {
        let mapping = match self.kernel_mapping {
            Some(m) => m,
            None => {
                let m = self.pseudo_mapping(FrameKind::Kernel, KERNEL_START..u64::MAX);
                *self.kernel_mapping.insert(m)
            }
        };
        self.location(FrameKind::Kernel, Some(mapping), address, frames)
    }

    /// A marker location, shown as a frame named `name`.
    pub fn marker(&mut self, marker: Marker, name: &str) -> u32 {
        let kind = FrameKind::Marker(marker);
        let mapping = self.pseudo_mapping(kind, 0..0);
        let name = self.t.string(name);
        let frame = Frame {
            name: &name,
            system_name: &name,
            file: None,
            line: 0,
        };
        self.location(kind, Some(mapping), 0, [frame])
    }

    /// Counts `count` samples of a stack (location ids, leaf first) in a
    /// thread; equal samples add up. Ids this builder did not return are
    /// left out of the stack.
    pub fn sample(
        &mut self,
        locations: &[u32],
        count: u64,
        pid: u32,
        tid: u32,
        comm: &str,
        thread_name: &str,
    ) {
        let n = self.t.locations().len();
        let known = |l: &u32| (*l as usize) < n;
        debug_assert!(locations.iter().all(known), "unknown location id");
        if locations.iter().all(known) {
            self.t
                .sample(locations, [count, 0], pid, tid, comm, thread_name);
        } else {
            let stack: Vec<u32> = locations.iter().copied().filter(known).collect();
            self.t
                .sample(&stack, [count, 0], pid, tid, comm, thread_name);
        }
    }

    /// Adds `nanos` of off-CPU time in a stack (location ids, leaf first)
    /// of a thread; the profile then carries the off-CPU sample type.
    pub fn off_cpu(
        &mut self,
        locations: &[u32],
        nanos: u64,
        pid: u32,
        tid: u32,
        comm: &str,
        thread_name: &str,
    ) {
        self.has_off_cpu = true;
        let n = self.t.locations().len();
        let stack: Vec<u32> = locations
            .iter()
            .copied()
            .filter(|&l| (l as usize) < n)
            .collect();
        self.t
            .sample(&stack, [0, nanos], pid, tid, comm, thread_name);
    }

    /// Declares off-CPU time recorded (even if no wait was seen).
    pub fn set_off_cpu(&mut self) {
        self.has_off_cpu = true;
    }

    /// The profile, samples in a deterministic order.
    pub fn finish(mut self, opts: &BuildOptions) -> Profile {
        set_mapping_flags(&mut self.t);
        let t = self.t.finish();
        let mut samples = t.samples;
        samples.sort_by(|a, b| {
            (a.pid, a.tid, &a.locations, &a.comm, &a.thread_name).cmp(&(
                b.pid,
                b.tid,
                &b.locations,
                &b.comm,
                &b.thread_name,
            ))
        });
        Profile {
            start: opts.start,
            duration: opts.duration,
            frequency: opts.frequency,
            target: opts.target.clone(),
            labels: Default::default(),
            off_cpu: self.has_off_cpu,
            mappings: t.mappings,
            functions: t.functions,
            locations: t.locations,
            samples,
        }
    }
}

/// Sets each mapping's has_* flag only when it holds for every location in
/// the mapping: consumers skip symbolizing (and Pyroscope zeroes addresses
/// of) mappings that claim functions.
fn set_mapping_flags(t: &mut Interner) {
    let n = t.mappings().len();
    let (mut named, mut files, mut lines, mut inline, mut any) = (
        vec![true; n],
        vec![true; n],
        vec![true; n],
        vec![false; n],
        vec![false; n],
    );
    let functions = t.functions();
    for loc in t.locations() {
        let Some(m) = loc.mapping.map(|m| m as usize) else {
            continue;
        };
        any[m] = true;
        named[m] &= !loc.lines.is_empty();
        files[m] &= !loc.lines.is_empty()
            && loc
                .lines
                .iter()
                .all(|l| !functions[l.function as usize].filename.is_empty());
        lines[m] &= !loc.lines.is_empty() && loc.lines.iter().all(|l| l.line != 0);
        inline[m] |= loc.lines.len() > 1;
    }
    for (i, m) in t.mappings_mut().iter_mut().enumerate() {
        m.has_functions = any[i] && named[i];
        m.has_filenames = any[i] && files[i];
        m.has_line_numbers = any[i] && lines[i];
        // Inline frames come from the same DWARF pass that names every
        // location; seeing one means the pass ran for this binary.
        m.has_inline_frames = m.has_functions && inline[i];
    }
}
