//! The deploy/ files are real: the systemd unit verifies, its capability set
//! is enough for ember to profile and name user and kernel frames, the
//! DaemonSet grants the same set, and the sample config is valid.

mod common;

use std::process::{Command, Stdio};

use common::*;

fn unit_caps() -> Vec<String> {
    let unit = std::fs::read_to_string(fixture_src("../deploy/ember-agent.service")).unwrap();
    let line = unit
        .lines()
        .find(|l| l.starts_with("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit");
    line["CapabilityBoundingSet=".len()..]
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect()
}

#[test]
fn unit_capabilities_are_enough() {
    let caps = unit_caps();
    assert!(caps.contains(&"bpf".to_string()) && caps.contains(&"perfmon".to_string()));
    assert!(
        !caps.iter().any(|c| c == "sys_admin"),
        "the unit should not need CAP_SYS_ADMIN"
    );
    let bin = fixture("split.c");
    let dir = scratch("deploy_caps");
    let mut split = Command::new(&bin)
        .arg("3")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let set = format!(
        "-all,{}",
        caps.iter()
            .map(|c| format!("+{c}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let out = Command::new("setpriv")
        .args([
            "--bounding-set",
            &set,
            "--inh-caps",
            "-all",
            EMBER,
            "record",
            "--all",
            "-d",
            "1500ms",
            "-F",
            "199",
            "-o",
            "c.folded",
        ])
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = split.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let f = folded(&dir.join("c.folded"));
    assert!(
        count_where(&f, |x| x == "gamma_") > 20,
        "user frames not named with the unit's capabilities"
    );
    let kernel_named = f.keys().any(|k| {
        k.split(';')
            .any(|x| x.ends_with("_[k]") && x != "[unknown]_[k]")
    });
    assert!(
        kernel_named,
        "kernel frames not named (CAP_SYSLOG for kallsyms?)"
    );
}

#[test]
fn unit_file_verifies() {
    let dir = scratch("deploy_unit");
    let unit = std::fs::read_to_string(fixture_src("../deploy/ember-agent.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/ember", EMBER);
    let path = dir.join("ember-agent.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("ember-agent.service"))
        .collect();
    assert!(problems.is_empty(), "{problems:?}");
}

#[test]
fn daemonset_grants_the_same_capabilities() {
    let script = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
ds = [d for d in docs if d["kind"] == "DaemonSet"][0]
spec = ds["spec"]["template"]["spec"]
assert spec["hostPID"] is True
c = spec["containers"][0]
sc = c["securityContext"]
assert sc["privileged"] is False
assert sc["capabilities"]["drop"] == ["ALL"]
print(" ".join(x.lower() for x in sc["capabilities"]["add"]))
assert any(e["name"] == "NODE_NAME" for e in c["env"])
assert "limits" in c["resources"]
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(fixture_src("../deploy/daemonset.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut ds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    let mut unit = unit_caps();
    ds.sort();
    unit.sort();
    assert_eq!(ds, unit);
}

#[test]
fn sample_config_is_valid() {
    let dir = scratch("deploy_config");
    let cfg = fixture_src("../deploy/agent.toml");
    let out = ember(
        &["agent", "--config", cfg.to_str().unwrap(), "--check-config"],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The DaemonSet's embedded config too.
    let script = r#"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
print([d for d in docs if d["kind"] == "ConfigMap"][0]["data"]["agent.toml"])
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(fixture_src("../deploy/daemonset.yaml"))
        .output()
        .unwrap();
    std::fs::write(dir.join("ds.toml"), &out.stdout).unwrap();
    let out = ember(
        &[
            "agent",
            "--config",
            dir.join("ds.toml").to_str().unwrap(),
            "--check-config",
        ],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
