//! aggregate: drains the sampler's kernel maps into userspace counts.
//!
//! Each drain flips the sampler to the other generation of maps, waits for
//! in-flight samples, then reads and deletes the old generation in batches.
//! Stacks are interned by the hash the BPF program computed, so a stack seen
//! in an earlier drain is never copied again, and no allocation happens per
//! sample: only per new distinct stack or key.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{Context, Result};

use crate::sample::{SampleKey, Sampler, MAX_DEPTH, STACK_TRACE_SIZE};

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
}

impl Aggregate {
    /// Total samples held.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Adds everything in `other` (a drain's worth) to this aggregate.
    pub fn merge_from(&mut self, other: &Aggregate) {
        for (key, &n) in &other.counts {
            for h in [key.user_stack, key.kernel_stack] {
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
    }

    /// Empties the aggregate, keeping its allocations for the next drain.
    pub fn clear(&mut self) {
        self.stacks.clear();
        self.counts.clear();
    }

    /// Distinct processes (tgids) seen.
    pub fn processes(&self) -> usize {
        let mut pids: Vec<u32> = self.counts.keys().map(|k| k.tgid).collect();
        pids.sort_unstable();
        pids.dedup();
        pids.len()
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
}

/// Reusable buffers for draining; one per sampler.
pub struct Drainer {
    keys: Vec<u8>,
    values: Vec<u8>,
}

const BATCH: usize = 256;

impl Default for Drainer {
    fn default() -> Self {
        Drainer {
            keys: vec![0; BATCH * std::mem::size_of::<SampleKey>().max(8)],
            values: vec![0; BATCH * STACK_TRACE_SIZE.max(8)],
        }
    }
}

impl Drainer {
    /// Moves everything counted since the last drain into `agg`.
    pub fn drain(&mut self, sampler: &mut Sampler, agg: &mut Aggregate) -> Result<DrainStats> {
        let g = sampler.flip_generation();
        let mut st = DrainStats::default();

        // Stacks first, so every key read next finds its stacks.
        let fd = sampler.stacks_map(g).as_fd().as_raw_fd();
        batch_drain(
            fd,
            8,
            STACK_TRACE_SIZE,
            &mut self.keys,
            &mut self.values,
            |k, v| {
                let hash = u64::from_ne_bytes(k.try_into().unwrap());
                let len = (u32::from_ne_bytes(v[..4].try_into().unwrap()) as usize).min(MAX_DEPTH);
                let ips = &v[8..8 + len * 8];
                // Frames are u64 in native order; copy without allocating.
                let mut frames = [0u64; MAX_DEPTH];
                for (f, c) in frames.iter_mut().zip(ips.chunks_exact(8)) {
                    *f = u64::from_ne_bytes(c.try_into().unwrap());
                }
                agg.stacks.insert(hash, &frames[..len]);
                st.stacks += 1;
            },
        )
        .context("draining the stack map failed")?;

        let fd = sampler.counts_map(g).as_fd().as_raw_fd();
        batch_drain(
            fd,
            std::mem::size_of::<SampleKey>(),
            8,
            &mut self.keys,
            &mut self.values,
            |k, v| {
                // SAFETY: SampleKey is repr(C) plain data of exactly this size.
                let key: SampleKey =
                    unsafe { std::ptr::read_unaligned(k.as_ptr() as *const SampleKey) };
                let n = u64::from_ne_bytes(v[..8].try_into().unwrap());
                *agg.counts.entry(key).or_insert(0) += n;
                st.samples += n;
                st.keys += 1;
            },
        )
        .context("draining the count map failed")?;
        Ok(st)
    }
}

/// Reads and deletes every entry of a hash map with BPF batch operations.
fn batch_drain(
    fd: i32,
    key_size: usize,
    value_size: usize,
    keys: &mut Vec<u8>,
    values: &mut Vec<u8>,
    mut each: impl FnMut(&[u8], &[u8]),
) -> std::io::Result<()> {
    let mut cap = (keys.len() / key_size)
        .min(values.len() / value_size)
        .max(BATCH);
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    let mut token = 0u64;
    let mut first = true;
    loop {
        if keys.len() < cap * key_size {
            keys.resize(cap * key_size, 0);
        }
        if values.len() < cap * value_size {
            values.resize(cap * value_size, 0);
        }
        let mut count = cap as u32;
        let mut next = 0u64;
        // SAFETY: the buffers hold `cap` keys and values; the batch tokens
        // are u64-sized (hash maps use a u32 bucket index).
        let r = unsafe {
            libbpf_sys::bpf_map_lookup_and_delete_batch(
                fd,
                if first {
                    std::ptr::null_mut()
                } else {
                    &mut token as *mut u64 as *mut _
                },
                &mut next as *mut u64 as *mut _,
                keys.as_mut_ptr() as *mut _,
                values.as_mut_ptr() as *mut _,
                &mut count,
                &opts,
            )
        };
        if r == -libc::ENOSPC {
            // One bucket holds more entries than fit: grow and retry it.
            cap *= 2;
            continue;
        }
        if r < 0 && r != -libc::ENOENT {
            return Err(std::io::Error::from_raw_os_error(-r));
        }
        for i in 0..count as usize {
            each(
                &keys[i * key_size..(i + 1) * key_size],
                &values[i * value_size..(i + 1) * value_size],
            );
        }
        if r == -libc::ENOENT {
            return Ok(());
        }
        token = next;
        first = false;
    }
}
