//! Helpers for the end-to-end tests: build fixtures, run ember, read outputs.
//! These tests load the real BPF program, so they need root (CI runs as root).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

pub const EMBER: &str = env!("CARGO_BIN_EXE_ember");

static BUILD: Mutex<()> = Mutex::new(());

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch directory for one test.
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("e2e")
        .join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// True if `out` was built from `src` as it is now.
fn up_to_date(out: &std::path::Path, src: &std::path::Path) -> bool {
    out.exists()
        && out.metadata().unwrap().modified().unwrap()
            >= src.metadata().unwrap().modified().unwrap()
}

/// Builds fixtures/<name> (C with clang and frame pointers, or Rust with
/// rustc) once and returns the binary's path.
pub fn fixture(name: &str) -> PathBuf {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let stem = name.split('.').next().unwrap();
    let out = dir.join(stem);
    let src = root().join("fixtures").join(name);
    if up_to_date(&out, &src) {
        return out;
    }
    let status = if name.ends_with(".rs") {
        Command::new("rustc")
            .args([
                "-C",
                "opt-level=2",
                "-g",
                "-C",
                "force-frame-pointers=yes",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .status()
    } else {
        Command::new("clang")
            .args([
                "-O2",
                "-g",
                "-fno-omit-frame-pointer",
                "-mno-omit-leaf-frame-pointer",
                "-pthread",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .status()
    }
    .expect("running the fixture compiler");
    assert!(status.success(), "building fixture {name} failed");
    out
}

/// Builds fixtures/<name> without frame pointers (C: clang -O2
/// -fomit-frame-pointer; Rust: rustc -C opt-level=3
/// -C force-frame-pointers=no), as most distro and release code is built.
pub fn fixture_nofp(name: &str) -> PathBuf {
    let _g = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fixtures-nofp");
    std::fs::create_dir_all(&dir).unwrap();
    // nofp.c and nofp.rs both exist: keep the language in the name.
    let out = dir.join(name.replace('.', "-"));
    let src = root().join("fixtures").join(name);
    if up_to_date(&out, &src) {
        return out;
    }
    let status = if name.ends_with(".rs") {
        Command::new("rustc")
            .args([
                "-C",
                "opt-level=3",
                "-C",
                "debuginfo=1",
                "-C",
                "force-frame-pointers=no",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .status()
    } else {
        Command::new("clang")
            .args([
                "-O2",
                "-g",
                "-fomit-frame-pointer",
                "-pthread",
                "-ldl",
                "-o",
            ])
            .arg(&out)
            .arg(&src)
            .status()
    }
    .expect("running the fixture compiler");
    assert!(status.success(), "building fixture {name} failed");
    out
}

/// Source path of a fixture.
pub fn fixture_src(name: &str) -> PathBuf {
    root().join("fixtures").join(name)
}

/// Runs ember with `args` and returns its output.
pub fn ember(args: &[&str], cwd: &Path) -> Output {
    Command::new(EMBER)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running ember")
}

/// Runs ember and asserts it succeeded; returns stderr.
pub fn ember_ok(args: &[&str], cwd: &Path) -> String {
    let out = ember(args, cwd);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "ember {args:?} failed: {err}");
    err
}

/// The sample count ember's summary reports.
pub fn summary_samples(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("ember: ") && l.contains(" samples of "))
        .expect("summary line");
    line["ember: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Reads a folded file into stack -> count.
pub fn folded(path: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| {
            let (s, n) = l.rsplit_once(' ').expect("folded line ends in a count");
            (s.to_string(), n.parse().expect("count"))
        })
        .collect()
}

/// Samples whose stack has a frame satisfying `pred`.
pub fn count_where(f: &BTreeMap<String, u64>, pred: impl Fn(&str) -> bool) -> u64 {
    f.iter()
        .filter(|(s, _)| s.split(';').any(&pred))
        .map(|(_, n)| n)
        .sum()
}

/// Samples whose root (process) frame is `comm`.
pub fn count_comm(f: &BTreeMap<String, u64>, comm: &str) -> u64 {
    f.iter()
        .filter(|(s, _)| s.split(';').next() == Some(comm))
        .map(|(_, n)| n)
        .sum()
}

/// Total of `go tool pprof -raw` sample counts: an independent decoder.
pub fn go_pprof_total(path: &Path) -> u64 {
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw"])
        .arg(path)
        .output()
        .expect("running go tool pprof");
    assert!(
        out.status.success(),
        "go tool pprof rejected {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut total = 0;
    let mut in_samples = false;
    for l in text.lines() {
        if l.starts_with("Samples:") {
            in_samples = true;
            continue;
        }
        if in_samples && !l.starts_with(' ') && !l.starts_with("samples/count") {
            break;
        }
        // Sample rows: "   count   nanos: loc loc ..."
        if in_samples && l.contains(':') && !l.trim_start().starts_with(|c: char| c.is_alphabetic())
        {
            total += l
                .split_whitespace()
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    total
}

/// Processes that keep every CPU busy (one shell loop per CPU) until
/// dropped: "a busy host" for tests of races with the profiled processes.
pub struct Hogs(Vec<std::process::Child>);

impl Hogs {
    /// One busy loop per online CPU.
    pub fn start() -> Hogs {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Hogs(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("starting a busy loop")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Samples of process `comm` (the root frame), and those of them whose
/// leaf is unnamed (`[unknown]`: code in no mapping ember knew of; a frame
/// further up may be unknown for other reasons, such as a frame-pointer
/// walk through code without them).
pub fn comm_unknown(f: &BTreeMap<String, u64>, comm: &str) -> (u64, u64) {
    let prefix = format!("{comm};");
    let mine = f.iter().filter(|(s, _)| s.starts_with(&prefix));
    let all = mine.clone().map(|(_, n)| n).sum();
    let unknown = mine
        .filter(|(s, _)| s.rsplit(';').next() == Some("[unknown]"))
        .map(|(_, n)| n)
        .sum();
    (all, unknown)
}
