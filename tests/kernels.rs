//! The kernel matrix: `scripts/kernel-matrix` boots Debian's 6.1 (cloud and
//! generic) and 6.12 (cloud) kernels in QEMU (software emulation) and runs
//! ember's checks inside each, for the BPF variants `modern` and `compat`:
//! `record --pid` on split.c with and without frame pointers (its 1:2:3
//! split within 3 points of its own clock, ≥99% of samples under `main`),
//! `record --all` with kernel frames, `record -- cmd`, and the agent (a
//! window stored, `/metrics` served). Needs QEMU, static busybox and cpio
//! (`scripts/setup.sh` installs them) and apt to fetch the kernels, which
//! are cached in target/kernels/; ember runs as root inside the guests.
//!
//! For local runs `EMBER_KERNELS=6.1-cloud` (comma-separated, of 6.1-cloud,
//! 6.1, 6.12-cloud and 6.12) narrows the kernels and `EMBER_VARIANTS` the
//! variants; the script reads both. The default is the full matrix.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

#[test]
fn kernel_matrix() {
    let qemu = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        qemu.is_ok_and(|s| s.success()),
        "qemu-system-x86_64 is missing, so the kernel matrix cannot run: run ./scripts/setup.sh \
         (or apt-get install -y qemu-system-x86 busybox-static cpio)"
    );
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let work = std::env::temp_dir().join(format!("ember-kernel-matrix.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let t0 = Instant::now();
    // The script's progress and table go straight to the terminal (a child's
    // output is not captured by the test harness), so a 10-minute run shows
    // where it is; the table is also kept in WORK/table.txt.
    let status = Command::new("python3")
        .arg(root.join("scripts").join("kernel-matrix"))
        .arg("--ember")
        .arg(env!("CARGO_BIN_EXE_ember"))
        .arg("--work")
        .arg(&work)
        .status()
        .expect("running scripts/kernel-matrix with python3");
    let table = std::fs::read_to_string(work.join("table.txt")).unwrap_or_default();
    println!("{table}");
    let secs = t0.elapsed().as_secs();
    match status.code() {
        Some(0) => {
            let _ = std::fs::remove_dir_all(&work);
        }
        Some(2) => panic!(
            "the kernel matrix could not run (a missing tool or kernel, or an emulator \
             problem: a guest that never reached /init after retries), after {secs} s; \
             outputs in {}:\n{table}",
            work.display()
        ),
        _ => panic!(
            "the kernel matrix failed ({status}) after {secs} s; outputs in {}:\n{table}",
            work.display()
        ),
    }
}
