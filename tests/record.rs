//! End-to-end tests of `ember record` with the real BPF sampler on fixtures
//! whose CPU use is known. They need root; CI runs them as root.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ember::profile::pprof;

/// CPU split 1:2:3, measured by the fixture itself with the thread CPU clock,
/// must come out within ±3 percentage points; with frame pointers ≥95% of
/// samples reach main; pprof totals equal the samples counted, and an
/// independent decoder (go tool pprof) agrees.
#[test]
fn cpu_split_matches_ground_truth() {
    let bin = fixture("split.c");
    let dir = scratch("split");
    let out = Command::new(EMBER)
        .args([
            "record", "-F", "999", "-o", "s.folded", "-o", "s.pb.gz", "-o", "s.svg", "--",
        ])
        .arg(&bin)
        .arg("4")
        .current_dir(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // The fixture prints its own measurement: alpha=0.1667 beta=0.3333 gamma_=0.5000
    let truth: Vec<(String, f64)> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(truth.len(), 3);

    let f = folded(&dir.join("s.folded"));
    let counted: Vec<u64> = truth
        .iter()
        .map(|(name, _)| count_where(&f, |fr| fr == name))
        .collect();
    let sum: u64 = counted.iter().sum();
    assert!(sum > 2000, "too few samples in the burners: {sum}");
    for ((name, want), got) in truth.iter().zip(&counted) {
        let share = *got as f64 / sum as f64;
        let err_pp = (share - want).abs() * 100.0;
        assert!(
            err_pp <= 3.0,
            "{name}: profile share {share:.4}, truth {want:.4}, off by {err_pp:.2} pp"
        );
    }

    let total: u64 = f.values().sum();
    let with_main = count_where(&f, |fr| fr == "main");
    assert!(
        with_main as f64 >= 0.95 * total as f64,
        "only {with_main}/{total} samples reach main"
    );

    // Totals agree everywhere: summary, our decoder, go tool pprof, folded.
    let reported = summary_samples(&stderr);
    let p = pprof::read(&std::fs::read(dir.join("s.pb.gz")).unwrap()).unwrap();
    let decoded: i64 = p.sample.iter().map(|s| s.value[0]).sum();
    assert_eq!(decoded as u64, reported);
    assert_eq!(total, reported);
    assert_eq!(go_pprof_total(&dir.join("s.pb.gz")), reported);
    assert!(stderr.contains("lost: none"), "{stderr}");

    // pprof metadata.
    let s = |i: i64| p.string_table[i as usize].as_str();
    let types: Vec<(&str, &str)> = p
        .sample_type
        .iter()
        .map(|v| (s(v.r#type), s(v.unit)))
        .collect();
    assert_eq!(types, [("samples", "count"), ("cpu", "nanoseconds")]);
    let pt = p.period_type.unwrap();
    assert_eq!((s(pt.r#type), s(pt.unit)), ("cpu", "nanoseconds"));
    assert_eq!(p.period, 1_000_000_000 / 999);
    assert!(p.time_nanos > 1_600_000_000_000_000_000);
    assert!(
        p.duration_nanos >= 3_900_000_000,
        "duration {}",
        p.duration_nanos
    );
    for smp in &p.sample {
        assert_eq!(smp.value[1], smp.value[0] * p.period);
    }
    let exe = p
        .mapping
        .iter()
        .find(|m| s(m.filename) == bin.to_str().unwrap())
        .expect("fixture mapping");
    // The flags must say exactly what holds for every location of the
    // mapping (a rare sample in a PLT stub or _start has no line).
    let locs: Vec<_> = p
        .location
        .iter()
        .filter(|l| l.mapping_id == exe.id)
        .collect();
    assert!(!locs.is_empty());
    assert_eq!(exe.has_functions, locs.iter().all(|l| !l.line.is_empty()));
    assert_eq!(
        exe.has_line_numbers,
        locs.iter()
            .all(|l| !l.line.is_empty() && l.line.iter().all(|x| x.line != 0))
    );
    // Line numbers: weighed by samples, on the leaf (a frame-pointer walk
    // in a process's first milliseconds, before its tables load, may add
    // a few distinct return addresses in code without lines, such as
    // _start, which counting distinct locations made a flaky measure on a
    // busy machine).
    let by_id: std::collections::HashMap<u64, _> = p.location.iter().map(|l| (l.id, l)).collect();
    let (mut leaf_exe, mut leaf_lined) = (0i64, 0i64);
    let mut lineless = std::collections::BTreeMap::<String, i64>::new();
    for smp in &p.sample {
        let leaf = by_id[&smp.location_id[0]];
        if leaf.mapping_id != exe.id {
            continue;
        }
        leaf_exe += smp.value[0];
        if leaf.line.iter().any(|x| x.line != 0) {
            leaf_lined += smp.value[0];
        } else {
            *lineless.entry(format!("{:#x}", leaf.address)).or_default() += smp.value[0];
        }
    }
    assert!(
        leaf_lined * 100 >= leaf_exe * 98,
        "{leaf_lined} of {leaf_exe} samples in the fixture have a line on their leaf; without: {lineless:?}"
    );
    assert!(
        !s(exe.build_id).is_empty(),
        "fixture mapping has no build ID"
    );
    assert!(exe.memory_start < exe.memory_limit);
    // Ids are dense 1..=N.
    for (i, l) in p.location.iter().enumerate() {
        assert_eq!(l.id, i as u64 + 1);
    }
    let names: Vec<&str> = p.function.iter().map(|f| s(f.name)).collect();
    for want in ["alpha", "beta", "gamma_", "main"] {
        assert!(names.contains(&want), "function {want} missing");
    }
    let alpha = p.function.iter().find(|f| s(f.name) == "alpha").unwrap();
    assert!(s(alpha.filename).ends_with("split.c"));

    // The SVG is well-formed and names the hot functions and the run.
    let svg = std::fs::read_to_string(dir.join("s.svg")).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &svg,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .expect("SVG is well-formed XML");
    let text: String = doc
        .descendants()
        .filter_map(|n| n.text())
        .collect::<Vec<_>>()
        .join("\n");
    for want in ["alpha", "beta", "gamma_", "999 Hz", "split"] {
        assert!(text.contains(want), "SVG lacks {want:?}");
    }
}

/// Named threads come out with the right tid and thread_name labels.
#[test]
fn thread_labels_are_right() {
    let bin = fixture("threads.c");
    let dir = scratch("threads");
    let out = Command::new(EMBER)
        .args([
            "record",
            "-F",
            "299",
            "-o",
            "t.pb.gz",
            "-o",
            "t.folded",
            "--threads",
            "--",
        ])
        .arg(&bin)
        .arg("1.5")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tids: Vec<(String, i64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(tids.len(), 2);
    let p = pprof::read(&std::fs::read(dir.join("t.pb.gz")).unwrap()).unwrap();
    let s = |i: i64| p.string_table[i as usize].as_str();
    let func_of = |loc_id: u64| -> Vec<&str> {
        p.location[loc_id as usize - 1]
            .line
            .iter()
            .map(|l| s(p.function[l.function_id as usize - 1].name))
            .collect()
    };
    for (name, tid) in &tids {
        let want_fn = if name.ends_with('a') {
            "work_a"
        } else {
            "work_b"
        };
        let mut n = 0;
        for smp in &p.sample {
            let label = |k: &str| smp.label.iter().find(|l| s(l.key) == k).unwrap();
            if s(label("thread_name").str) != name {
                continue;
            }
            assert_eq!(label("tid").num, *tid, "{name} sample has the wrong tid");
            assert_eq!(s(label("comm").str), "threads");
            let fns: Vec<&str> = smp.location_id.iter().flat_map(|&l| func_of(l)).collect();
            if fns.contains(&want_fn) {
                n += smp.value[0];
            }
        }
        assert!(n > 200, "{name}: only {n} samples in {want_fn}");
    }
    // --threads puts a per-thread frame under the process.
    let f = folded(&dir.join("t.folded"));
    assert!(
        f.keys().any(|k| k.starts_with("threads;worker-a (")),
        "no per-thread frame: {:?}",
        f.keys().next()
    );
}

/// An inlined Rust function is named, with its file and line, from DWARF.
#[test]
fn rust_inline_frames_have_file_and_line() {
    let bin = fixture("inline.rs");
    let dir = scratch("inline");
    let stderr = ember_ok(
        &[
            "record",
            "-F",
            "499",
            "-o",
            "i.pb.gz",
            "-o",
            "i.folded",
            "--",
            bin.to_str().unwrap(),
            "1.5",
        ],
        &dir,
    );
    let src = std::fs::read_to_string(fixture_src("inline.rs")).unwrap();
    let hot_line = src
        .lines()
        .position(|l| l.contains("v = black_box("))
        .unwrap() as i64
        + 1;
    let p = pprof::read(&std::fs::read(dir.join("i.pb.gz")).unwrap()).unwrap();
    let s = |i: i64| p.string_table[i as usize].as_str();
    let mut inlined_samples = 0;
    let total: i64 = p.sample.iter().map(|x| x.value[0]).sum();
    for smp in &p.sample {
        let leaf = &p.location[smp.location_id[0] as usize - 1];
        let has = leaf.line.iter().any(|l| {
            let f = &p.function[l.function_id as usize - 1];
            s(f.name) == "inline::hot_inner"
                && s(f.filename).ends_with("fixtures/inline.rs")
                && l.line == hot_line
        });
        // The inline frame sits inside its caller in the same location.
        if has && leaf.line.len() >= 2 {
            inlined_samples += smp.value[0];
        }
    }
    assert!(
        inlined_samples as f64 > 0.5 * total as f64,
        "{inlined_samples}/{total} samples in hot_inner:{hot_line}\n{stderr}"
    );
    let m = p
        .mapping
        .iter()
        .find(|m| s(m.filename) == bin.to_str().unwrap())
        .unwrap();
    assert!(m.has_inline_frames);
    let f = folded(&dir.join("i.folded"));
    assert!(count_where(&f, |x| x == "inline::outer_loop") > 0);
}

/// Processes that live ~150 ms and exit before any drain still symbolize;
/// children of the command are followed.
#[test]
fn short_lived_processes_are_symbolized() {
    let bin = fixture("short.c");
    let dir = scratch("short");
    let script = format!("for i in 1 2 3 4 5; do {}; done", bin.display());
    ember_ok(
        &[
            "record", "-F", "999", "-o", "s.folded", "--", "sh", "-c", &script,
        ],
        &dir,
    );
    let f = folded(&dir.join("s.folded"));
    let all = count_comm(&f, "short");
    let named = count_where(&f, |x| x == "short_lived_hot");
    assert!(all > 300, "only {all} samples of the short processes");
    assert!(
        named as f64 >= 0.9 * all as f64,
        "{named}/{all} short-process samples name short_lived_hot"
    );
}

/// JIT frames are named from the perf map Node writes.
#[test]
fn node_jit_frames_are_named() {
    let dir = scratch("node");
    let js = fixture_src("hot.js");
    ember_ok(
        &[
            "record",
            "-F",
            "499",
            "-o",
            "n.folded",
            "--",
            "node",
            "--perf-basic-prof",
            js.to_str().unwrap(),
            "1.5",
        ],
        &dir,
    );
    let f = folded(&dir.join("n.folded"));
    let total: u64 = f.values().sum();
    let hot = count_where(&f, |x| x.contains("emberHotJsFunction"));
    assert!(
        hot as f64 > 0.5 * total as f64,
        "{hot}/{total} samples name the hot JS function"
    );
    assert!(f
        .keys()
        .any(|k| k.contains("emberHotJsFunction") && k.contains("_[j]")));
}

/// --pid on a running process, and --all for the host, kernel included.
#[test]
fn pid_and_all_modes() {
    let bin = fixture("split.c");
    let dir = scratch("pid_all");
    let mut child = Command::new(&bin)
        .arg("6")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let pid = child.id().to_string();
    let stderr = ember_ok(
        &[
            "record", "--pid", &pid, "-d", "1500ms", "-F", "499", "-o", "p.folded",
        ],
        &dir,
    );
    let f = folded(&dir.join("p.folded"));
    assert!(
        f.keys().all(|k| k.starts_with("split;")),
        "--pid recorded other processes"
    );
    assert!(count_where(&f, |x| x == "gamma_") > 100, "{stderr}");

    ember_ok(
        &[
            "record", "--all", "-d", "1500ms", "-F", "499", "-o", "a.folded", "-o", "a.pb.gz",
        ],
        &dir,
    );
    let f = folded(&dir.join("a.folded"));
    assert!(count_comm(&f, "split") > 100);
    let p = pprof::read(&std::fs::read(dir.join("a.pb.gz")).unwrap()).unwrap();
    let s = |i: i64| p.string_table[i as usize].as_str();
    assert!(
        p.mapping
            .iter()
            .any(|m| s(m.filename) == "[kernel.kallsyms]"),
        "no kernel mapping"
    );
    assert!(
        f.keys().any(|k| k.contains("_[k]")),
        "no kernel frames in a host-wide profile"
    );

    // --no-kernel leaves them out.
    ember_ok(
        &[
            "record",
            "--pid",
            &pid,
            "-d",
            "1s",
            "--no-kernel",
            "-o",
            "nk.folded",
        ],
        &dir,
    );
    let f = folded(&dir.join("nk.folded"));
    assert!(!f.keys().any(|k| k.contains("_[k]")));
    let _ = child.kill();
    let _ = child.wait();
}

/// A target that exits mid-run: what was collected is written, and said.
#[test]
fn pid_exiting_mid_run_keeps_data() {
    let bin = fixture("split.c");
    let dir = scratch("exit_mid");
    let mut child = Command::new(&bin)
        .arg("1")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let stderr = ember_ok(
        &[
            "record", "--pid", &pid, "-d", "20s", "-F", "499", "-o", "e.folded", "-o", "e.svg",
        ],
        &dir,
    );
    let _ = child.wait();
    assert!(
        stderr.contains(&format!("process {pid} exited after")),
        "{stderr}"
    );
    let f = folded(&dir.join("e.folded"));
    assert!(count_where(&f, |x| x == "gamma_") > 50, "{f:?}");
    assert!(dir.join("e.svg").exists());
}

/// The default outputs are profile.pb.gz and flamegraph.svg.
#[test]
fn default_outputs() {
    let bin = fixture("split.c");
    let dir = scratch("defaults");
    let stderr = ember_ok(&["record", "-q", "--", bin.to_str().unwrap(), "0.5"], &dir);
    assert!(
        dir.join("profile.pb.gz").exists() && dir.join("flamegraph.svg").exists(),
        "{stderr}"
    );
    assert!(
        stderr.contains("wrote profile.pb.gz, flamegraph.svg"),
        "{stderr}"
    );
    assert!(stderr.contains("top functions by self time"), "{stderr}");
    ember_ok(
        &[
            "record",
            "-q",
            "-f",
            "folded",
            "--",
            bin.to_str().unwrap(),
            "0.3",
        ],
        &dir,
    );
    assert!(dir.join("stacks.folded").exists());
}

/// Ctrl-C (SIGINT) stops early and still writes everything.
#[test]
fn sigint_stops_and_writes() {
    let bin = fixture("split.c");
    let dir = scratch("sigint");
    let mut child = Command::new(&bin)
        .arg("8")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let cpu_before = cpu_seconds(child.id());
    let ember = Command::new(EMBER)
        .args([
            "record", "--pid", &pid, "-d", "60s", "-F", "499", "-o", "c.folded", "-o", "c.pb.gz",
        ])
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on a child we own.
    unsafe { libc::kill(ember.id() as i32, libc::SIGINT) };
    let out = ember.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped by signal"), "{stderr}");
    let cpu = cpu_seconds(child.id()) - cpu_before;
    let f = folded(&dir.join("c.folded"));
    let total: u64 = f.values().sum();
    // The target's own CPU time bounds what there was to sample (ember's
    // start-up is inside it), however busy the machine was.
    assert!(
        total > 50 && total as f64 > 0.5 * cpu * 499.0,
        "{total} samples after 1.5 s at 499 Hz of a target that used {cpu:.2} s of CPU"
    );
    assert_eq!(total, summary_samples(&stderr));
    assert_eq!(go_pprof_total(&dir.join("c.pb.gz")), total);
    let _ = child.kill();
    let _ = child.wait();
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / hz
}

/// Asking for hardware cycles on a machine without a PMU falls back to the
/// software clock, and says so.
#[test]
fn cycles_event_falls_back_or_works() {
    let bin = fixture("split.c");
    let dir = scratch("cycles");
    let stderr = ember_ok(
        &[
            "record",
            "--event",
            "cycles",
            "-F",
            "499",
            "-o",
            "y.folded",
            "--",
            bin.to_str().unwrap(),
            "0.5",
        ],
        &dir,
    );
    assert!(
        stderr.contains("(cycles)") || stderr.contains("(cpu-clock)"),
        "{stderr}"
    );
    assert!(count_where(&folded(&dir.join("y.folded")), |x| x == "gamma_") > 50);
}

/// Maps far too small for the workload: samples that cannot be recorded whole
/// are kept with a [lost ...] frame and counted by cause; totals still agree.
#[test]
fn overflowing_maps_are_counted_not_hidden() {
    let dir = scratch("overflow");
    // Hundreds of distinct stacks a second (a file-system walk, in the
    // kernel and in find), far more than 64 per generation: a workload
    // with a few dozen (a hot JavaScript loop) overflowed only sometimes.
    let stderr = ember_ok(
        &[
            "record",
            "-F",
            "999",
            "--stack-map-size",
            "64",
            "--count-map-size",
            "64",
            "-o",
            "o.folded",
            "-o",
            "o.pb.gz",
            "--",
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6; do find /usr/lib -name '*.so*' -newer /etc/hostname > /dev/null; done",
        ],
        &dir,
    );
    assert!(
        stderr.contains("stack map full") && stderr.contains("count map full"),
        "{stderr}"
    );
    let f = folded(&dir.join("o.folded"));
    let lost = count_where(&f, |x| {
        x.starts_with("[lost ") && x.contains("stack map full")
    });
    assert!(lost > 0, "no [lost] frames: {f:?}");
    let total: u64 = f.values().sum();
    assert_eq!(total, summary_samples(&stderr));
    assert_eq!(go_pprof_total(&dir.join("o.pb.gz")), total);
    // The summary states the count of samples kept without a stack (not
    // counting those then dropped whole because the count map was full).
    let n: u64 = stderr
        .split(" samples kept without a stack")
        .next()
        .and_then(|s| s.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .expect("a count of samples kept without a stack in the summary");
    assert_eq!(n, lost, "{stderr}");
}

/// Outputs in a world-writable sticky directory where symlinks to root-only
/// files were planted, at the output names and at the temporary names
/// ember once used: the root files are untouched, the outputs are new
/// regular files, and the links are gone (replaced, never followed). The
/// same for `ember query -o`.
#[test]
fn outputs_never_write_through_planted_symlinks() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = scratch("symlink_out");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let secrets: Vec<_> = (0..4)
        .map(|i| {
            let p = dir.join(format!("secret{i}"));
            std::fs::write(&p, format!("root only {i}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
            p
        })
        .collect();
    // x.svg as root; the rest as nobody, as an unprivileged user would.
    let plant = |target: &std::path::Path, link: &str, as_nobody: bool| {
        let link = shared.join(link);
        if as_nobody {
            let st = Command::new("setpriv")
                .args([
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    "ln",
                    "-s",
                ])
                .arg(target)
                .arg(&link)
                .status()
                .expect("setpriv (util-linux) is installed");
            assert!(st.success(), "planting {} as nobody", link.display());
        } else {
            std::os::unix::fs::symlink(target, &link).unwrap();
        }
    };
    plant(&secrets[0], "x.svg", false);
    plant(&secrets[1], ".x.svg.ember-tmp", true);
    plant(&secrets[2], "y.folded", true);
    plant(&secrets[3], ".y.folded.ember-tmp", true);

    let x = shared.join("x.svg");
    let y = shared.join("y.folded");
    ember_ok(
        &[
            "record",
            "-q",
            "-o",
            x.to_str().unwrap(),
            "-o",
            y.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "true",
        ],
        &dir,
    );
    let untouched = |i: usize| {
        let m = std::fs::metadata(&secrets[i]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&secrets[i]).unwrap(),
            format!("root only {i}\n"),
            "secret{i} was written through a symlink"
        );
        assert_eq!(m.mode() & 0o7777, 0o600, "secret{i} mode changed");
    };
    (0..4).for_each(untouched);
    for (p, head) in [(&x, "<?xml"), (&y, "")] {
        let m = std::fs::symlink_metadata(p).unwrap();
        assert!(
            m.file_type().is_file(),
            "{} is not a regular file",
            p.display()
        );
        assert_eq!(m.uid(), 0);
        assert!(std::fs::read_to_string(p).unwrap().starts_with(head));
    }
    // The old temporary names are left alone (ember no longer uses them).
    assert!(std::fs::symlink_metadata(shared.join(".x.svg.ember-tmp"))
        .unwrap()
        .file_type()
        .is_symlink());
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.ends_with(".ember-tmp")
                && !n.starts_with(".x.svg.ember")
                && !n.starts_with(".y.folded.ember")
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // ember query -o: the same, from an (empty) store.
    let store = dir.join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::remove_file(&x).unwrap();
    plant(&secrets[0], "x.svg", true);
    ember_ok(
        &[
            "query",
            "--store-dir",
            store.to_str().unwrap(),
            "-o",
            x.to_str().unwrap(),
        ],
        &dir,
    );
    untouched(0);
    let m = std::fs::symlink_metadata(&x).unwrap();
    assert!(m.file_type().is_file());
    assert!(std::fs::read_to_string(&x).unwrap().starts_with("<?xml"));
}

/// Both builds of the BPF program (see README, "Kernels and the two BPF
/// variants") meet the same truth bars in `--pid` mode, with and without
/// frame pointers: the 1:2:3 split within 3 points of the fixture's own
/// clock, and at least 99% of samples reaching main.
#[test]
fn both_bpf_variants_meet_the_truth_bars() {
    let dir = scratch("variants");
    for variant in ["modern", "compat"] {
        for (build, bin) in [
            ("frame pointers", fixture("split.c")),
            ("no frame pointers", fixture_nofp("split.c")),
        ] {
            let label = format!("{variant} variant, {build}");
            let child = Command::new(&bin)
                .arg("4.5")
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let pid = child.id().to_string();
            let out = dir.join(format!("{variant}-{}.folded", build.len()));
            let o = ember(
                &[
                    "record",
                    "--bpf-variant",
                    variant,
                    "--pid",
                    &pid,
                    "-d",
                    "3s",
                    "-F",
                    "999",
                    "-o",
                    out.to_str().unwrap(),
                ],
                &dir,
            );
            let stderr = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{label}: {stderr}");
            assert!(
                stderr.contains(&format!("{variant} BPF variant")),
                "{label}: the summary does not name the variant: {stderr}"
            );
            let done = child.wait_with_output().unwrap();
            let truth: Vec<(String, f64)> = String::from_utf8_lossy(&done.stdout)
                .split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.parse().ok()?))
                })
                .collect();
            assert_eq!(truth.len(), 3, "{label}: the fixture printed no truth");
            let f = folded(&out);
            let counted: Vec<u64> = truth
                .iter()
                .map(|(name, _)| count_where(&f, |fr| fr == name))
                .collect();
            let sum: u64 = counted.iter().sum();
            assert!(sum > 800, "{label}: too few samples in the burners: {sum}");
            for ((name, want), got) in truth.iter().zip(&counted) {
                let share = *got as f64 / sum as f64;
                let err_pp = (share - want).abs() * 100.0;
                eprintln!(
                    "{label}: {name} {:.1}% (truth {:.1}%)",
                    share * 100.0,
                    want * 100.0
                );
                assert!(
                    err_pp <= 3.0,
                    "{label}: {name} profile share {share:.4}, truth {want:.4}, off by {err_pp:.2} pp"
                );
            }
            let total: u64 = f.values().sum();
            let with_main = count_where(&f, |fr| fr == "main");
            eprintln!("{label}: {with_main}/{total} samples reach main");
            assert!(
                with_main as f64 >= 0.99 * total as f64,
                "{label}: only {with_main}/{total} samples reach main"
            );
        }
    }
}
