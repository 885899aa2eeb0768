//! Turns drained counts into a symbolized [`Profile`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{FrameKind, Function, Line, Location, Mapping, Profile, Sample};
use crate::aggregate::{Aggregate, StackTable};
use crate::sample::{
    SampleKey, SAMPLE_KERNEL_LOST, SAMPLE_MAP_FULL, SAMPLE_TRUNCATED, SAMPLE_USER_LOST,
};
use crate::symbolize::Unnamed;
use crate::symbolize::{BinaryId, Symbolizer};

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
}

/// Where one user address resolved to before symbolization.
#[derive(Clone, Copy)]
enum Resolved {
    Binary {
        bin: BinaryId,
        offset: u64,
        mapping: usize,
    },
    Anon {
        mapping: usize,
    },
    Unmapped,
}

const KERNEL_START: u64 = 0xffff_8000_0000_0000;

/// Symbolizes every sample of `agg`.
pub fn build(agg: &Aggregate, sym: &mut Symbolizer, opts: &BuildOptions) -> Profile {
    let entries: Vec<(&SampleKey, u64)> = agg.counts.iter().map(|(k, &n)| (k, n)).collect();
    prepare(sym, entries.iter().map(|e| e.0.tgid));
    build_entries(&entries, &agg.stacks, sym, opts)
}

/// Refreshes what symbolization needs for these processes: libraries loaded
/// since each was captured, and perf maps, which JITs append to. Call once
/// before one or more [`build_entries`].
pub fn prepare(sym: &mut Symbolizer, pids: impl Iterator<Item = u32>) {
    sym.reset_perf_maps();
    let mut pids: Vec<u32> = pids.collect();
    pids.sort_unstable();
    pids.dedup();
    for &pid in &pids {
        if pid != 0 {
            sym.refresh(pid);
        }
    }
}

/// Symbolizes a subset of an aggregate's samples (one target's), after
/// [`prepare`].
pub fn build_entries(
    entries: &[(&SampleKey, u64)],
    stacks: &StackTable,
    sym: &mut Symbolizer,
    opts: &BuildOptions,
) -> Profile {
    let mut b = Builder::default();

    // Pass 1: collect what needs symbolizing, per binary and for the kernel.
    let mut per_bin: HashMap<BinaryId, Vec<u64>> = HashMap::new();
    // Per process: code outside every file mapping, and whether it lies in
    // an anonymous mapping (a JIT's) or in none ember knows.
    let mut jit: HashMap<u32, Vec<(u64, bool)>> = HashMap::new();
    let mut kernel_addrs = Vec::new();
    for (key, _) in entries {
        if let Some(frames) = stacks.get(key.user_stack) {
            let proc = sym.process(key.tgid);
            for (i, &ip) in frames.iter().enumerate() {
                let a = adjust(ip, i);
                match proc.and_then(|p| p.find(a)).map(|m| (m, sym.binary_of(m))) {
                    Some((m, Some(bin))) => per_bin.entry(bin).or_default().push(m.file_offset(a)),
                    // Anonymous or unmapped code: a JIT's, named by its perf map.
                    found => jit.entry(key.tgid).or_default().push((a, found.is_some())),
                }
            }
        }
        if let Some(frames) = stacks.get(key.kernel_stack) {
            kernel_addrs.extend(frames.iter().enumerate().map(|(i, &ip)| adjust(ip, i)));
        }
    }
    let mut unnamed = Unnamed::default();
    for (bin, mut offsets) in per_bin {
        sym.symbolize_binary(bin, &mut offsets.clone());
        offsets.sort_unstable();
        offsets.dedup();
        let readable = sym.binary(bin).readable();
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
        sym.symbolize_jit(pid, &mut found.iter().map(|f| f.0).collect());
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
    let mut samples = Vec::with_capacity(entries.len());
    for &(key, count) in entries {
        let mut locs = Vec::new();
        if key.flags & SAMPLE_KERNEL_LOST != 0 {
            locs.push(b.marker(lost_name("kernel", key.flags)));
        }
        if let Some(frames) = stacks.get(key.kernel_stack) {
            for (i, &ip) in frames.iter().enumerate() {
                locs.push(b.kernel_location(sym, adjust(ip, i)));
            }
        }
        if key.flags & SAMPLE_USER_LOST != 0 {
            locs.push(b.marker(lost_name("user", key.flags)));
        }
        if let Some(frames) = stacks.get(key.user_stack) {
            for (i, &ip) in frames.iter().enumerate() {
                locs.push(b.user_location(sym, key.tgid, adjust(ip, i)));
            }
        }
        // The walk stopped before the outermost frame: say so at the root
        // rather than pass the partial stack off as complete.
        if key.flags & SAMPLE_TRUNCATED != 0 {
            locs.push(b.marker("[truncated]".to_string()));
        }
        samples.push(Sample {
            locations: locs,
            count,
            pid: key.tgid,
            tid: key.tid,
            comm: b.name(&key.comm),
            thread_name: b.name(&key.thread_comm),
        });
    }
    // Deterministic output order.
    samples.sort_by(|a, b| (a.pid, a.tid, &a.locations).cmp(&(b.pid, b.tid, &b.locations)));
    b.finish_mappings(sym);

    Profile {
        start: opts.start,
        duration: opts.duration,
        frequency: opts.frequency,
        target: opts.target.clone(),
        labels: Default::default(),
        mappings: b.mappings,
        functions: b.functions,
        locations: b.locations,
        samples,
    }
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

fn lost_name(what: &str, flags: u32) -> String {
    if flags & SAMPLE_MAP_FULL != 0 {
        format!("[lost {what} stack: stack map full]")
    } else {
        format!("[lost {what} stack: not readable]")
    }
}

#[derive(Default)]
struct Builder {
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<(u64, u64, u64, Arc<str>), u32>,
    mapping_bins: Vec<Option<BinaryId>>,
    functions: Vec<Function>,
    function_ids: HashMap<Function, u32>,
    locations: Vec<Location>,
    // (kind, pid for process-private code, mapping, address) -> location
    location_ids: HashMap<(FrameKind, u32, Option<u32>, u64), u32, FastHash>,
    markers: HashMap<String, u32>,
    names: HashMap<[u8; 16], Arc<str>>,
    kernel_mapping: Option<u32>,
    // (pid, address) -> location, for user frames already seen.
    user_seen: HashMap<(u32, u64), u32, FastHash>,
}

/// A multiply-rotate hasher for the builder's location maps, seeded
/// per build: SipHash dominated profile building, and the seed keeps
/// addresses a process chooses from steering collisions.
#[derive(Clone)]
struct FastHash(u64);

impl Default for FastHash {
    fn default() -> Self {
        use std::hash::BuildHasher;
        FastHash(std::collections::hash_map::RandomState::new().hash_one(0u64) | 1)
    }
}

impl std::hash::BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// The hasher [`FastHash`] builds.
struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_ne_bytes(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn finish(&self) -> u64 {
        // Fold the high bits down: hashbrown picks buckets from the low bits.
        self.0 ^ (self.0 >> 29)
    }
}

impl Builder {
    fn name(&mut self, raw: &[u8; 16]) -> Arc<str> {
        self.names
            .entry(*raw)
            .or_insert_with(|| {
                let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                Arc::from(String::from_utf8_lossy(&raw[..end]).as_ref())
            })
            .clone()
    }

    fn function(&mut self, name: Arc<str>, system_name: Arc<str>, filename: Arc<str>) -> u32 {
        let f = Function {
            name,
            system_name,
            filename,
        };
        if let Some(&id) = self.function_ids.get(&f) {
            return id;
        }
        let id = self.functions.len() as u32;
        self.functions.push(f.clone());
        self.function_ids.insert(f, id);
        id
    }

    fn mapping(
        &mut self,
        start: u64,
        limit: u64,
        offset: u64,
        file: Arc<str>,
        bin: Option<BinaryId>,
    ) -> u32 {
        let key = (start, limit, offset, file.clone());
        if let Some(&id) = self.mapping_ids.get(&key) {
            return id;
        }
        let id = self.mappings.len() as u32;
        self.mappings.push(Mapping {
            start,
            limit,
            offset,
            file,
            build_id: String::new(),
            has_functions: false,
            has_filenames: false,
            has_line_numbers: false,
            has_inline_frames: false,
        });
        self.mapping_bins.push(bin);
        self.mapping_ids.insert(key, id);
        id
    }

    fn push_location(
        &mut self,
        key: (FrameKind, u32, Option<u32>, u64),
        lines: Vec<Line>,
        kind: FrameKind,
    ) -> u32 {
        let id = self.locations.len() as u32;
        self.locations.push(Location {
            mapping: key.2,
            address: key.3,
            lines,
            kind,
        });
        self.location_ids.insert(key, id);
        id
    }

    fn marker(&mut self, name: String) -> u32 {
        if let Some(&id) = self.markers.get(&name) {
            return id;
        }
        let n: Arc<str> = Arc::from(name.as_str());
        let f = self.function(n.clone(), n, Arc::from(""));
        let id = self.locations.len() as u32;
        self.locations.push(Location {
            mapping: None,
            address: 0,
            lines: vec![Line {
                function: f,
                line: 0,
            }],
            kind: FrameKind::Lost,
        });
        self.markers.insert(name, id);
        id
    }

    fn kernel_location(&mut self, sym: &Symbolizer, addr: u64) -> u32 {
        let mapping = *self.kernel_mapping.get_or_insert_with(|| {
            let id = self.mappings.len() as u32;
            self.mappings.push(Mapping {
                start: KERNEL_START,
                limit: u64::MAX,
                offset: 0,
                file: Arc::from("[kernel.kallsyms]"),
                build_id: String::new(),
                has_functions: false,
                has_filenames: false,
                has_line_numbers: false,
                has_inline_frames: false,
            });
            self.mapping_bins.push(None);
            id
        });
        let key = (FrameKind::Kernel, 0, Some(mapping), addr);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let frames = sym.kernel_frames(addr);
        let lines = self.lines(&frames);
        self.push_location(key, lines, FrameKind::Kernel)
    }

    fn user_location(&mut self, sym: &mut Symbolizer, pid: u32, addr: u64) -> u32 {
        // Most frames recur across samples (every caller above the leaf):
        // one cheap lookup instead of resolving the mapping again.
        if let Some(&id) = self.user_seen.get(&(pid, addr)) {
            return id;
        }
        let id = self.resolve_user_location(sym, pid, addr);
        self.user_seen.insert((pid, addr), id);
        id
    }

    fn resolve_user_location(&mut self, sym: &mut Symbolizer, pid: u32, addr: u64) -> u32 {
        let resolved = match sym.process(pid) {
            Some(p) => match p.find_index(addr) {
                Some(i) => match sym.binary_of(&p.mappings[i]) {
                    Some(bin) => Resolved::Binary {
                        bin,
                        offset: p.mappings[i].file_offset(addr),
                        mapping: i,
                    },
                    None => Resolved::Anon { mapping: i },
                },
                None => Resolved::Unmapped,
            },
            None => Resolved::Unmapped,
        };
        let mapping = match resolved {
            Resolved::Binary { mapping, bin, .. } => Some((mapping, Some(bin))),
            Resolved::Anon { mapping } => Some((mapping, None)),
            Resolved::Unmapped => None,
        }
        .map(|(i, bin)| {
            let m = sym.process(pid).expect("resolved above").mappings[i].clone();
            self.mapping(m.start, m.end, m.offset, m.path, bin)
        });
        // Code of a file is the same in every process mapping it at the
        // same place; anonymous (JIT) code is private to its process.
        let (kind, owner) = match resolved {
            Resolved::Binary { .. } => (FrameKind::User, 0),
            _ => (FrameKind::Jit, pid),
        };
        let key = (kind, owner, mapping, addr);
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        let lines = match resolved {
            Resolved::Binary { bin, offset, .. } => {
                let frames = sym.binary_frames(bin, offset);
                self.lines(&frames)
            }
            _ => match sym.jit_name(pid, addr) {
                Some(name) => {
                    let f = self.function(name.clone(), name, Arc::from(""));
                    vec![Line {
                        function: f,
                        line: 0,
                    }]
                }
                None => Vec::new(),
            },
        };
        // Anonymous code no perf map names is shown like unsymbolized native code.
        let shown = if kind == FrameKind::Jit && lines.is_empty() {
            FrameKind::User
        } else {
            kind
        };
        self.push_location(key, lines, shown)
    }

    fn lines(&mut self, frames: &[crate::symbolize::SymFrame]) -> Vec<Line> {
        frames
            .iter()
            .map(|f| Line {
                function: self.function(
                    f.name.clone(),
                    f.system_name.clone(),
                    f.file.clone().unwrap_or_else(|| Arc::from("")),
                ),
                line: f.line,
            })
            .collect()
    }

    /// Fills the mappings' build IDs and sets each has_* flag only when it
    /// holds for every location in the mapping: consumers skip symbolizing
    /// (and Pyroscope zeroes addresses of) mappings that claim functions.
    fn finish_mappings(&mut self, sym: &Symbolizer) {
        let n = self.mappings.len();
        let (mut named, mut files, mut lines, mut inline, mut any) = (
            vec![true; n],
            vec![true; n],
            vec![true; n],
            vec![false; n],
            vec![false; n],
        );
        for loc in &self.locations {
            let Some(m) = loc.mapping.map(|m| m as usize) else {
                continue;
            };
            any[m] = true;
            named[m] &= !loc.lines.is_empty();
            files[m] &= !loc.lines.is_empty()
                && loc
                    .lines
                    .iter()
                    .all(|l| !self.functions[l.function as usize].filename.is_empty());
            lines[m] &= !loc.lines.is_empty() && loc.lines.iter().all(|l| l.line != 0);
            inline[m] |= loc.lines.len() > 1;
        }
        for (i, (m, bin)) in self.mappings.iter_mut().zip(&self.mapping_bins).enumerate() {
            if let Some(b) = bin.map(|id| sym.binary(id)) {
                m.build_id = b.build_id.clone().unwrap_or_default();
            }
            m.has_functions = any[i] && named[i];
            m.has_filenames = any[i] && files[i];
            m.has_line_numbers = any[i] && lines[i];
            // Inline frames come from the same DWARF pass that names every
            // location; seeing one means the pass ran for this binary.
            m.has_inline_frames = m.has_functions && inline[i];
        }
    }
}
