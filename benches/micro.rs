//! Criterion micro-benchmarks of ember's hot userspace paths, in pipeline
//! order: the BPF map drain, symbolization (cold and cached), building and
//! encoding a pprof profile, and rendering folded stacks and SVG.
//!
//! Run with `cargo bench --bench micro` (as root for the `drain` group, which
//! loads the real BPF sampler) or `cargo bench --bench micro -- --quick`.
//! Every input is prepared outside the timed code; the profile fixtures use
//! real code addresses of this very process, so symbolization does the work
//! it does in production.

use std::collections::HashSet;
use std::hint::black_box;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use libbpf_rs::{MapCore, MapFlags};
use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use prost::Message;

use ember::aggregate::{Aggregate, Drainer};
use ember::export::{folded, svg, ExportOptions};
use ember::process::{BinaryId, FileKey, ProcessTable};
use ember::profile::{self, pprof, BuildOptions, Profile};
use ember::sample::{self, abi, SampleKey, Sampler, Targets, STACK_TRACE_SIZE};
use ember::symbolize::Symbolizer;

/// Frames per synthetic stack.
const DEPTH: usize = 20;
/// Distinct stacks (and count-map keys) in the profile fixture.
const PROFILE_STACKS: usize = 5_000;
/// Frames per synthetic kernel stack (a quarter of the samples have one).
const KERNEL_DEPTH: usize = 10;
/// Function addresses taken from this executable / from its libraries.
const EXE_FUNCTIONS: usize = 3_000;
const LIB_FUNCTIONS: usize = 1_000;

/// Small deterministic PRNG (xorshift64*), so every run benches the same data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A distinct, non-zero stack hash for stack `i` of a family `salt`.
fn stack_hash(salt: u64, i: usize) -> u64 {
    (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt
}

fn comm(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = s.len().min(15);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// `struct sample_key` (bpf/ember.h) as the kernel stores it.
fn key_bytes(k: &SampleKey, out: &mut Vec<u8>) {
    out.extend_from_slice(abi::bytes_of(k));
}

/// `struct stack_trace` (bpf/ember.h) as the kernel stores it.
fn stack_bytes(frames: &[u64], out: &mut Vec<u8>) {
    out.extend_from_slice(abi::bytes_of(&abi::stack_trace(frames)));
}

// ---------------------------------------------------------------------------
// drain

/// One generation's worth of kernel map contents, serialized for
/// `bpf_map_update_batch`.
struct DrainInput {
    n: usize,
    keys: Vec<u8>,
    counts: Vec<u8>,
    stack_keys: Vec<u8>,
    stack_values: Vec<u8>,
}

impl DrainInput {
    /// `n` count-map entries, each with its own distinct `DEPTH`-frame user
    /// stack (the worst case for the drain: every key brings a new stack).
    fn new(n: usize) -> DrainInput {
        let pid = std::process::id();
        let mut rng = Rng(0x5eed ^ n as u64);
        let mut d = DrainInput {
            n,
            keys: Vec::with_capacity(n * 64),
            counts: Vec::with_capacity(n * 8),
            stack_keys: Vec::with_capacity(n * 8),
            stack_values: Vec::with_capacity(n * STACK_TRACE_SIZE),
        };
        let mut frames = [0u64; DEPTH];
        for i in 0..n {
            let hash = stack_hash(0xd2a1, i);
            for f in &mut frames {
                *f = 0x5555_5555_0000 + (rng.next() & 0xf_ffff);
            }
            d.stack_keys.extend_from_slice(&hash.to_ne_bytes());
            stack_bytes(&frames, &mut d.stack_values);
            let key = SampleKey {
                tgid: pid,
                tid: pid + (i % 8) as u32,
                user_stack: hash,
                comm: comm("micro"),
                thread_comm: comm(&format!("worker-{}", i % 8)),
                ..Default::default()
            };
            key_bytes(&key, &mut d.keys);
            d.counts
                .extend_from_slice(&(1 + (i % 5) as u64).to_ne_bytes());
        }
        d
    }

    /// Writes everything into generation `g`'s maps (not timed).
    fn fill(&self, s: &Sampler, g: usize) -> libbpf_rs::Result<()> {
        let n = self.n as u32;
        s.stacks_map(g).update_batch(
            &self.stack_keys,
            &self.stack_values,
            n,
            MapFlags::ANY,
            MapFlags::ANY,
        )?;
        s.counts_map(g)
            .update_batch(&self.keys, &self.counts, n, MapFlags::ANY, MapFlags::ANY)
    }
}

/// `drain`: `Drainer::drain` on the real BPF sampler's maps: flip the
/// generation (an RCU grace period through membarrier), then batch
/// lookup-and-delete the old generation's stacks and counts into a cleared
/// `Aggregate`. It runs every tick of the agent and `record` loop, so its
/// cost bounds how often ember can drain and how full the maps may get.
/// The maps are filled from userspace before each iteration (not timed);
/// `0` is the fixed cost of a drain with nothing to read.
fn bench_drain(c: &mut Criterion) {
    let cfg = sample::Config {
        frequency: 1,
        targets: Targets::Pids {
            pids: vec![std::process::id()],
            parents: Vec::new(),
            follow: false,
        },
        kernel_stacks: false,
        count_map_entries: 16_384,
        stack_map_entries: 16_384,
        unwind_tables: false,
        ..Default::default()
    };
    let mut sampler = match Sampler::start(&cfg) {
        Ok(s) => s,
        Err(e) => {
            use std::os::unix::fs::MetadataExt;
            let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
            let why = if root {
                "the BPF sampler did not start"
            } else {
                "the drain benchmark needs root (CAP_BPF and CAP_PERFMON) to load the BPF sampler"
            };
            println!("drain: skipped: {why} ({e:#})");
            return;
        }
    };
    let mut drainer = Drainer::default();
    let mut agg = Aggregate::default();
    // The generation the BPF program writes, which the next drain flips away
    // from and reads: the sampler starts at 0 and each drain flips it.
    let mut generation = 0usize;
    let mut warned = false;

    let mut group = c.benchmark_group("drain");
    for n in [0usize, 1_000, 10_000] {
        let input = DrainInput::new(n);
        if n > 0 {
            group.throughput(Throughput::Elements(n as u64));
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &input, |b, input| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    agg.clear();
                    if n > 0 {
                        if let Err(e) = input.fill(&sampler, generation) {
                            if !warned {
                                println!("drain: filling the BPF maps failed: {e}");
                                warned = true;
                            }
                        }
                    }
                    let start = Instant::now();
                    let r = drainer.drain(&mut sampler, &mut agg);
                    timed += start.elapsed();
                    generation ^= 1;
                    match r {
                        // A sample of this process may add a key or two.
                        Ok(st) if st.keys >= n && st.stacks >= n && st.keys <= n + 64 => {}
                        Ok(st) if !warned => {
                            println!(
                                "drain: read {} keys and {} stacks, expected {n} of each",
                                st.keys, st.stacks
                            );
                            warned = true;
                        }
                        Err(e) if !warned => {
                            println!("drain: failed: {e:#}");
                            warned = true;
                        }
                        _ => {}
                    }
                    black_box(&agg);
                }
                timed
            })
        });
    }
    group.finish();
    sampler.stop();
}

// ---------------------------------------------------------------------------
// Fixtures with real addresses of this process

/// Code of this process: a set of function addresses in its executable and
/// libraries, and an aggregate of synthetic stacks made of them.
struct Fixture {
    pid: u32,
    /// File offsets of functions of this executable, sorted, distinct.
    exe_offsets: Vec<u64>,
    /// File offsets of every executable frame of `agg`'s user stacks in
    /// stack order, duplicates included: what `profile::build` hands
    /// `symbolize_binary` for this binary.
    exe_frame_offsets: Vec<u64>,
    agg: Aggregate,
    opts: BuildOptions,
    /// `agg` built into a profile.
    profile: Profile,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(Fixture::new)
}

/// An address inside this executable's code.
#[inline(never)]
fn anchor() -> u64 {
    black_box(anchor as fn() -> u64) as usize as u64
}

/// Text symbols of an ELF file as file offsets of a point inside each.
fn function_offsets(path: &str) -> Vec<u64> {
    let Ok(data) = std::fs::read(path) else {
        return Vec::new();
    };
    let Ok(obj) = object::File::parse(&*data) else {
        return Vec::new();
    };
    let mut syms: Vec<_> = obj.symbols().collect();
    if syms.is_empty() {
        syms = obj.dynamic_symbols().collect();
    }
    let mut out: Vec<u64> = syms
        .iter()
        .filter(|s| s.kind() == SymbolKind::Text && s.is_definition() && s.size() >= 2)
        .filter_map(|s| {
            let sec = obj.section_by_index(s.section_index()?).ok()?;
            let (file_start, _) = sec.file_range()?;
            let inside = s.address() + s.size() / 2;
            Some(inside.checked_sub(sec.address())? + file_start)
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// `n` evenly spread elements of `v`.
fn spread(v: &[u64], n: usize) -> Vec<u64> {
    if v.len() <= n {
        return v.to_vec();
    }
    (0..n).map(|i| v[i * v.len() / n]).collect()
}

/// Kernel text addresses from /proc/kallsyms (empty when they are hidden).
fn kernel_functions(n: usize) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    let all: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let addr = u64::from_str_radix(it.next()?, 16).ok()?;
            let kind = it.next()?;
            (addr != 0 && (kind == "t" || kind == "T") && it.nth(1).is_none()).then_some(addr)
        })
        .collect();
    spread(&all, n)
}

/// Tree-shaped stacks, innermost frame first: level `d` from the root picks
/// among `2^(d+1)` functions, so outer frames are shared as in real
/// programs and the stacks diverge towards the leaves. Return addresses
/// (every frame but the leaf) point one byte past the call, as unwound.
fn tree_stacks(n: usize, depth: usize, pool: &[u64], seed: u64) -> Vec<Vec<u64>> {
    let mut rng = Rng(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let mut s: Vec<u64> = (0..depth)
            .map(|d| {
                let width = (2usize << d.min(30)).min(pool.len());
                pool[(d * 131 + rng.below(width)) % pool.len()]
            })
            .collect();
        s.reverse();
        for f in s.iter_mut().skip(1) {
            *f += 1;
        }
        if seen.insert(s.clone()) {
            out.push(s);
        }
    }
    out
}

impl Fixture {
    fn new() -> Fixture {
        let pid = std::process::id();
        let mut procs = ProcessTable::new();
        let mut sym = Symbolizer::new();
        procs.capture(pid);
        let proc = procs
            .process(pid)
            .expect("this process's mappings are readable")
            .clone();
        let exe_key = proc
            .find(anchor())
            .and_then(|m| m.file)
            .expect("this executable is file-backed");

        // Virtual addresses of functions, by file offset through the
        // executable mappings of each file.
        let to_vaddr = |key, fo: u64| {
            proc.mappings
                .iter()
                .find(|m| {
                    m.file == Some(key) && m.offset <= fo && fo < m.offset + (m.end - m.start)
                })
                .map(|m| m.start + fo - m.offset)
        };
        let mut files: Vec<(FileKey, String)> = Vec::new();
        for m in &proc.mappings {
            if let Some(k) = m.file {
                if !files.iter().any(|f| f.0 == k) {
                    files.push((k, m.path.to_string()));
                }
            }
        }
        let exe_offsets: Vec<u64> = {
            let path = &files.iter().find(|f| f.0 == exe_key).unwrap().1;
            spread(&function_offsets(path), EXE_FUNCTIONS)
                .into_iter()
                .filter(|&fo| to_vaddr(exe_key, fo).is_some())
                .collect()
        };
        let mut pool: Vec<u64> = exe_offsets
            .iter()
            .filter_map(|&fo| to_vaddr(exe_key, fo))
            .collect();
        let libs: Vec<_> = files.iter().filter(|f| f.0 != exe_key).collect();
        for (key, path) in &libs {
            let per_lib = LIB_FUNCTIONS / libs.len().max(1);
            pool.extend(
                spread(&function_offsets(path), per_lib)
                    .into_iter()
                    .filter_map(|fo| to_vaddr(*key, fo)),
            );
        }
        // Mix libraries in among the executable's functions.
        let mut rng = Rng(0xf00d);
        for i in (1..pool.len()).rev() {
            pool.swap(i, rng.below(i + 1));
        }

        let kernel = kernel_functions(400);
        let user = tree_stacks(PROFILE_STACKS, DEPTH, &pool, 1);
        let kstacks = if kernel.is_empty() {
            Vec::new()
        } else {
            tree_stacks(PROFILE_STACKS / 4, KERNEL_DEPTH, &kernel, 2)
        };
        let mut agg = Aggregate::default();
        for (i, frames) in user.iter().enumerate() {
            let user_stack = stack_hash(0x05e4, i);
            agg.stacks.insert(user_stack, frames);
            let kernel_stack = match kstacks.get(i / 4) {
                Some(k) if i % 4 == 0 => {
                    let h = stack_hash(0x6e41, i);
                    agg.stacks.insert(h, k);
                    h
                }
                _ => 0,
            };
            let key = SampleKey {
                tgid: pid,
                tid: pid + (i % 4) as u32,
                user_stack,
                kernel_stack,
                comm: comm("micro"),
                thread_comm: comm(&format!("worker-{}", i % 4)),
                ..Default::default()
            };
            agg.counts.insert(key, 1 + (i % 7) as u64);
        }

        let exe_frame_offsets: Vec<u64> = user
            .iter()
            .flat_map(|s| {
                s.iter()
                    .enumerate()
                    .map(|(i, &ip)| if i == 0 { ip } else { ip - 1 })
            })
            .filter_map(|a| {
                proc.find(a)
                    .filter(|m| m.file == Some(exe_key))
                    .map(|m| m.file_offset(a))
            })
            .collect();

        let opts = BuildOptions {
            start: SystemTime::now(),
            duration: Duration::from_secs(10),
            frequency: 99,
            target: "ember micro-benchmark".to_string(),
            off_cpu: false,
        };
        let profile = profile::build(&agg, &mut procs, &mut sym, &opts);
        let raw = pprof::to_proto(&profile).encoded_len();
        let named = profile
            .locations
            .iter()
            .filter(|l| !l.lines.is_empty())
            .count();
        println!(
            "fixture: {} stacks of {DEPTH} frames ({} with kernel stacks), {} functions of this executable + {} of {} libraries, {} kernel functions; profile: {} samples, {} locations ({named} named), {} functions, {} mappings, {raw} pprof bytes",
            user.len(),
            kstacks.len(),
            exe_offsets.len(),
            pool.len() - exe_offsets.len(),
            libs.len(),
            kernel.len(),
            profile.samples.len(),
            profile.locations.len(),
            profile.functions.len(),
            profile.mappings.len(),
        );
        Fixture {
            pid,
            exe_offsets,
            exe_frame_offsets,
            agg,
            opts,
            profile,
        }
    }

    /// A process table that captured this process, a fresh symbolizer,
    /// and this executable's id.
    fn symbolizer(&self) -> (ProcessTable, Symbolizer, BinaryId) {
        let mut procs = ProcessTable::new();
        procs.capture(self.pid);
        let id = procs
            .process(self.pid)
            .and_then(|p| p.find(anchor()))
            .and_then(|m| procs.binary_of(m))
            .expect("this executable is registered");
        (procs, Symbolizer::new(), id)
    }
}

// ---------------------------------------------------------------------------
// symbolize

/// `symbolize`: naming this executable's functions with the product's
/// `Symbolizer`. `cold` is a fresh symbolizer's first batch (blazesym opens
/// and parses the ELF symbol table, then looks every address up): the cost
/// of every binary the first time a process is seen. `warm_batch` is the
/// cache check `profile::build` does per binary on every build (sort,
/// dedup, probe: all hits), fed every frame of the fixture's stacks;
/// `warm_lookup` is the per-location cache read of its second pass
/// (`binary_frames`).
fn bench_symbolize(c: &mut Criterion) {
    let fx = fixture();
    let mut group = c.benchmark_group("symbolize");

    let n = fx.exe_offsets.len() as u64;
    group.throughput(Throughput::Elements(n));
    group.bench_function(BenchmarkId::new("cold", n), |b| {
        b.iter_batched(
            || {
                let (procs, sym, id) = fx.symbolizer();
                (procs, sym, id, fx.exe_offsets.clone())
            },
            |(mut procs, mut sym, id, mut offsets)| {
                sym.symbolize_binary(&mut procs, id, &mut offsets);
                (procs, sym)
            },
            BatchSize::PerIteration,
        )
    });

    let (mut procs, mut sym, id) = fx.symbolizer();
    sym.symbolize_binary(&mut procs, id, &mut fx.exe_offsets.clone());
    sym.symbolize_binary(&mut procs, id, &mut fx.exe_frame_offsets.clone());

    let n = fx.exe_frame_offsets.len() as u64;
    group.throughput(Throughput::Elements(n));
    group.bench_function(BenchmarkId::new("warm_batch", n), |b| {
        b.iter_batched(
            || fx.exe_frame_offsets.clone(),
            |mut offsets| {
                sym.symbolize_binary(&mut procs, id, &mut offsets);
                offsets
            },
            BatchSize::LargeInput,
        )
    });

    let n = fx.exe_offsets.len() as u64;
    group.throughput(Throughput::Elements(n));
    group.bench_function(BenchmarkId::new("warm_lookup", n), |b| {
        b.iter(|| {
            for &o in &fx.exe_offsets {
                black_box(sym.binary_frames(id, o));
            }
        })
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// pprof

/// `pprof_encode`: `profile::build` of the fixture aggregate with a warm
/// symbolizer (what the agent does per target every window, and `record`
/// once at the end: refresh the process, cache checks, interning of
/// mappings, functions and locations), then the pprof file encoding
/// `pprof::write` (`to_proto`, protobuf encode, gzip), and the two halves of
/// that apart.
fn bench_pprof(c: &mut Criterion) {
    let fx = fixture();
    let samples = fx.profile.samples.len() as u64;
    let mut group = c.benchmark_group("pprof_encode");
    group.throughput(Throughput::Elements(samples));

    let (mut procs, mut sym, _) = fx.symbolizer();
    black_box(profile::build(&fx.agg, &mut procs, &mut sym, &fx.opts));
    group.bench_function(BenchmarkId::new("build", samples), |b| {
        b.iter(|| profile::build(&fx.agg, &mut procs, &mut sym, &fx.opts))
    });

    let mut out = Vec::new();
    group.bench_function(BenchmarkId::new("write_gzip", samples), |b| {
        b.iter(|| {
            out.clear();
            pprof::write(&fx.profile, &mut out).expect("writing to memory");
            out.len()
        })
    });
    group.bench_function(BenchmarkId::new("to_proto_encode", samples), |b| {
        b.iter(|| pprof::to_proto(&fx.profile).encode_to_vec())
    });
    let raw = pprof::to_proto(&fx.profile).encode_to_vec();
    group.bench_function(BenchmarkId::new("gzip", samples), |b| {
        b.iter(|| pprof::gzip(&raw))
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// folded, svg

/// `folded`: `export::folded::write` of the fixture profile (one string per
/// sample, merged in a BTreeMap), plain and with per-thread frames: the
/// `.folded` output, and the first half of every SVG.
fn bench_folded(c: &mut Criterion) {
    let fx = fixture();
    let samples = fx.profile.samples.len() as u64;
    let mut group = c.benchmark_group("folded");
    group.throughput(Throughput::Elements(samples));
    let mut out = Vec::new();
    for threads in [false, true] {
        let name = if threads { "threads" } else { "plain" };
        group.bench_function(BenchmarkId::new(name, samples), |b| {
            b.iter(|| {
                out.clear();
                folded::write(
                    &fx.profile,
                    &mut out,
                    ExportOptions {
                        threads,
                        ..Default::default()
                    },
                )
                .expect("writing to memory");
                out.len()
            })
        });
    }
    group.finish();
}

/// `svg`: `export::svg::write` of the fixture profile (folded lines, then
/// inferno's flamegraph layout and SVG writer): the `record` default output
/// and `ember query -f svg`.
fn bench_svg(c: &mut Criterion) {
    let fx = fixture();
    let samples = fx.profile.samples.len() as u64;
    let mut group = c.benchmark_group("svg");
    // About 0.2 s an iteration: ten samples need a little more time.
    group.measurement_time(Duration::from_secs(3));
    group.throughput(Throughput::Elements(samples));
    let mut out = Vec::new();
    group.bench_function(BenchmarkId::new("write", samples), |b| {
        b.iter(|| {
            out.clear();
            svg::write(&fx.profile, &mut out, ExportOptions::default()).expect("writing to memory");
            out.len()
        })
    });
    group.finish();
}

/// Short runs: ten samples in two seconds per benchmark keeps the whole
/// suite near a minute on two cores (command-line flags still override).
fn config() -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = micro;
    config = config();
    targets = bench_drain, bench_symbolize, bench_pprof, bench_folded, bench_svg
}
criterion_main!(micro);
