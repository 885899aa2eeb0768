//! A recording on a busy host (a busy loop per CPU): a binary of its own,
//! so its CPU hogs never run beside another test's measurement (cargo runs
//! test binaries one after another). Root only (CI is).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Processes living 10 ms on a busy host (a busy loop per CPU) are named
/// under `record --all`: their mappings come from the kernel's mmap
/// records, not from a race between reading /proc and their exit.
#[test]
fn ten_ms_processes_are_named_on_a_busy_host() {
    let tiny = fixture("tiny.c");
    let dir = scratch("tiny_busy");
    let hogs = Hogs::start();
    let rec = Command::new(EMBER)
        .args(["record", "--all", "-d", "9s", "-F", "999", "-o", "t.folded"])
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let script = format!("for i in $(seq 300); do {}; done", tiny.display());
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(st.success());
    let out = rec.wait_with_output().unwrap();
    drop(hogs);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let f = folded(&dir.join("t.folded"));
    let (all, unknown) = comm_unknown(&f, "tiny");
    let hot = count_where(&f, |x| x == "tiny_hot");
    assert!(all >= 300, "only {all} samples of the 10 ms processes");
    assert!(
        unknown * 100 <= all,
        "{unknown} of {all} samples of 10 ms processes have an unnamed leaf"
    );
    assert!(hot * 2 >= all, "{hot} of {all} samples in tiny_hot");
}
