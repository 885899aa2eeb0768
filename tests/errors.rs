//! Every user-facing failure is one plain sentence on stderr, a non-zero
//! exit, and happens before sampling starts.

mod common;

use std::process::{Command, Output};

use common::*;

fn one_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure, got success: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "error is not one line: {err}");
    assert!(
        err.starts_with("ember: ") || err.starts_with("error: "),
        "{err}"
    );
    err
}

#[test]
fn not_root() {
    let dir = scratch("err_not_root");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            EMBER,
            "record",
            "--all",
            "-d",
            "1s",
            "-o",
            "/tmp/x.svg",
        ])
        .current_dir(&dir)
        .output()
        .expect("setpriv (util-linux) is installed");
    let err = one_error(&out);
    assert!(
        err.contains("needs root (or CAP_BPF and CAP_PERFMON)") && err.contains("sudo"),
        "{err}"
    );
}

#[test]
fn root_without_capabilities() {
    let dir = scratch("err_caps");
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-bpf,-perfmon,-sys_admin",
            "--inh-caps=-bpf,-perfmon,-sys_admin",
            EMBER,
            "record",
            "--all",
            "-d",
            "1s",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = one_error(&out);
    assert!(err.contains("lacks CAP_BPF and CAP_PERFMON"), "{err}");
}

#[test]
fn missing_btf() {
    let dir = scratch("err_btf");
    // Hide the kernel's BTF in a private mount namespace: a real host without BTF.
    let script = format!("mount -t tmpfs none /sys/kernel/btf && exec {EMBER} record --all -d 1s");
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = one_error(&out);
    assert!(
        err.contains("exposes no BTF") && err.contains("CONFIG_DEBUG_INFO_BTF"),
        "{err}"
    );
}

#[test]
fn pid_that_does_not_exist() {
    let dir = scratch("err_pid");
    let err = one_error(&ember(&["record", "--pid", "4194000", "-d", "1s"], &dir));
    assert!(err.contains("no process with PID 4194000"), "{err}");
}

#[test]
fn unwritable_output() {
    let dir = scratch("err_out");
    let err = one_error(&ember(
        &[
            "record",
            "--all",
            "-d",
            "1s",
            "-o",
            "/nonexistent-dir/x.svg",
        ],
        &dir,
    ));
    assert!(err.contains("cannot write /nonexistent-dir/x.svg"), "{err}");
    let err = one_error(&ember(
        &["record", "--all", "-d", "1s", "-o", "/proc/x.pb.gz"],
        &dir,
    ));
    assert!(err.contains("cannot write /proc/x.pb.gz"), "{err}");
    let err = one_error(&ember(
        &["record", "--all", "-d", "1s", "-o", "out.xyz"],
        &dir,
    ));
    assert!(err.contains("cannot tell the format"), "{err}");
    // Nothing was sampled or written.
    assert!(!dir.join("profile.pb.gz").exists());
}

#[test]
fn out_of_range_arguments() {
    let dir = scratch("err_range");
    for (args, want) in [
        (
            &["record", "--all", "-F", "0"][..],
            "--frequency 0 is out of range",
        ),
        (
            &["record", "--all", "-F", "1000000"][..],
            "--frequency 1000000 is out of range",
        ),
        (
            &["record", "--all", "-d", "0s"][..],
            "must be greater than zero",
        ),
        (&["record", "--all", "-d", "soon"][..], "invalid duration"),
        (&["record", "--all", "-d", "30d"][..], "invalid duration"),
        (&["record", "-d", "1s"][..], "say what to profile"),
        (&["record", "--all", "--", "true"][..], "not several"),
    ] {
        let err = one_error(&ember(args, &dir));
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn command_that_cannot_run() {
    let dir = scratch("err_cmd");
    let err = one_error(&ember(&["record", "--", "/no/such/program"], &dir));
    assert!(err.contains("cannot run `/no/such/program`"), "{err}");
}
