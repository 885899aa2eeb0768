//! The pipeline core without root or BPF: a hand-built profile (user,
//! kernel, JIT, inline and marker frames; two processes; named threads)
//! against reference outputs checked in under `tests/data/golden/` (folded,
//! SVG, pprof, the last also read by `go tool pprof`), pprof round trips
//! through the decoder and the merger, splitting, and `Aggregate`.
//!
//! `EMBER_BLESS=1 cargo test --release --test pipeline` rewrites the
//! references from the current output; review the diff before committing.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use ember::aggregate::Aggregate;
use ember::export::{self, folded, svg, ExportOptions, Format};
use ember::profile::merge::Merger;
use ember::profile::pprof::{self, proto, EncodeOptions};
use ember::profile::{BuildOptions, Builder, Frame, FrameKind, Marker, Profile};
use ember::sample::{SampleKey, SAMPLE_TRUNCATED};
use prost::Message;

fn frame<'a>(name: &'a Arc<str>, file: Option<&'a Arc<str>>, line: u32) -> Frame<'a> {
    Frame {
        name,
        system_name: name,
        file,
        line,
    }
}

/// Samples in the fixture.
const TOTAL: u64 = 22;

/// The hand-built profile every test here starts from: a C server (pid
/// 4100, two threads), a Node process (pid 5200, two threads) and a Python
/// process (pid 6300).
fn fixture() -> Profile {
    let s = |x: &str| -> Arc<str> { Arc::from(x) };
    let mut b = Builder::new();

    let server_bin = s("/usr/bin/server");
    let libc_so = s("/usr/lib/x86_64-linux-gnu/libc.so.6");
    let node_bin = s("/usr/bin/node");
    let server = b.mapping(
        0x55d0_0000_0000,
        0x55d0_0010_0000,
        0,
        &server_bin,
        "5e1ec7ed5e1ec7ed5e1ec7ed5e1ec7ed5e1ec7ed",
    );
    let libc = b.mapping(
        0x7f10_0000_0000,
        0x7f10_0020_0000,
        0x28000,
        &libc_so,
        "11bc11bc11bc11bc11bc11bc11bc11bc11bc11bc",
    );
    let node = b.mapping(0x56a0_0000_0000, 0x56a0_0400_0000, 0, &node_bin, "");

    let (server_c, parse_h, node_cc) = (s("src/server.c"), s("src/parse.h"), s("src/node.cc"));
    let (main, parse, memcpy, read) = (s("main"), s("parse_header"), s("memcpy"), s("read"));
    let (handle, handle_sys) = (s("server::handle"), s("_ZN6server6handleEv"));
    let node_start = s("node::Start");

    let l_main = b.user(
        Some(server),
        0x55d0_0000_1100,
        [frame(&main, Some(&server_c), 10)],
    );
    // parse_header inlined into server::handle: one location, two lines.
    let l_handle = b.user(
        Some(server),
        0x55d0_0000_2200,
        [
            frame(&parse, Some(&parse_h), 7),
            Frame {
                name: &handle,
                system_name: &handle_sys,
                file: Some(&server_c),
                line: 42,
            },
        ],
    );
    let l_memcpy = b.user(Some(libc), 0x7f10_0001_0000, [frame(&memcpy, None, 0)]);
    let l_read = b.user(Some(libc), 0x7f10_0002_0000, [frame(&read, None, 0)]);
    let l_unnamed = b.user(Some(server), 0x55d0_0000_9abc, []);
    let l_unmapped = b.user(None, 0x1234, []);
    let (vfs_read, ksys_read, syscall) = (s("vfs_read"), s("ksys_read"), s("do_syscall_64"));
    let l_k1 = b.kernel(0xffff_ffff_8130_1000, [frame(&vfs_read, None, 0)]);
    let l_k2 = b.kernel(0xffff_ffff_8130_2000, [frame(&ksys_read, None, 0)]);
    let l_k3 = b.kernel(0xffff_ffff_8100_3000, [frame(&syscall, None, 0)]);
    let l_kunknown = b.kernel(0xffff_ffff_c000_0000, []);
    let l_jit_hot = b.jit(
        Some(0x3a00_0000_0000..0x3a00_0100_0000),
        0x3a00_0000_4000,
        &s("LazyCompile:*hotLoop /app/server.js:3"),
    );
    let l_jit_builtin = b.jit(None, 0x3b00_0000_0000, &s("Builtin:ArrayForEach"));
    let l_node = b.user(
        Some(node),
        0x56a0_0000_5000,
        [frame(&node_start, Some(&node_cc), 1200)],
    );
    // A CPython process: two Python functions over the interpreter's main.
    let python_bin = s("/usr/bin/python3.11");
    let python = b.mapping(0x5600_0000_0000, 0x5600_0040_0000, 0, &python_bin, "");
    let (app_py, work, module, py_main) = (
        s("/srv/app.py"),
        s("Worker.run"),
        s("<module>"),
        s("Py_BytesMain"),
    );
    let l_py_work = b.python(0x7f20_0000_1000, Some(frame(&work, Some(&app_py), 12)));
    let l_py_module = b.python(0x7f20_0000_2000, Some(frame(&module, Some(&app_py), 30)));
    let l_py_main = b.user(Some(python), 0x5600_0000_3000, [frame(&py_main, None, 0)]);
    let l_truncated = b.marker(Marker::Truncated, "[truncated]");
    let l_lost_user = b.marker(Marker::LostUser, "[lost user stack: not readable]");
    let l_lost_kernel = b.marker(Marker::LostKernel, "[lost kernel stack: stack map full]");

    b.sample(
        &[l_memcpy, l_handle, l_main],
        5,
        4100,
        4100,
        "server",
        "server",
    );
    b.sample(
        &[l_k1, l_k2, l_k3, l_read, l_handle, l_main],
        3,
        4100,
        4101,
        "server",
        "worker-1",
    );
    b.sample(
        &[l_unnamed, l_main, l_truncated],
        2,
        4100,
        4101,
        "server",
        "worker-1",
    );
    b.sample(
        &[l_jit_hot, l_jit_builtin, l_node],
        7,
        5200,
        5200,
        "node",
        "node",
    );
    b.sample(
        &[l_kunknown, l_k3, l_lost_user],
        1,
        5200,
        5207,
        "node",
        "libuv-worker",
    );
    b.sample(
        &[l_lost_kernel, l_jit_hot, l_node],
        1,
        5200,
        5207,
        "node",
        "libuv-worker",
    );
    b.sample(&[l_unmapped], 1, 5200, 5200, "node", "node");
    b.sample(
        &[l_py_work, l_py_module, l_py_main],
        2,
        6300,
        6300,
        "python3",
        "python3",
    );

    let mut p = b.finish(&BuildOptions {
        start: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        duration: Duration::from_millis(10_500),
        frequency: 99,
        target: "golden fixture".into(),
        off_cpu: false,
    });
    p.labels = [("service_name", "golden"), ("node", "test-node")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p
}

// ---------------------------------------------------------------------------
// Golden outputs

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/golden")
        .join(name)
}

fn blessing() -> bool {
    std::env::var_os("EMBER_BLESS").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Compares `got` with the reference `name`, or rewrites the reference
/// under `EMBER_BLESS=1`.
fn check_golden(name: &str, got: &[u8]) {
    let path = golden_path(name);
    if blessing() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}); run with EMBER_BLESS=1 to create it",
            path.display()
        )
    });
    if want != got {
        let actual = path.with_extension(format!(
            "{}.actual",
            path.extension().unwrap().to_string_lossy()
        ));
        std::fs::write(&actual, got).unwrap();
        panic!(
            "{} differs from the reference; the output is in {} (run with EMBER_BLESS=1 to accept it)",
            path.display(),
            actual.display()
        );
    }
}

#[test]
fn golden_folded() {
    let p = fixture();
    for (threads, name) in [(false, "profile.folded"), (true, "profile.threads.folded")] {
        let mut out = Vec::new();
        folded::write(
            &p,
            &mut out,
            ExportOptions {
                threads,
                ..Default::default()
            },
        )
        .unwrap();
        check_golden(name, &out);
    }
}

/// inferno picks frame colors at random: they are the one part of its
/// output that changes from run to run.
fn normalize_svg(svg: &str) -> String {
    let mut out = String::with_capacity(svg.len());
    let mut rest = svg;
    while let Some(i) = rest.find("fill=\"rgb(") {
        let (head, tail) = rest.split_at(i);
        out.push_str(head);
        let end = tail.find(")\"").expect("a closed rgb()") + 2;
        out.push_str("fill=\"rgb(0,0,0)\"");
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[test]
fn golden_svg() {
    let p = fixture();
    let mut out = Vec::new();
    svg::write(&p, &mut out, ExportOptions::default()).unwrap();
    let text = String::from_utf8(out).unwrap();
    check_golden("profile.svg", normalize_svg(&text).as_bytes());
}

/// ember's version is in the first comment; the reference holds a fixed one
/// so a version bump does not change it.
fn normalize_proto(mut p: proto::Profile) -> proto::Profile {
    let ours = format!("ember {}: ", env!("CARGO_PKG_VERSION"));
    for s in &mut p.string_table {
        if let Some(rest) = s.strip_prefix(&ours) {
            *s = format!("ember VERSION: {rest}");
        }
    }
    p
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut out).unwrap();
    out
}

#[test]
fn golden_pprof() {
    let p = fixture();
    // What `ember record -o x.pb.gz` writes, uncompressed (so a new gzip
    // implementation does not change the reference) and version-free.
    let mut gz = Vec::new();
    export::write_to(&p, Format::Pprof, &mut gz, ExportOptions::default()).unwrap();
    let written = proto::Profile::decode(&gunzip(&gz)[..]).unwrap();
    assert_eq!(written, pprof::to_proto(&p));
    let bytes = normalize_proto(written).encode_to_vec();
    check_golden("profile.pb", &bytes);

    // An independent decoder reads the reference: totals and names agree.
    let path = golden_path("profile.pb");
    assert_eq!(common::go_pprof_total(&path), TOTAL);
    let out = std::process::Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(&path)
        .output()
        .expect("running go tool pprof");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw = String::from_utf8_lossy(&out.stdout);
    for name in [
        "main",
        "parse_header",
        "server::handle",
        "memcpy",
        "vfs_read",
        "do_syscall_64",
        "LazyCompile:*hotLoop /app/server.js:3",
        "Builtin:ArrayForEach",
        "node::Start",
        "[truncated]",
        "[lost user stack: not readable]",
        "[lost kernel stack: stack map full]",
        "[kernel.kallsyms]",
        "[jit]",
    ] {
        assert!(
            raw.contains(name),
            "go tool pprof -raw has no {name:?}:\n{raw}"
        );
    }
}

// ---------------------------------------------------------------------------
// Round trips

/// Each location as (kind, frame names innermost first, or its display
/// name when unsymbolized), with the samples it appears in.
fn kinds_by_frame(p: &Profile) -> BTreeMap<(String, Vec<String>), u64> {
    let mut out = BTreeMap::new();
    for s in &p.samples {
        for &l in &s.locations {
            let loc = &p.locations[l as usize];
            let names: Vec<String> = if loc.lines.is_empty() {
                vec![p.frame_name(loc, None)]
            } else {
                loc.lines
                    .iter()
                    .map(|ln| p.frame_name(loc, Some(ln)))
                    .collect()
            };
            *out.entry((format!("{:?}", loc.kind), names)).or_default() += s.count;
        }
    }
    out
}

/// Samples as (pid, tid, comm, thread name, frames leaf first) → count.
fn stacks(p: &Profile) -> BTreeMap<(u32, u32, String, String, Vec<String>), u64> {
    let mut out = BTreeMap::new();
    for s in &p.samples {
        let frames = s
            .locations
            .iter()
            .flat_map(|&l| {
                let loc = &p.locations[l as usize];
                let names: Vec<String> = if loc.lines.is_empty() {
                    vec![p.frame_name(loc, None)]
                } else {
                    loc.lines
                        .iter()
                        .map(|ln| p.frame_name(loc, Some(ln)))
                        .collect()
                };
                names
                    .into_iter()
                    .map(move |n| format!("{n} {:?}", loc.kind))
            })
            .collect();
        let key = (
            s.pid,
            s.tid,
            s.comm.to_string(),
            s.thread_name.to_string(),
            frames,
        );
        *out.entry(key).or_default() += s.count;
    }
    out
}

fn doubled<K: Ord>(m: BTreeMap<K, u64>) -> BTreeMap<K, u64> {
    m.into_iter().map(|(k, v)| (k, 2 * v)).collect()
}

fn pprof_bytes(p: &Profile) -> Vec<u8> {
    let mut out = Vec::new();
    pprof::write(p, &mut out).unwrap();
    out
}

#[test]
fn fixture_has_every_kind() {
    let p = fixture();
    let kinds: std::collections::HashSet<FrameKind> = p.locations.iter().map(|l| l.kind).collect();
    for k in FrameKind::ALL {
        assert!(kinds.contains(&k), "no {k:?} location");
        if let Some(file) = k.mapping_file() {
            assert_eq!(FrameKind::of_mapping_file(file), k);
        }
    }
    assert_eq!(p.total(), TOTAL);
}

#[test]
fn pprof_round_trip_keeps_everything() {
    let p = fixture();
    let q = pprof::read_profile(&pprof_bytes(&p)).unwrap();
    assert_eq!(q.total(), TOTAL);
    assert_eq!(q.start, p.start);
    assert_eq!(q.duration, p.duration);
    assert_eq!(q.frequency, p.frequency);
    assert_eq!(q.target, p.target);
    assert_eq!(q.labels, p.labels);
    let names = |p: &Profile| -> Vec<String> {
        let mut v: Vec<String> = p.functions.iter().map(|f| f.name.to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(names(&q), names(&p));
    assert_eq!(kinds_by_frame(&q), kinds_by_frame(&p));
    assert_eq!(stacks(&q), stacks(&p));
    for (a, b) in p.mappings.iter().zip(&q.mappings) {
        assert_eq!(
            (&a.file, &a.build_id, a.has_functions, a.has_inline_frames),
            (&b.file, &b.build_id, b.has_functions, b.has_inline_frames)
        );
    }
    // And so do the text outputs.
    for threads in [false, true] {
        let o = ExportOptions {
            threads,
            ..Default::default()
        };
        assert_eq!(folded::lines(&q, o), folded::lines(&p, o));
    }
}

#[test]
fn merging_a_profile_with_itself_doubles_counts_and_keeps_kinds() {
    let p = fixture();
    let bytes = pprof_bytes(&p);
    let stored = pprof::read(&bytes).unwrap();

    // The store's path (pprof messages) and the decoded one agree.
    let mut m = Merger::new("merged".into());
    m.add(&stored, |_| true);
    m.add_profile(&pprof::to_profile(&stored), |_| true);
    let merged = m.finish();

    assert_eq!(merged.total(), 2 * TOTAL);
    assert_eq!(merged.target, "merged");
    assert_eq!(merged.labels, p.labels);
    assert_eq!(merged.start, p.start);
    assert_eq!(merged.duration, p.duration);
    // Equal entries coincide: the tables do not grow.
    assert_eq!(merged.samples.len(), p.samples.len());
    assert_eq!(merged.locations.len(), p.locations.len());
    assert_eq!(merged.functions.len(), p.functions.len());
    assert_eq!(merged.mappings.len(), p.mappings.len());
    assert_eq!(stacks(&merged), doubled(stacks(&p)));
    assert_eq!(kinds_by_frame(&merged), doubled(kinds_by_frame(&p)));
    let o = ExportOptions {
        threads: true,
        ..Default::default()
    };
    assert_eq!(folded::lines(&merged, o), doubled(folded::lines(&p, o)));

    // The merge itself survives pprof.
    let again = pprof::read_profile(&pprof_bytes(&merged)).unwrap();
    assert_eq!(stacks(&again), stacks(&merged));
}

#[test]
fn merging_filters_pids_and_keeps_common_labels() {
    let p = fixture();
    let mut other = fixture();
    other.start += Duration::from_secs(60);
    other.labels.insert("node".into(), "elsewhere".into());
    other.labels.insert("extra".into(), "x".into());

    let mut m = Merger::new("two windows".into());
    m.add_profile(&p, |pid| pid == 4100);
    m.add_profile(&other, |pid| pid == 4100);
    let merged = m.finish();
    assert!(merged.samples.iter().all(|s| s.pid == 4100));
    assert_eq!(merged.total(), 2 * 10);
    // Only labels every input has, with one value.
    assert_eq!(
        merged.labels,
        BTreeMap::from([("service_name".to_string(), "golden".to_string())])
    );
    // The time range spans both windows.
    assert_eq!(merged.start, p.start);
    assert_eq!(merged.duration, Duration::from_secs(60) + p.duration);
    // No node frames came along.
    assert!(!merged.locations.iter().any(|l| l.kind == FrameKind::Jit));
    assert!(!merged.functions.iter().any(|f| &*f.name == "node::Start"));

    let empty = Merger::new("nothing".into()).finish();
    assert_eq!(empty.total(), 0);
    assert!(empty.samples.is_empty() && empty.labels.is_empty());
}

#[test]
fn split_parts_merge_back_into_the_whole() {
    let p = fixture();
    for (max_samples, thread_names) in [(1, true), (2, false), (3, true), (100, true)] {
        let parts = pprof::split(
            &p,
            EncodeOptions {
                thread_names,
                off_cpu_only: None,
            },
            max_samples,
            usize::MAX,
        );
        assert_eq!(parts.len(), p.samples.len().div_ceil(max_samples));
        let mut m = Merger::new("parts".into());
        for part in &parts {
            assert!(part.sample.len() <= max_samples);
            // Every part refers only to what it holds, with dense ids.
            for (i, l) in part.location.iter().enumerate() {
                assert_eq!(l.id, i as u64 + 1);
                assert!(l.mapping_id as usize <= part.mapping.len());
            }
            m.add(part, |_| true);
        }
        let merged = m.finish();
        assert_eq!(merged.total(), TOTAL);
        assert_eq!(kinds_by_frame(&merged), kinds_by_frame(&p));
        if thread_names {
            assert_eq!(stacks(&merged), stacks(&p));
        } else {
            assert!(merged.samples.iter().all(|s| s.thread_name.is_empty()));
        }
    }
}

/// Files that are not ember's read with every location a user frame, and
/// merging them neither panics nor invents kinds from names.
#[test]
fn kinds_come_from_mappings_not_names() {
    let mut p = proto::Profile {
        string_table: ["", "[lost user stack: x]", "[kernel.kallsyms]", "/bin/x"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    p.function.push(proto::Function {
        id: 7,
        name: 1,
        system_name: 1,
        ..Default::default()
    });
    // Sparse ids, as other writers may use.
    p.mapping.push(proto::Mapping {
        id: 30,
        filename: 3,
        ..Default::default()
    });
    p.mapping.push(proto::Mapping {
        id: 40,
        filename: 2,
        ..Default::default()
    });
    for (id, mapping_id) in [(11, 0), (12, 30), (13, 40), (14, 99)] {
        p.location.push(proto::Location {
            id,
            mapping_id,
            line: vec![proto::Line {
                function_id: 7,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    p.sample.push(proto::Sample {
        location_id: vec![11, 12, 13, 14, 15],
        value: vec![4],
        label: vec![],
    });
    let q = pprof::to_profile(&p);
    let kinds: Vec<FrameKind> = q.samples[0]
        .locations
        .iter()
        .map(|&l| q.locations[l as usize].kind)
        .collect();
    // Location 15 does not exist; 14's mapping does not.
    assert_eq!(
        kinds,
        [
            FrameKind::User,
            FrameKind::User,
            FrameKind::Kernel,
            FrameKind::User
        ]
    );
    assert_eq!(q.total(), 4);
}

// ---------------------------------------------------------------------------
// Aggregate

fn key(tgid: u32, tid: u32, user_stack: u64, kernel_stack: u64) -> SampleKey {
    SampleKey {
        tgid,
        tid,
        user_stack,
        kernel_stack,
        ..Default::default()
    }
}

#[test]
fn aggregate_merge_from_adds_counts_and_stacks() {
    let mut a = Aggregate::default();
    a.stacks.insert(1, &[0x10, 0x20]);
    a.counts.insert(key(1, 1, 1, 0), 3);

    let mut drain = Aggregate::default();
    drain.stacks.insert(1, &[0x10, 0x20]);
    drain.stacks.insert(2, &[0x30]);
    drain.stacks.insert(9, &[0xffff_ffff_8100_0000]);
    drain.counts.insert(key(1, 1, 1, 0), 2);
    drain.counts.insert(key(2, 5, 2, 9), 4);
    let mut truncated = key(2, 5, 2, 0);
    truncated.flags = SAMPLE_TRUNCATED;
    drain.counts.insert(truncated, 1);
    // A stack the drain did not hold is not invented.
    drain.counts.insert(key(3, 3, 77, 0), 1);

    a.merge_from(&drain);
    assert_eq!(a.total(), 3 + 2 + 4 + 1 + 1);
    assert_eq!(a.counts[&key(1, 1, 1, 0)], 5);
    assert_eq!(a.counts[&truncated], 1);
    assert_eq!(a.stacks.len(), 3);
    assert_eq!(a.stacks.get(2), Some(&[0x30u64][..]));
    assert_eq!(a.stacks.get(9), Some(&[0xffff_ffff_8100_0000u64][..]));
    assert_eq!(a.stacks.get(77), None);
    assert_eq!(a.processes(), 3);

    // Merging again doubles what came from the drain.
    a.merge_from(&drain);
    assert_eq!(a.counts[&key(2, 5, 2, 9)], 8);
    assert_eq!(a.stacks.len(), 3);
}

#[test]
fn aggregate_retain_keeps_matching_samples_and_every_stack() {
    let mut a = Aggregate::default();
    a.stacks.insert(1, &[0x10]);
    a.stacks.insert(2, &[0x20]);
    a.counts.insert(key(1, 1, 1, 0), 3);
    a.counts.insert(key(2, 2, 2, 0), 4);
    a.counts.insert(key(2, 3, 1, 0), 5);

    a.retain(|k| k.tgid == 2);
    assert_eq!(a.total(), 9);
    assert_eq!(a.processes(), 1);
    assert!(a.counts.keys().all(|k| k.tgid == 2));
    // Stacks stay interned for later drains.
    assert_eq!(a.stacks.len(), 2);

    a.retain(|_| false);
    assert_eq!(a.total(), 0);
    assert_eq!(a.processes(), 0);

    a.clear();
    assert!(a.stacks.is_empty() && a.counts.is_empty());
}

/// `profile::build` on an aggregate, with a symbolizer that knows no
/// process (so no root is needed): markers follow the sample flags, and
/// frames keep their kinds.
#[test]
fn build_marks_lost_and_truncated_stacks() {
    use ember::sample::{SAMPLE_KERNEL_LOST, SAMPLE_MAP_FULL, SAMPLE_USER_LOST};
    // Above any pid_max, so no process of this host.
    let pid = 0x7fff_fff0;
    let mut agg = Aggregate::default();
    agg.stacks.insert(1, &[0x1000, 0x2001]);
    let mut k = key(pid, pid, 1, 0);
    k.flags = SAMPLE_TRUNCATED | SAMPLE_KERNEL_LOST | SAMPLE_MAP_FULL;
    agg.counts.insert(k, 2);
    let mut lost = key(pid, pid + 1, 0, 0);
    lost.flags = SAMPLE_USER_LOST;
    lost.comm[..4].copy_from_slice(b"test");
    agg.counts.insert(lost, 3);

    let mut procs = ember::process::ProcessTable::new();
    let mut sym = ember::symbolize::Symbolizer::new();
    let p = ember::profile::build(
        &agg,
        &mut procs,
        &mut sym,
        &BuildOptions {
            start: UNIX_EPOCH,
            duration: Duration::from_secs(1),
            frequency: 99,
            target: "no process".into(),
            off_cpu: false,
        },
    );
    assert_eq!(p.total(), 5);
    let by_tid: HashMap<u32, Vec<(FrameKind, String)>> = p
        .samples
        .iter()
        .map(|s| {
            let frames = s
                .locations
                .iter()
                .map(|&l| {
                    let loc = &p.locations[l as usize];
                    (loc.kind, p.frame_name(loc, loc.lines.first()))
                })
                .collect();
            (s.tid, frames)
        })
        .collect();
    assert_eq!(
        by_tid[&pid],
        [
            (
                FrameKind::Marker(Marker::LostKernel),
                "[lost kernel stack: stack map full]".to_string()
            ),
            (FrameKind::User, "[unknown]".to_string()),
            (FrameKind::User, "[unknown]".to_string()),
            (
                FrameKind::Marker(Marker::Truncated),
                "[truncated]".to_string()
            ),
        ]
    );
    assert_eq!(
        by_tid[&(pid + 1)],
        [(
            FrameKind::Marker(Marker::LostUser),
            "[lost user stack: not readable]".to_string()
        )]
    );
    let s = p.samples.iter().find(|s| s.tid == pid + 1).unwrap();
    assert_eq!(&*s.comm, "test");
    // Markers survive pprof.
    let q = pprof::read_profile(&pprof_bytes(&p)).unwrap();
    assert_eq!(kinds_by_frame(&q), kinds_by_frame(&p));
}

// ---------------------------------------------------------------------------
// Process table and symbolizer (no root needed: this process reads its own)

#[inline(never)]
fn own_marker_function(x: u64) -> u64 {
    std::hint::black_box(x.wrapping_mul(31))
}

/// Builds a one-sample profile of this process with `leaf` as its only
/// frame and returns the leaf's function names.
fn own_leaf_names(
    procs: &mut ember::process::ProcessTable,
    sym: &mut ember::symbolize::Symbolizer,
    leaf: u64,
) -> Vec<String> {
    let me = std::process::id();
    let mut agg = Aggregate::default();
    agg.stacks.insert(1, &[leaf]);
    agg.counts.insert(key(me, me, 1, 0), 1);
    let opts = BuildOptions {
        start: UNIX_EPOCH,
        duration: Duration::from_secs(1),
        frequency: 99,
        target: "self".into(),
        off_cpu: false,
    };
    let p = ember::profile::build(&agg, procs, sym, &opts);
    let loc = &p.locations[p.samples[0].locations[0] as usize];
    loc.lines
        .iter()
        .map(|ln| p.frame_name(loc, Some(ln)))
        .collect()
}

/// With room for one open binary, naming code of two binaries in turn
/// closes each and reopens it through the live process, and what was
/// parsed of a closed file never names another (descriptor numbers are
/// reused): every name stays right, and the table reports the closes.
#[test]
fn process_table_names_own_code_within_a_one_file_budget() {
    let mut procs = ember::process::ProcessTable::with_fd_budget(1);
    let mut sym = ember::symbolize::Symbolizer::new();
    procs.capture(std::process::id());
    assert!(procs.process(std::process::id()).is_some());
    let ours = own_marker_function as *const () as u64;
    let ours2 = own_leaf_names as *const () as u64;
    let libc_fn = libc::getpid as *const () as u64;
    let ours_name = own_leaf_names(&mut procs, &mut sym, ours);
    assert!(
        ours_name.iter().any(|n| n.contains("own_marker_function")),
        "{ours_name:?}"
    );
    let libc_name = own_leaf_names(&mut procs, &mut sym, libc_fn);
    assert!(
        libc_name.iter().any(|n| n.contains("getpid")),
        "{libc_name:?}"
    );
    // The test binary was closed for libc; a new address in it reopens it.
    let ours2_name = own_leaf_names(&mut procs, &mut sym, ours2);
    assert!(
        ours2_name.iter().any(|n| n.contains("own_leaf_names")),
        "{ours2_name:?}"
    );
    let st = sym.stats(&procs);
    assert!(st.open_files <= 1, "{} files open", st.open_files);
    assert_eq!(st.unnamed.unreadable, 0, "{:?}", st.unnamed);
    assert_eq!(own_marker_function(1), 31);
}

/// The kernel's mapping records build a process's mappings with no /proc
/// read: a fork inherits them, an exec keeps the old image's (as stale)
/// until new ones overlap them, processes the sampler never announces are bounded
/// and forgotten at the second collection (pids above any pid_max, so no
/// process of this host).
#[test]
fn process_table_learns_mappings_from_kernel_records() {
    use ember::process::{ProcessTable, MAX_UNSAMPLED};
    use ember::sample::mappings::MapEvent;
    let mmap = |pid: u32, start: u64, path: &str, ino: u64| MapEvent::Mmap {
        pid,
        start,
        len: 0x1000,
        pgoff: 0x2000,
        dev: (8, 1),
        ino,
        path: path.into(),
    };
    let (parent, child) = (0x7fff_ff00, 0x7fff_ff01);
    let mut t = ProcessTable::new();
    t.on_map_event(mmap(parent, 0x10000, "/usr/bin/sh", 11));
    t.on_map_event(mmap(parent, 0x20000, "/usr/lib/libc.so.6\u{1b}[31m", 12));
    let p = t.process(parent).expect("known from records");
    let m = p.find(0x20010).expect("mapped");
    assert_eq!(m.file_offset(0x20010), 0x2010);
    assert_eq!(&*m.path, "/usr/lib/libc.so.6\u{fffd}[31m", "cleaned");
    assert!(t.binary_of(m).is_some());
    t.on_map_event(MapEvent::Fork {
        pid: child,
        ppid: parent,
    });
    assert_eq!(t.process(child).unwrap().mappings.len(), 2, "inherited");
    t.on_map_event(MapEvent::Exec { pid: child });
    t.on_map_event(mmap(child, 0x10800, "/usr/bin/tiny", 13));
    let c = t.process(child).unwrap();
    assert_eq!(&*c.find(0x10900).unwrap().path, "/usr/bin/tiny", "new wins");
    assert_eq!(
        &*c.find(0x20010).unwrap().path,
        "/usr/lib/libc.so.6\u{fffd}[31m"
    );
    assert!(c.find(0x10010).is_none(), "overlapped old mapping gone");
    // What the process runs now is the new image only: the old libc
    // names samples taken inside execve, but no interpreter or unwind
    // table is looked for in it.
    assert!(c.find(0x20010).unwrap().stale);
    let now: Vec<&str> = c.current().map(|m| &*m.path).collect();
    assert_eq!(now, ["/usr/bin/tiny"]);
    // Anonymous executable memory (a JIT's) has no file.
    t.on_map_event(mmap(child, 0x40000, "//anon", 0));
    let anon = t.process(child).unwrap().find(0x40000).unwrap().clone();
    assert!(anon.file.is_none() && t.binary_of(&anon).is_none());

    // Bounded: past MAX_UNSAMPLED, records of new processes are dropped.
    for i in 0..MAX_UNSAMPLED as u32 + 10 {
        t.on_map_event(mmap(0x7000_0000 + i, 0x10000, "/usr/bin/sh", 11));
    }
    let st = t.stats();
    assert!(st.processes <= MAX_UNSAMPLED, "{} processes", st.processes);
    assert!(
        st.records_dropped >= 10 + 2,
        "{} dropped",
        st.records_dropped
    );
    // Never announced by the sampler: gone at the second collection.
    assert!(t.forget_exited(false).is_empty());
    assert!(!t.forget_exited(false).is_empty());
    assert_eq!(t.stats().processes, 0);
    t.on_map_event(mmap(0x7000_0000, 0x10000, "/usr/bin/sh", 11));
    assert!(t.process(0x7000_0000).is_some(), "room again");
}
