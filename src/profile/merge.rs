//! Merges stored pprof profiles (ember's own windows) into one [`Profile`],
//! re-interning mappings, functions and locations so equal entries coincide.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::pprof::proto;
use super::{FrameKind, Function, Line, Location, Mapping, Profile, Sample};

/// (mapping, address, [(function, line)]) identifies a location.
type LocationKey = (Option<u32>, u64, Vec<(u32, u32)>);
/// (locations, pid, tid, comm, thread name) identifies a sample.
type SampleKey = (Vec<u32>, u32, u32, Arc<str>, Arc<str>);

/// Accumulates profiles.
pub struct Merger {
    out: Profile,
    mapping_ids: HashMap<(u64, u64, u64, Arc<str>, String), u32>,
    function_ids: HashMap<Function, u32>,
    location_ids: HashMap<LocationKey, u32>,
    sample_ids: HashMap<SampleKey, usize>,
    first: Option<u64>,
    last: u64,
}

impl Merger {
    /// An empty merge whose title will name `target`.
    pub fn new(target: String) -> Merger {
        Merger {
            out: Profile {
                start: UNIX_EPOCH,
                duration: Duration::ZERO,
                frequency: 0,
                target,
                labels: Default::default(),
                mappings: Vec::new(),
                functions: Vec::new(),
                locations: Vec::new(),
                samples: Vec::new(),
            },
            mapping_ids: HashMap::new(),
            function_ids: HashMap::new(),
            location_ids: HashMap::new(),
            sample_ids: HashMap::new(),
            first: None,
            last: 0,
        }
    }

    /// Adds the samples of `p` whose pid `keep_pid` accepts.
    pub fn add(&mut self, p: &proto::Profile, keep_pid: impl Fn(u32) -> bool) {
        let s = |i: i64| {
            p.string_table
                .get(i as usize)
                .map(String::as_str)
                .unwrap_or("")
        };
        let start = p.time_nanos.max(0) as u64;
        self.first = Some(self.first.map_or(start, |f| f.min(start)));
        self.last = self
            .last
            .max(start.saturating_add(p.duration_nanos.max(0) as u64));
        if self.out.frequency == 0 && p.period > 0 {
            self.out.frequency = (1_000_000_000 / p.period as u64).max(1);
        }
        let maps: Vec<u32> = p
            .mapping
            .iter()
            .map(|m| {
                let file: Arc<str> = Arc::from(s(m.filename));
                let key = (
                    m.memory_start,
                    m.memory_limit,
                    m.file_offset,
                    file.clone(),
                    s(m.build_id).to_string(),
                );
                if let Some(&id) = self.mapping_ids.get(&key) {
                    let old = &mut self.out.mappings[id as usize];
                    old.has_functions &= m.has_functions;
                    old.has_filenames &= m.has_filenames;
                    old.has_line_numbers &= m.has_line_numbers;
                    old.has_inline_frames &= m.has_inline_frames;
                    return id;
                }
                let id = self.out.mappings.len() as u32;
                self.out.mappings.push(Mapping {
                    start: m.memory_start,
                    limit: m.memory_limit,
                    offset: m.file_offset,
                    file,
                    build_id: s(m.build_id).to_string(),
                    has_functions: m.has_functions,
                    has_filenames: m.has_filenames,
                    has_line_numbers: m.has_line_numbers,
                    has_inline_frames: m.has_inline_frames,
                });
                self.mapping_ids.insert(key, id);
                id
            })
            .collect();
        let funcs: Vec<u32> = p
            .function
            .iter()
            .map(|f| {
                let f = Function {
                    name: s(f.name).into(),
                    system_name: s(f.system_name).into(),
                    filename: s(f.filename).into(),
                };
                if let Some(&id) = self.function_ids.get(&f) {
                    return id;
                }
                let id = self.out.functions.len() as u32;
                self.out.functions.push(f.clone());
                self.function_ids.insert(f, id);
                id
            })
            .collect();
        let locs: Vec<u32> = p
            .location
            .iter()
            .map(|l| {
                let mapping = (l.mapping_id as usize)
                    .checked_sub(1)
                    .and_then(|i| maps.get(i).copied());
                let lines: Vec<(u32, u32)> = l
                    .line
                    .iter()
                    .filter_map(|ln| {
                        let f = funcs.get((ln.function_id as usize).checked_sub(1)?)?;
                        Some((*f, ln.line.max(0) as u32))
                    })
                    .collect();
                let key = (mapping, l.address, lines);
                if let Some(&id) = self.location_ids.get(&key) {
                    return id;
                }
                let file = mapping.map(|m| self.out.mappings[m as usize].file.clone());
                let first_name = key
                    .2
                    .first()
                    .map(|(f, _)| self.out.functions[*f as usize].name.clone());
                let kind = if file
                    .as_deref()
                    .is_some_and(|f| f.starts_with("[kernel.kallsyms]"))
                {
                    FrameKind::Kernel
                } else if first_name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("[lost "))
                {
                    FrameKind::Lost
                } else if file
                    .as_deref()
                    .is_some_and(|f| f.starts_with('[') || f.starts_with("//anon"))
                    && !key.2.is_empty()
                {
                    FrameKind::Jit
                } else {
                    FrameKind::User
                };
                let id = self.out.locations.len() as u32;
                self.out.locations.push(Location {
                    mapping,
                    address: l.address,
                    lines: key
                        .2
                        .iter()
                        .map(|&(function, line)| Line { function, line })
                        .collect(),
                    kind,
                });
                self.location_ids.insert(key, id);
                id
            })
            .collect();
        let key_of = |name: &str| {
            p.string_table
                .iter()
                .position(|x| x == name)
                .map(|i| i as i64)
        };
        let (k_pid, k_tid, k_thread, k_comm) = (
            key_of("pid"),
            key_of("tid"),
            key_of("thread_name"),
            key_of("comm"),
        );
        for smp in &p.sample {
            let label = |k: Option<i64>| smp.label.iter().find(|l| Some(l.key) == k);
            let num = |k| label(k).map(|l| l.num as u32).unwrap_or(0);
            if !keep_pid(num(k_pid)) {
                continue;
            }
            let text = |k| -> Arc<str> { Arc::from(label(k).map(|l| s(l.str)).unwrap_or("")) };
            let locations: Vec<u32> = smp
                .location_id
                .iter()
                .filter_map(|&id| locs.get((id as usize).checked_sub(1)?).copied())
                .collect();
            let key = (
                locations,
                num(k_pid),
                num(k_tid),
                text(k_comm),
                text(k_thread),
            );
            let count = smp.value.first().copied().unwrap_or(0).max(0) as u64;
            match self.sample_ids.get(&key) {
                Some(&i) => {
                    let c = &mut self.out.samples[i].count;
                    *c = c.saturating_add(count);
                }
                None => {
                    self.sample_ids.insert(key.clone(), self.out.samples.len());
                    self.out.samples.push(Sample {
                        locations: key.0,
                        count,
                        pid: key.1,
                        tid: key.2,
                        comm: key.3,
                        thread_name: key.4,
                    });
                }
            }
        }
    }

    /// The merged profile; its time range spans every input.
    pub fn finish(mut self) -> Profile {
        let first = self.first.unwrap_or(0);
        self.out.start = UNIX_EPOCH + Duration::from_nanos(first);
        self.out.duration = Duration::from_nanos(self.last.saturating_sub(first));
        if self.out.frequency == 0 {
            self.out.frequency = 1;
        }
        if self.first.is_none() {
            self.out.start = SystemTime::now();
        }
        self.out
    }
}
