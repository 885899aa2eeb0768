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
        err.contains("exposes no BTF")
            && err.contains("CONFIG_DEBUG_INFO_BTF")
            && err.contains("the running kernel (Linux "),
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
        (
            &["record", "--all", "-d", "soon"][..],
            "--duration \"soon\" is not a valid duration",
        ),
        (
            &["record", "--all", "-d", "30d"][..],
            "--duration \"30d\" is out of range; use 1ms to 7d",
        ),
        (
            &["record", "--all", "-d", "99999999999999999h"][..],
            "--duration \"99999999999999999h\" is out of range; use 1ms to 7d",
        ),
        (
            &["record", "--all", "-d", "1e309"][..],
            "not a valid duration",
        ),
        (
            &["record", "--all", "-F", "18446744073709551615"][..],
            "--frequency 18446744073709551615 is out of range",
        ),
        (
            &["record", "--all", "-F", "18446744073709551616"][..],
            "number too large",
        ),
        (&["record", "--all", "-F", "-1"][..], "-1"),
        (
            &["record", "--all", "--unwind-memory", "18446744073709551615"][..],
            "--unwind-memory 18446744073709551615 is out of range; use 1 to 65536",
        ),
        (
            &["record", "--all", "--unwind-memory", "0"][..],
            "--unwind-memory 0 is out of range",
        ),
        (
            &["record", "--all", "--count-map-size", "4294967295"][..],
            "--count-map-size 4294967295 is out of range; use 64 to 1048576",
        ),
        (
            &["record", "--all", "--stack-map-size", "4294967296"][..],
            "'4294967296' for '--stack-map-size",
        ),
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

/// Durations and sizes at the extremes, from flags and the agent's config:
/// one sentence naming the flag or key and the accepted range, never a
/// panic (exit 101).
#[test]
fn extreme_durations_and_sizes() {
    let dir = scratch("err_extremes");
    let store = dir.join("store");
    std::fs::create_dir_all(&store).unwrap();
    let store = store.to_str().unwrap();
    for (args, want) in [
        (
            &[
                "query",
                "--store-dir",
                store,
                "--since",
                "99999999999999999h",
            ][..],
            "--since \"99999999999999999h\" is out of range; use 1ms to 3650d",
        ),
        (
            &["query", "--store-dir", store, "--since=-5m"][..],
            "--since \"-5m\" is not a valid duration",
        ),
        (
            &[
                "agent",
                "--check-config",
                "--retention",
                "99999999999999999h",
            ][..],
            "store.retention = \"99999999999999999h\" is out of range; use 1m to 3650d",
        ),
        (
            &["agent", "--check-config", "--window", "0.0000000001s"][..],
            "window = \"0.0000000001s\" must be greater than zero; use 1s to 1h",
        ),
        (
            &[
                "agent",
                "--check-config",
                "--store-max-size",
                "99999999999999999999999GiB",
            ][..],
            "store.max_size = \"99999999999999999999999GiB\" is out of range; use 1MiB to 16TiB",
        ),
        (
            &["agent", "--check-config", "-F", "18446744073709551615"][..],
            "frequency = 18446744073709551615 is out of range",
        ),
    ] {
        let out = ember(args, &dir);
        assert_ne!(out.status.code(), Some(101), "{args:?} panicked");
        let err = one_error(&out);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    for (cfg, want) in [
        (
            "[store]\nretention = \"1000000y\"\n",
            "store.retention = \"1000000y\" is not a valid duration",
        ),
        (
            "[store]\nretention = \"1000000d\"\n",
            "store.retention = \"1000000d\" is out of range; use 1m to 3650d",
        ),
        (
            "[queue]\nmax_size = \"1B\"\n",
            "queue.max_size = \"1B\" is out of range; use 1KiB to 4GiB",
        ),
        (
            "[sampler]\nunwind_memory = \"18446744073709551616\"\n",
            "sampler.unwind_memory = \"18446744073709551616\" is out of range",
        ),
        (
            "[sampler]\nstack_map_size = 4000000000\n",
            "sampler.stack_map_size = 4000000000 is out of range; use 64 to 262144",
        ),
        (
            "[[push]]\nkind = \"pyroscope\"\nurl = \"http://x\"\ntimeout = \"100000000000d\"\n",
            "push #1 timeout = \"100000000000d\" is out of range; use 100ms to 10m",
        ),
    ] {
        std::fs::write(dir.join("c.toml"), cfg).unwrap();
        let out = ember(
            &[
                "agent",
                "--config",
                dir.join("c.toml").to_str().unwrap(),
                "--check-config",
            ],
            &dir,
        );
        assert_ne!(out.status.code(), Some(101), "{cfg} panicked");
        let err = one_error(&out);
        assert!(err.contains(want), "{cfg}: {err}");
    }
}
