//! Off-CPU time, end to end (as root): fixtures/waits.c runs threads that
//! wait in known ways (nanosleep, a pipe read, a contended mutex, fsync)
//! and a CPU burner, each measuring its own off-CPU time with
//! CLOCK_MONOTONIC minus CLOCK_THREAD_CPUTIME_ID. ember's off-CPU time per
//! thread, under its wait function, must be within 0.9-1.1x of that; the
//! CPU profile of the same run must still match the threads' CPU clocks;
//! waits that span the recording are clipped to it.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The fixture's own figures: function -> (off-CPU s, CPU s).
fn truth(stdout: &str) -> BTreeMap<String, (f64, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let (f, off, cpu) = (it.next()?, it.next()?, it.next()?);
            Some((f.to_string(), (off.parse().ok()?, cpu.parse().ok()?)))
        })
        .collect()
}

/// Per thread (the thread frame `name (tid) [pid]` that `-t` adds): the
/// total, and the part under `function`.
fn per_thread(f: &BTreeMap<String, u64>, function: &str) -> (u64, u64) {
    let mut total = 0;
    let mut under = 0;
    for (s, &n) in f {
        let frames: Vec<&str> = s.split(';').collect();
        if frames
            .get(1)
            .is_some_and(|t| t.starts_with(&format!("{function} (")))
        {
            total += n;
            if frames.iter().skip(2).any(|x| *x == function) {
                under += n;
            }
        }
    }
    (total, under)
}

/// Off-CPU time under each wait function of waits.c against the threads'
/// own clocks (0.9-1.1x).
fn assert_waits_match(label: &str, o: &std::process::Output, off: &Path) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{label}{err}");
    let t = truth(&String::from_utf8_lossy(&o.stdout));
    let f = folded(off);
    for function in ["wait_sleep", "wait_pipe", "wait_futex", "wait_fsync"] {
        let (want, _) = t[function];
        let (total, under) = per_thread(&f, function);
        let (total, under) = (total as f64 / 1e9, under as f64 / 1e9);
        eprintln!(
            "{label}{function}: off-CPU {under:.3} s under it ({total:.3} s in its thread); its own clocks: {want:.3} s"
        );
        assert!(
            (0.9..=1.1).contains(&(under / want)),
            "{label}{function}: {under:.3} s off CPU in the profile, {want:.3} s by the thread's clocks"
        );
    }
}

/// The compat build (Linux 5.10-5.16) records waits as truly as the
/// modern one.
#[test]
fn off_cpu_time_matches_under_the_compat_variant() {
    let _one = serial();
    let bin = fixture("waits.c");
    let dir = scratch("offcpu_compat");
    let off = dir.join("off.folded");
    let o = ember(
        &[
            "record",
            "-q",
            "-F",
            "499",
            "--bpf-variant",
            "compat",
            "--off-cpu",
            "-t",
            "-o",
            off.to_str().unwrap(),
            "--sample-type",
            "off-cpu",
            "--",
            bin.to_str().unwrap(),
            "3",
        ],
        &dir,
    );
    assert_waits_match("compat variant: ", &o, &off);
}

#[test]
fn off_cpu_time_per_wait_function_matches_the_threads_clocks() {
    let _one = serial();
    let bin = fixture("waits.c");
    let dir = scratch("offcpu_waits");
    let off = dir.join("off.folded");
    let cpu = dir.join("cpu.folded");
    let pb = dir.join("all.pb.gz");
    let o = ember(
        &[
            "record",
            "-q",
            "-F",
            "499",
            "--off-cpu",
            "-t",
            "-o",
            pb.to_str().unwrap(),
            "-o",
            off.to_str().unwrap(),
            "--sample-type",
            "off-cpu",
            "--",
            bin.to_str().unwrap(),
            "4",
        ],
        &dir,
    );
    assert_waits_match("", &o, &off);
    let t = truth(&String::from_utf8_lossy(&o.stdout));
    // The CPU profile of the same run: the burner's share of the CPU
    // samples, against the same workload recorded without --off-cpu and
    // against the threads' CPU clocks.
    let share = |pb: &Path| -> f64 {
        let p = ember::profile::pprof::to_profile(
            &ember::profile::pprof::read(&std::fs::read(pb).unwrap()).expect("the pprof parses"),
        );
        let of = |name: Option<&str>| -> f64 {
            p.samples
                .iter()
                .filter(|s| name.is_none_or(|n| &*s.thread_name == n))
                .map(|s| s.count as f64)
                .sum()
        };
        of(Some("burn_cpu")) / of(None).max(1.0) * 100.0
    };
    let p = ember::profile::pprof::to_profile(
        &ember::profile::pprof::read(&std::fs::read(&pb).unwrap()).expect("the pprof parses"),
    );
    assert!(p.off_cpu, "the pprof carries the off_cpu sample type");
    let plain = dir.join("plain.pb.gz");
    let o = ember(
        &[
            "record",
            "-q",
            "-F",
            "499",
            "-o",
            plain.to_str().unwrap(),
            "--",
            bin.to_str().unwrap(),
            "4",
        ],
        &dir,
    );
    assert!(o.status.success());
    let t_plain = truth(&String::from_utf8_lossy(&o.stdout));
    let clock = |t: &BTreeMap<String, (f64, f64)>| {
        t["burn_cpu"].1 / t.values().map(|v| v.1).sum::<f64>() * 100.0
    };
    let (with, without) = (share(&pb), share(&plain));
    eprintln!(
        "burn_cpu: {with:.1}% of CPU samples with --off-cpu, {without:.1}% without; its clock: {:.1}% and {:.1}%",
        clock(&t),
        clock(&t_plain)
    );
    // The workload's own split varies from run to run: each run is held
    // to its own clocks, and --off-cpu may not move the error.
    let (err_with, err_without) = (with - clock(&t), without - clock(&t_plain));
    assert!(
        err_with.abs() <= 4.0 && err_without.abs() <= 4.0 && (err_with - err_without).abs() <= 3.0,
        "the CPU profile changed with --off-cpu: burn_cpu is off its clock by {err_with:+.1} points with it, {err_without:+.1} without"
    );
    // go tool pprof reads the off-CPU type.
    let top = Command::new("go")
        .args(["tool", "pprof", "-sample_index=off_cpu", "-top"])
        .arg(&pb)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&top.stdout);
    assert!(
        top.status.success(),
        "{}",
        String::from_utf8_lossy(&top.stderr)
    );
    assert!(
        text.contains("Type: off_cpu") && text.contains("wait_sleep"),
        "{text}"
    );
    // The summary names the largest waits by kernel function, also while
    // another program is attached to sched_switch (a second ember here):
    // the tracepoint then calls its programs through
    // __traceiter_sched_switch, one more frame on top of every stack.
    let mut other = Command::new(EMBER)
        .args(["record", "--all", "-q", "--off-cpu", "-d", "60s", "-o"])
        .arg(dir.join("other.pb.gz"))
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running a second ember");
    std::thread::sleep(Duration::from_secs(4));
    let o2 = ember(
        &[
            "record",
            "--off-cpu",
            "-o",
            cpu.to_str().unwrap(),
            "--",
            bin.to_str().unwrap(),
            "1",
        ],
        &dir,
    );
    let _ = other.kill();
    let _ = other.wait();
    let err = String::from_utf8_lossy(&o2.stderr);
    assert!(
        err.contains("off-CPU: ")
            && err.contains("do_nanosleep")
            && err.contains("largest waits")
            && !err.contains("traceiter"),
        "{err}"
    );
}

#[test]
fn waits_spanning_the_recording_are_clipped_to_it() {
    let _one = serial();
    let bin = fixture("waits.c");
    let dir = scratch("offcpu_clip");
    let mut child = Command::new(&bin)
        .arg("6")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id().to_string();
    let out = dir.join("wall.folded");
    let o = ember(
        &[
            "record",
            "-q",
            "--wall",
            "-d",
            "3s",
            "-o",
            out.to_str().unwrap(),
            "--pid",
            &pid,
        ],
        &dir,
    );
    let _ = child.wait();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = folded(&out);
    // Blocked before the recording and after it: fully blocked, clipped.
    let (forever, _) = per_thread(&f, "wait_forever");
    let forever = forever as f64 / 1e9;
    eprintln!("wait_forever: {forever:.3} s of a 3 s recording");
    assert!(
        (2.7..=3.3).contains(&forever),
        "a thread blocked for the whole 3 s recording shows {forever:.3} s"
    );
    // Wall clock per thread: every thread about the recording's length.
    for function in ["wait_sleep", "burn_cpu", "wait_pipe"] {
        let (total, _) = per_thread(&f, function);
        let total = total as f64 / 1e9;
        eprintln!("{function}: wall {total:.3} s");
        assert!(
            (2.7..=3.3).contains(&total),
            "{function}: {total:.3} s of wall-clock time in a 3 s recording"
        );
    }
}

#[test]
fn off_cpu_options_are_checked() {
    let dir = scratch("offcpu_args");
    let bad = ember(
        &["record", "--off-cpu", "--off-cpu-sample", "0", "--", "true"],
        &dir,
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("--off-cpu-sample"),
        "{err}"
    );
    let bad = ember(&["record", "--sample-type", "bogus", "--", "true"], &dir);
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("sample type"),
        "{err}"
    );
    assert!(Path::new(&dir).exists());
}
