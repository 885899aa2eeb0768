//! aggregate: drains the sampler's kernel maps into userspace counts.
//!
//! Each drain flips the sampler to the other generation of maps, waits for
//! in-flight samples, then reads and deletes the old generation in batches.
//! Stacks are interned by the hash the BPF program computed, so a stack seen
//! in an earlier drain is never copied again, and no allocation happens per
//! sample: only per new distinct stack or key.
//!
//! The batches are read into buffers of the types the kernel stores
//! (`sample::abi`), so an entry is used where it lies, never decoded.

use std::collections::HashMap;

use anyhow::{Context, Result};

use crate::sample::abi::{self, StackTrace};
use crate::sample::{SampleKey, Sampler};

/// Distinct stacks, stored once each in one flat frame array.
#[derive(Default)]
pub struct StackTable {
    index: HashMap<u64, (u32, u32)>,
    frames: Vec<u64>,
}

impl StackTable {
    /// The frames of a stack (innermost first), if it was drained.
    pub fn get(&self, hash: u64) -> Option<&[u64]> {
        self.index
            .get(&hash)
            .map(|&(start, len)| &self.frames[start as usize..(start + len) as usize])
    }

    /// Adds a stack unless it is already known.
    pub fn insert(&mut self, hash: u64, frames: &[u64]) {
        if let std::collections::hash_map::Entry::Vacant(e) = self.index.entry(hash) {
            let start = self.frames.len() as u32;
            self.frames.extend_from_slice(frames);
            e.insert((start, frames.len() as u32));
        }
    }

    /// Number of distinct stacks.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no stack was drained yet.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Forgets every stack, keeping the allocations.
    pub fn clear(&mut self) {
        self.index.clear();
        self.frames.clear();
    }
}

/// Samples counted so far, keyed as the kernel keyed them.
#[derive(Default)]
pub struct Aggregate {
    /// Distinct stacks.
    pub stacks: StackTable,
    /// Sample counts.
    pub counts: HashMap<SampleKey, u64>,
    /// Off-CPU nanoseconds (with off-CPU time recorded).
    pub off_cpu: HashMap<SampleKey, u64>,
}

impl Aggregate {
    /// Total samples held.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Adds everything in `other` (a drain's worth) to this aggregate.
    pub fn merge_from(&mut self, other: &Aggregate) {
        for (key, &ns) in &other.off_cpu {
            for h in [key.user_stack, key.kernel_stack, key.py_stack] {
                if let Some(frames) = other.stacks.get(h) {
                    self.stacks.insert(h, frames);
                }
            }
            *self.off_cpu.entry(*key).or_insert(0) += ns;
        }
        for (key, &n) in &other.counts {
            for h in [key.user_stack, key.kernel_stack, key.py_stack] {
                if let Some(frames) = other.stacks.get(h) {
                    self.stacks.insert(h, frames);
                }
            }
            *self.counts.entry(*key).or_insert(0) += n;
        }
    }

    /// Keeps only samples `keep` accepts (their stacks stay interned).
    pub fn retain(&mut self, mut keep: impl FnMut(&SampleKey) -> bool) {
        self.counts.retain(|k, _| keep(k));
        self.off_cpu.retain(|k, _| keep(k));
    }

    /// Empties the aggregate, keeping its allocations for the next drain.
    pub fn clear(&mut self) {
        self.stacks.clear();
        self.counts.clear();
        self.off_cpu.clear();
    }

    /// Total off-CPU nanoseconds held.
    pub fn off_cpu_total(&self) -> u64 {
        self.off_cpu.values().sum()
    }

    /// Distinct processes (tgids) seen.
    pub fn processes(&self) -> usize {
        let mut pids: Vec<u32> = self
            .counts
            .keys()
            .chain(self.off_cpu.keys())
            .map(|k| k.tgid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids.len()
    }

    /// Distinct threads with samples.
    pub fn threads(&self) -> usize {
        let mut tids: Vec<u32> = self
            .counts
            .keys()
            .chain(self.off_cpu.keys())
            .map(|k| k.tid)
            .collect();
        tids.sort_unstable();
        tids.dedup();
        tids.len()
    }
}

/// What one drain moved.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainStats {
    /// Samples read.
    pub samples: u64,
    /// Count-map entries read.
    pub keys: usize,
    /// Stacks read (new and already known).
    pub stacks: usize,
    /// Off-CPU nanoseconds read.
    pub off_cpu_ns: u64,
}

/// Reusable buffers for draining, typed as the maps' keys and values; one
/// per sampler.
pub struct Drainer {
    stack_keys: Vec<u64>,
    stacks: Vec<StackTrace>,
    count_keys: Vec<SampleKey>,
    counts: Vec<u64>,
    /// Chunks of deep stacks read this drain: hash -> (frames, next).
    chunks: Chains,
    /// (process, Python stack) pairs of the last drain, each once.
    py_keys: std::collections::HashSet<(u32, u64)>,
    /// With off-CPU time: recently drained stacks, for waits that end in a
    /// later window than the one their stacks were drained in.
    carry: Carry,
    /// Off-CPU keys of the last drain.
    off_keys: Vec<SampleKey>,
}

/// Stacks drained lately, in two generations within a byte budget: a wait
/// ends (and is counted) long after its stacks were stored, perhaps after
/// the aggregate holding them was cut as a window and cleared.
#[derive(Default)]
struct Carry {
    new: StackTable,
    old: StackTable,
}

/// Frames the carried stacks may hold per generation (8 bytes each).
const CARRY_FRAMES: usize = 1 << 20;

impl Carry {
    fn insert(&mut self, hash: u64, frames: &[u64]) {
        if self.new.frames.len() + frames.len() > CARRY_FRAMES {
            self.old = std::mem::take(&mut self.new);
        }
        self.new.insert(hash, frames);
    }

    fn get(&self, hash: u64) -> Option<&[u64]> {
        self.new.get(hash).or_else(|| self.old.get(hash))
    }
}

/// The chunks of deep stacks (`stack_trace.next` set) of one drain, joined
/// into whole stacks once every chunk is read.
#[derive(Default)]
struct Chains {
    index: HashMap<u64, (u32, u32, u64)>,
    frames: Vec<u64>,
}

impl Chains {
    fn add(&mut self, hash: u64, frames: &[u64], next: u64) {
        let start = self.frames.len() as u32;
        self.frames.extend_from_slice(frames);
        self.index.insert(hash, (start, frames.len() as u32, next));
    }

    /// Joins every chain whose first chunk no other chunk continues, and
    /// interns it under that chunk's hash (which covers the whole stack).
    /// The last chunk of a chain was interned as a stack of its own.
    fn join_into(&mut self, stacks: &mut StackTable) {
        if self.index.is_empty() {
            return;
        }
        let continued: std::collections::HashSet<u64> =
            self.index.values().map(|&(_, _, next)| next).collect();
        let mut whole = Vec::with_capacity(abi::MAX_USER_DEPTH);
        for (&head, _) in self.index.iter().filter(|(h, _)| !continued.contains(h)) {
            whole.clear();
            let mut at = head;
            // Bounded: a chain is at most MAX_CHUNKS long, and a broken one
            // (a chunk missing) keeps the frames read so far.
            for _ in 0..abi::MAX_CHUNKS {
                let (frames, next) = match self.index.get(&at) {
                    Some(&(start, len, next)) => {
                        (&self.frames[start as usize..(start + len) as usize], next)
                    }
                    None => match stacks.get(at) {
                        Some(tail) => (tail, 0),
                        None => break,
                    },
                };
                whole.extend_from_slice(frames);
                if next == 0 {
                    break;
                }
                at = next;
            }
            stacks.insert(head, &whole);
        }
        self.index.clear();
        self.frames.clear();
    }
}

/// Entries read per batch system call (the buffers grow when one hash
/// bucket holds more).
const BATCH: usize = 256;

impl Default for Drainer {
    fn default() -> Self {
        Drainer {
            stack_keys: vec![0; BATCH],
            stacks: vec![StackTrace::default(); BATCH],
            count_keys: vec![SampleKey::default(); BATCH],
            counts: vec![0; BATCH],
            chunks: Chains::default(),
            py_keys: Default::default(),
            carry: Carry::default(),
            off_keys: Vec::new(),
        }
    }
}

impl Drainer {
    /// The (process, Python stack hash) pairs the last drain read.
    pub fn python_stacks(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.py_keys.iter().copied()
    }

    /// Moves everything counted since the last drain into `agg`.
    pub fn drain(&mut self, sampler: &mut Sampler, agg: &mut Aggregate) -> Result<DrainStats> {
        let g = sampler.flip_generation();
        let mut st = DrainStats::default();
        let chunks = &mut self.chunks;
        let py_keys = &mut self.py_keys;
        py_keys.clear();
        let off_cpu = sampler.off_cpu();
        let carry = &mut self.carry;

        // Stacks first, so every key read next finds its stacks.
        abi::drain_batch(
            sampler.stacks_map(g),
            BATCH,
            &mut self.stack_keys,
            &mut self.stacks,
            |&hash, trace| {
                if trace.next == 0 {
                    agg.stacks.insert(hash, abi::frames(trace));
                    if off_cpu {
                        carry.insert(hash, abi::frames(trace));
                    }
                } else {
                    chunks.add(hash, abi::frames(trace), trace.next);
                }
                st.stacks += 1;
            },
        )
        .context("draining the stack map failed")?;
        chunks.join_into(&mut agg.stacks);

        abi::drain_batch(
            sampler.counts_map(g),
            BATCH,
            &mut self.count_keys,
            &mut self.counts,
            |key, &n| {
                *agg.counts.entry(*key).or_insert(0) += n;
                if key.py_stack != 0 {
                    py_keys.insert((key.tgid, key.py_stack));
                }
                st.samples += n;
                st.keys += 1;
            },
        )
        .context("draining the count map failed")?;
        if off_cpu {
            let off_keys = &mut self.off_keys;
            off_keys.clear();
            abi::drain_batch(
                sampler.off_cpu_map(g),
                BATCH,
                &mut self.count_keys,
                &mut self.counts,
                |key, &ns| {
                    off_keys.push(*key);
                    *agg.off_cpu.entry(*key).or_insert(0) += ns;
                    if key.py_stack != 0 {
                        py_keys.insert((key.tgid, key.py_stack));
                    }
                    st.off_cpu_ns += ns;
                    st.keys += 1;
                },
            )
            .context("draining the off-CPU map failed")?;
            // Stacks stored before this window (and whole deep stacks) come
            // from the carry; those used now stay in it.
            let (off_keys, carry) = (&self.off_keys, &mut self.carry);
            for key in off_keys {
                for h in [key.user_stack, key.kernel_stack, key.py_stack] {
                    if h == 0 {
                        continue;
                    }
                    match agg.stacks.get(h) {
                        Some(f) => carry.insert(h, f),
                        None => {
                            if let Some(f) = carry.get(h) {
                                agg.stacks.insert(h, f);
                            }
                        }
                    }
                }
            }
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deep stack arrives as chunks keyed by hashes that chain to the
    /// outermost one (stored as a stack of its own): joined under the
    /// first chunk's hash, in order; a chain missing a chunk keeps what it
    /// has, and chunks that continue others are not stacks of their own.
    /// The carry keeps the newest stacks within its budget, in two
    /// generations: a stack drained one generation ago is still found.
    #[test]
    fn carried_stacks_rotate_within_the_budget() {
        let mut c = Carry::default();
        let big: Vec<u64> = vec![7; CARRY_FRAMES / 2];
        c.insert(1, &[1, 2, 3]);
        c.insert(2, &big);
        c.insert(3, &big); // over budget: generation 1 becomes old
        assert_eq!(c.get(1), Some(&[1, 2, 3][..]));
        c.insert(4, &big);
        c.insert(5, &big); // and again: stack 1 is gone
        assert_eq!(c.get(1), None);
        assert!(c.get(5).is_some() && c.get(4).is_some());
        assert!(c.new.frames.len() + c.old.frames.len() <= 2 * CARRY_FRAMES);
    }

    #[test]
    fn chunks_join_into_whole_stacks() {
        let mut stacks = StackTable::default();
        let mut c = Chains::default();
        let head: Vec<u64> = (0..127).collect();
        let mid: Vec<u64> = (127..254).collect();
        let tail: Vec<u64> = (254..300).collect();
        stacks.insert(30, &tail);
        c.add(20, &mid, 30);
        c.add(10, &head, 20);
        c.add(40, &[1, 2, 3], 99); // its next chunk was never stored
        c.join_into(&mut stacks);
        let whole: Vec<u64> = (0..300).collect();
        assert_eq!(stacks.get(10), Some(&whole[..]));
        assert_eq!(stacks.get(40), Some(&[1, 2, 3][..]));
        assert_eq!(stacks.get(20), None, "a continuation is no stack");
        assert!(c.index.is_empty() && c.frames.is_empty());
    }
}
