//! The one interner behind every profile table. The builder (fresh
//! samples), the merger (stored windows) and pprof's split (parts of a
//! profile) all put mappings, functions, locations, strings and samples
//! through [`Interner`], so equal entries coincide and ids stay dense. The
//! pprof encoder's string table uses the same [`Table`].
//!
//! Tables keep each item once, in a `Vec` whose index is the item's id, and
//! find items by content through a `hashbrown::HashTable` of ids: no key is
//! copied beside its item, so interning allocates only for new items.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use hashbrown::hash_table::{Entry, HashTable};

use super::{FrameKind, Function, Line, Location, Mapping, Profile, Sample};

/// A multiply-rotate hasher, seeded per interner: SipHash dominated profile
/// building, and the seed keeps addresses a process chooses from steering
/// collisions.
#[derive(Clone)]
pub(crate) struct FastHash(u64);

impl Default for FastHash {
    fn default() -> Self {
        FastHash(std::collections::hash_map::RandomState::new().hash_one(0u64) | 1)
    }
}

impl BuildHasher for FastHash {
    type Hasher = FastHasher;
    fn build_hasher(&self) -> FastHasher {
        FastHasher(self.0)
    }
}

/// The hasher [`FastHash`] builds.
pub(crate) struct FastHasher(u64);

impl std::hash::Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_ne_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_ne_bytes(b));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.write_u64(v as u64);
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }
    fn write_usize(&mut self, v: usize) {
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

/// Items in insertion order (an item's id is its index), found by content.
pub(crate) struct Table<T> {
    items: Vec<T>,
    index: HashTable<u32>,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Table {
            items: Vec::new(),
            index: HashTable::new(),
        }
    }
}

impl<T> Table<T> {
    /// The items, by id.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// The items, by id, to update fields that are not part of their key.
    pub fn items_mut(&mut self) -> &mut [T] {
        &mut self.items
    }

    /// The items, by id, dropping the index.
    pub fn into_items(self) -> Vec<T> {
        self.items
    }

    /// The id of the item `eq` accepts, whose key hashes to `hash`, or else
    /// of `make()`, added. `rehash` gives a stored item's hash (for growing).
    pub fn intern(
        &mut self,
        hash: u64,
        eq: impl Fn(&T) -> bool,
        rehash: impl Fn(&T) -> u64,
        make: impl FnOnce() -> T,
    ) -> u32 {
        let items = &self.items;
        let id = u32::try_from(items.len()).expect("fewer than 2^32 profile entries");
        match self.index.entry(
            hash,
            |&i| eq(&items[i as usize]),
            |&i| rehash(&items[i as usize]),
        ) {
            Entry::Occupied(e) => return *e.get(),
            Entry::Vacant(v) => {
                v.insert(id);
            }
        }
        self.items.push(make());
        id
    }

    /// The id of the item `eq` accepts, whose key hashes to `hash`.
    pub fn find(&self, hash: u64, eq: impl Fn(&T) -> bool) -> Option<u32> {
        let items = &self.items;
        self.index.find(hash, |&i| eq(&items[i as usize])).copied()
    }

    /// Adds an item known to be new, whose key hashes to `hash`.
    pub fn insert(&mut self, hash: u64, item: T, rehash: impl Fn(&T) -> u64) -> u32 {
        let items = &self.items;
        let id = u32::try_from(items.len()).expect("fewer than 2^32 profile entries");
        self.index
            .insert_unique(hash, id, |&i| rehash(&items[i as usize]));
        self.items.push(item);
        id
    }
}

/// What identifies a mapping: everything but its `has_*` flags.
fn mapping_hash(h: &FastHash, start: u64, limit: u64, offset: u64, file: &str, bid: &str) -> u64 {
    h.hash_one((start, limit, offset, file, bid))
}

fn function_hash(h: &FastHash, name: &str, system_name: &str, filename: &str) -> u64 {
    h.hash_one((name, system_name, filename))
}

fn location_hash(
    h: &FastHash,
    kind: FrameKind,
    mapping: Option<u32>,
    address: u64,
    lines: &[Line],
) -> u64 {
    let mut s = h.build_hasher();
    (kind, mapping, address, lines.len()).hash(&mut s);
    for l in lines {
        (l.function, l.line).hash(&mut s);
    }
    std::hash::Hasher::finish(&s)
}

fn sample_hash(h: &FastHash, locations: &[u32], pid: u32, tid: u32, comm: &str, thr: &str) -> u64 {
    h.hash_one((locations, pid, tid, comm, thr))
}

fn same_lines(a: &[Line], b: &[Line]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.function == y.function && x.line == y.line)
}

/// Profile tables under construction: mappings, functions, locations,
/// strings (process and thread names) and samples, each interned by content.
#[derive(Default)]
pub(crate) struct Interner {
    hash: FastHash,
    mappings: Table<Mapping>,
    functions: Table<Function>,
    locations: Table<Location>,
    strings: Table<Arc<str>>,
    samples: Table<Sample>,
}

/// The tables an [`Interner`] filled, ids dense from 0.
pub(crate) struct Tables {
    pub mappings: Vec<Mapping>,
    pub functions: Vec<Function>,
    pub locations: Vec<Location>,
    pub samples: Vec<Sample>,
}

impl Interner {
    /// The mappings so far, by id.
    pub fn mappings(&self) -> &[Mapping] {
        self.mappings.items()
    }

    /// The mappings so far, to set their `has_*` flags.
    pub fn mappings_mut(&mut self) -> &mut [Mapping] {
        self.mappings.items_mut()
    }

    /// The functions so far, by id.
    pub fn functions(&self) -> &[Function] {
        self.functions.items()
    }

    /// The locations so far, by id.
    pub fn locations(&self) -> &[Location] {
        self.locations.items()
    }

    /// A mapping's id. A new mapping claims every `has_*` flag: callers
    /// clear what their source does not claim, or compute the flags at the
    /// end.
    pub fn mapping(
        &mut self,
        start: u64,
        limit: u64,
        offset: u64,
        file: &Arc<str>,
        build_id: &str,
    ) -> u32 {
        let h = &self.hash;
        self.mappings.intern(
            mapping_hash(h, start, limit, offset, file, build_id),
            |m| {
                (m.start, m.limit, m.offset) == (start, limit, offset)
                    && *m.file == **file
                    && m.build_id == build_id
            },
            |m| mapping_hash(h, m.start, m.limit, m.offset, &m.file, &m.build_id),
            || Mapping {
                start,
                limit,
                offset,
                file: file.clone(),
                build_id: build_id.to_string(),
                has_functions: true,
                has_filenames: true,
                has_line_numbers: true,
                has_inline_frames: true,
            },
        )
    }

    /// A function's id.
    pub fn function(
        &mut self,
        name: &Arc<str>,
        system_name: &Arc<str>,
        filename: &Arc<str>,
    ) -> u32 {
        let h = &self.hash;
        self.functions.intern(
            function_hash(h, name, system_name, filename),
            |f| *f.name == **name && *f.system_name == **system_name && *f.filename == **filename,
            |f| function_hash(h, &f.name, &f.system_name, &f.filename),
            || Function {
                name: name.clone(),
                system_name: system_name.clone(),
                filename: filename.clone(),
            },
        )
    }

    /// A location's id; `lines` are copied only if the location is new.
    pub fn location(
        &mut self,
        kind: FrameKind,
        mapping: Option<u32>,
        address: u64,
        lines: &[Line],
    ) -> u32 {
        let h = &self.hash;
        self.locations.intern(
            location_hash(h, kind, mapping, address, lines),
            |l| {
                l.kind == kind
                    && l.mapping == mapping
                    && l.address == address
                    && same_lines(&l.lines, lines)
            },
            |l| location_hash(h, l.kind, l.mapping, l.address, &l.lines),
            || Location {
                mapping,
                address,
                lines: lines.to_vec(),
                kind,
            },
        )
    }

    /// The interned copy of a string, allocated only the first time.
    pub fn string(&mut self, s: &str) -> Arc<str> {
        let h = &self.hash;
        let id = self.strings.intern(
            h.hash_one(s),
            |x| **x == *s,
            |x| h.hash_one(&**x),
            || Arc::from(s),
        );
        self.strings.items()[id as usize].clone()
    }

    /// Counts `[samples, off-CPU nanoseconds]` of a stack (location ids,
    /// leaf first) in a thread, added to any equal sample's.
    pub fn sample(
        &mut self,
        locations: &[u32],
        [count, off_cpu]: [u64; 2],
        pid: u32,
        tid: u32,
        comm: &str,
        thread_name: &str,
    ) {
        let h = &self.hash;
        let hash = sample_hash(h, locations, pid, tid, comm, thread_name);
        let found = self.samples.find(hash, |s| {
            s.pid == pid
                && s.tid == tid
                && s.locations == locations
                && *s.comm == *comm
                && *s.thread_name == *thread_name
        });
        if let Some(i) = found {
            let s = &mut self.samples.items_mut()[i as usize];
            s.count = s.count.saturating_add(count);
            s.off_cpu = s.off_cpu.saturating_add(off_cpu);
            return;
        }
        let sample = Sample {
            locations: locations.to_vec(),
            count,
            off_cpu,
            pid,
            tid,
            comm: self.string(comm),
            thread_name: self.string(thread_name),
        };
        let h = &self.hash;
        self.samples.insert(hash, sample, |s| {
            sample_hash(h, &s.locations, s.pid, s.tid, &s.comm, &s.thread_name)
        });
    }

    /// The tables, ids dense from 0 in order of first interning.
    pub fn finish(self) -> Tables {
        Tables {
            mappings: self.mappings.into_items(),
            functions: self.functions.into_items(),
            locations: self.locations.into_items(),
            samples: self.samples.into_items(),
        }
    }
}

/// Not yet copied, in [`Import`]'s id maps.
const NONE: u32 = u32::MAX;

/// Copies entries of one source profile into an [`Interner`]: each source
/// mapping, function and location is interned at most once, however many
/// samples use it. References out of range (a hand-made profile's) are
/// dropped, never followed.
pub(crate) struct Import<'a> {
    src: &'a Profile,
    mappings: Vec<u32>,
    functions: Vec<u32>,
    locations: Vec<u32>,
    lines: Vec<Line>,
}

impl<'a> Import<'a> {
    /// Starts copying from `src`.
    pub fn new(src: &'a Profile) -> Import<'a> {
        Import {
            src,
            mappings: vec![NONE; src.mappings.len()],
            functions: vec![NONE; src.functions.len()],
            locations: vec![NONE; src.locations.len()],
            lines: Vec::new(),
        }
    }

    fn mapping(&mut self, into: &mut Interner, id: u32) -> Option<u32> {
        let i = id as usize;
        let m = self.src.mappings.get(i)?;
        if self.mappings[i] == NONE {
            let new = into.mapping(m.start, m.limit, m.offset, &m.file, &m.build_id);
            // A flag holds for the merge only if it holds for every input.
            let out = &mut into.mappings_mut()[new as usize];
            out.has_functions &= m.has_functions;
            out.has_filenames &= m.has_filenames;
            out.has_line_numbers &= m.has_line_numbers;
            out.has_inline_frames &= m.has_inline_frames;
            self.mappings[i] = new;
        }
        Some(self.mappings[i])
    }

    fn function(&mut self, into: &mut Interner, id: u32) -> Option<u32> {
        let i = id as usize;
        let f = self.src.functions.get(i)?;
        if self.functions[i] == NONE {
            self.functions[i] = into.function(&f.name, &f.system_name, &f.filename);
        }
        Some(self.functions[i])
    }

    /// The id in `into` of the source's location `id`.
    pub fn location(&mut self, into: &mut Interner, id: u32) -> Option<u32> {
        let i = id as usize;
        let l = self.src.locations.get(i)?;
        if self.locations[i] == NONE {
            let mapping = l.mapping.and_then(|m| self.mapping(into, m));
            let mut lines = std::mem::take(&mut self.lines);
            lines.clear();
            for ln in &l.lines {
                if let Some(function) = self.function(into, ln.function) {
                    lines.push(Line {
                        function,
                        line: ln.line,
                    });
                }
            }
            self.locations[i] = into.location(l.kind, mapping, l.address, &lines);
            self.lines = lines;
        }
        Some(self.locations[i])
    }

    /// The ids in `into` of a source stack's locations, into `out`.
    pub fn stack(&mut self, into: &mut Interner, stack: &[u32], out: &mut Vec<u32>) {
        out.clear();
        out.extend(stack.iter().filter_map(|&l| self.location(into, l)));
    }
}
