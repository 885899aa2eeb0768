//! End-to-end tests of `ember agent` with the real BPF sampler: windows in
//! the local store, `ember query`, the HTTP endpoint, push to stand-ins for
//! Pyroscope and Parca that enforce the servers' validation rules, outages,
//! rejections, shutdown, process churn and bad configs. Root only (CI is).

mod common;
#[path = "common/stand_in.rs"]
mod receiver;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ember::profile::pprof;
use receiver::{Backend, Receiver};

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The fork/exec storm measures how many of 200 short processes the agent
/// names, which another test's CPU burner on the same two cores starves
/// (it failed so on main when run beside agent_windows_query_and_endpoint).
/// Agents of other tests share this lock; the storm's agent holds it alone.
static CPU: RwLock<()> = RwLock::new(());

enum CpuGuard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
}

struct Agent {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
    _cpu: CpuGuard,
}

impl Agent {
    fn start(dir: &Path, extra: &[&str]) -> Agent {
        Agent::start_in(dir, extra, None)
    }

    /// With no other test's agent (or CPU burner) running meanwhile.
    fn start_alone(dir: &Path, extra: &[&str]) -> Agent {
        let g = CPU.write().unwrap_or_else(|e| e.into_inner());
        Agent::launch(dir, extra, None, CpuGuard::Alone(g))
    }

    /// Started inside `cgroup` (its pid written to cgroup.procs before
    /// ember is exec'd, so every allocation is charged there).
    fn start_in(dir: &Path, extra: &[&str], cgroup: Option<&MemCgroup>) -> Agent {
        let g = CPU.read().unwrap_or_else(|e| e.into_inner());
        Agent::launch(dir, extra, cgroup, CpuGuard::Shared(g))
    }

    fn launch(dir: &Path, extra: &[&str], cgroup: Option<&MemCgroup>, cpu: CpuGuard) -> Agent {
        let http = free_addr();
        let store = dir.join("store");
        let log = dir.join("agent.log");
        let mut args: Vec<String> = vec![
            "agent".into(),
            "--store-dir".into(),
            store.display().to_string(),
            "--http-listen".into(),
            http.to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut cmd = match cgroup {
            None => Command::new(EMBER),
            Some(cg) => {
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(cg.path.join("cgroup.procs"))
                    .arg(EMBER);
                c
            }
        };
        let child = cmd
            .args(&args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let a = Agent {
            child,
            http,
            log,
            _cpu: cpu,
        };
        // Ready once the endpoint answers.
        let t0 = Instant::now();
        while get(a.http, "/healthz").0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "agent did not come up: {}",
                a.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        a
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait; returns the log.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "agent exited with {st}: {}", self.log_text());
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "agent did not stop on SIGTERM: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.log_text()
    }

    fn metric(&self, name: &str) -> f64 {
        let (_, body) = get(self.http, "/metrics");
        let text = String::from_utf8_lossy(&body);
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    }
}

/// A memory cgroup (v1, or v2 where v1 is absent) with a hard limit,
/// removed (its processes killed first: only the agent this test started
/// is ever put in it) when dropped.
struct MemCgroup {
    path: PathBuf,
    v2: bool,
}

impl MemCgroup {
    fn new(name: &str, limit: u64) -> MemCgroup {
        let v1 = Path::new("/sys/fs/cgroup/memory");
        let (root, v2) = if v1.is_dir() {
            (v1.to_path_buf(), false)
        } else {
            (PathBuf::from("/sys/fs/cgroup"), true)
        };
        let path = root.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).unwrap_or_else(|e| {
            panic!(
                "cannot create the memory cgroup {} ({e}); this test needs root and the memory controller",
                path.display()
            )
        });
        let cg = MemCgroup { path, v2 };
        let file = if v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        std::fs::write(cg.path.join(file), limit.to_string()).unwrap();
        if v2 {
            let _ = std::fs::write(cg.path.join("memory.swap.max"), "0");
        } else if cg.path.join("memory.memsw.limit_in_bytes").exists() {
            std::fs::write(
                cg.path.join("memory.memsw.limit_in_bytes"),
                limit.to_string(),
            )
            .unwrap();
        }
        cg
    }

    /// Peak memory charged to the group.
    fn peak(&self) -> u64 {
        let file = if self.v2 {
            "memory.peak"
        } else {
            "memory.max_usage_in_bytes"
        };
        std::fs::read_to_string(self.path.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: kill(2); only the agent this test started is in here.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let t0 = Instant::now();
        while std::fs::remove_dir(&self.path).is_err() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A minimal blocking HTTP/1.1 GET.
fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, vec![]);
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let Some(split) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, vec![]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, buf[split + 4..].to_vec())
}

/// (labels, profile) of every stored window.
fn stored(
    store: &Path,
) -> Vec<(
    std::collections::BTreeMap<String, String>,
    pprof::proto::Profile,
    String,
)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(store).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "gz") {
            let prof = pprof::read(&std::fs::read(&p).unwrap()).unwrap();
            let labels = ember::agent::store::labels_of(&prof);
            out.push((
                labels,
                prof,
                p.file_name().unwrap().to_string_lossy().into_owned(),
            ));
        }
    }
    out
}

fn total(p: &pprof::proto::Profile) -> i64 {
    p.sample.iter().map(|s| s.value[0]).sum()
}

/// Windows land in the store with the right labels and time ranges; `ember
/// query` merges them; the HTTP endpoint serves live profiles that `go tool
/// pprof` reads, the window list, metrics and health; SIGTERM flushes the
/// last window.
#[test]
fn agent_windows_query_and_endpoint() {
    let bin = fixture("split.c");
    let dir = scratch("agent_main");
    let t_start = now_ns();
    let agent = Agent::start(&dir, &["--window", "2s", "-F", "199"]);
    let mut split = Command::new(&bin)
        .arg("6")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = split.id();

    std::thread::sleep(Duration::from_millis(1500));
    // go tool pprof itself fetches the live profile over HTTP.
    let url = format!(
        "http://{}/debug/pprof/profile?seconds=2&pid={pid}",
        agent.http
    );
    let out = Command::new("go")
        .args(["tool", "pprof", "-raw", "-symbolize=none", &url])
        .env("PPROF_TMPDIR", &dir)
        .env("HOME", &dir)
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "go tool pprof failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        raw.contains("gamma_") && raw.contains(&format!("pid:[{pid}]")),
        "{raw}"
    );
    assert!(
        !raw.contains("comm:[ember]"),
        "pid filter leaked other processes"
    );

    assert_eq!(get(agent.http, "/healthz"), (200, b"ok\n".to_vec()));
    assert!(agent.metric("ember_samples_total") > 0.0);
    assert!(agent.metric("process_resident_memory_bytes") > 0.0);
    assert!(agent.metric("ember_drains_total") >= 2.0);
    let (st, body) = get(agent.http, "/windows?since=1m");
    assert_eq!(st, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let first = &list.as_array().unwrap()[0];
    let (st, win) = get(agent.http, first["url"].as_str().unwrap());
    assert_eq!(st, 200);
    assert!(pprof::read(&win).is_ok());
    assert_eq!(get(agent.http, "/nope").0, 404);

    split.wait().unwrap();
    let t_stop = now_ns();
    let log = agent.stop();
    let t_end = now_ns();
    assert!(log.contains("stopping"), "{log}");

    let windows = stored(&dir.join("store"));
    assert!(windows.len() >= 3, "{} windows stored", windows.len());
    let mut max_end = 0;
    for (_, p, _) in &windows {
        let (start, end) = (
            p.time_nanos as u64,
            (p.time_nanos + p.duration_nanos) as u64,
        );
        assert!(
            start >= t_start && end <= t_end,
            "window {start}..{end} outside the run {t_start}..{t_end}"
        );
        assert!(
            p.duration_nanos as u64 <= 2_600_000_000,
            "window of {} ns",
            p.duration_nanos
        );
        max_end = max_end.max(end);
    }
    assert!(
        max_end >= t_stop,
        "the last window was not flushed on SIGTERM"
    );
    let mine: Vec<_> = windows
        .iter()
        .filter(|(l, _, _)| l.get("pid") == Some(&pid.to_string()))
        .collect();
    assert!(mine.len() >= 2, "fixture in {} windows", mine.len());
    for (l, p, _) in &mine {
        assert_eq!(l.get("comm").map(String::as_str), Some("split"), "{l:?}");
        assert_eq!(
            l.get("exe").map(String::as_str),
            Some(bin.to_str().unwrap()),
            "{l:?}"
        );
        assert!(
            l.get("node").is_some_and(|n| !n.is_empty())
                && l.get("service_name").is_some_and(|n| !n.is_empty()),
            "{l:?}"
        );
        assert!(total(p) > 0);
    }
    let service = mine[0].0["service_name"].clone();

    // Query: by pid, by service, by label; the CPU split survives.
    let store = dir.join("store");
    let q = |args: &[&str]| {
        let mut a = vec![
            "query",
            "--store-dir",
            store.to_str().unwrap(),
            "--since",
            "10m",
            "-f",
            "folded",
        ];
        a.extend_from_slice(args);
        let out = ember(&a, &dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f: Vec<(String, u64)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let (s, n) = l.rsplit_once(' ').unwrap();
                (s.to_string(), n.parse().unwrap())
            })
            .collect();
        f
    };
    let by_pid = q(&["--pid", &pid.to_string()]);
    let share = |f: &[(String, u64)], name: &str| {
        let n: u64 = f
            .iter()
            .filter(|(s, _)| s.split(';').any(|x| x == name))
            .map(|x| x.1)
            .sum();
        let all: u64 = f
            .iter()
            .filter(|(s, _)| {
                ["alpha", "beta", "gamma_"]
                    .iter()
                    .any(|g| s.split(';').any(|x| x == *g))
            })
            .map(|x| x.1)
            .sum();
        n as f64 / all.max(1) as f64
    };
    assert!(
        by_pid.iter().all(|(s, _)| s.starts_with("split;")),
        "--pid leaked"
    );
    for (name, want) in [
        ("alpha", 1.0 / 6.0),
        ("beta", 2.0 / 6.0),
        ("gamma_", 3.0 / 6.0),
    ] {
        let got = share(&by_pid, name);
        assert!((got - want).abs() < 0.07, "{name}: {got:.3} vs {want:.3}");
    }
    assert!(!q(&["--service", &service]).is_empty());
    assert!(!q(&["--label", "comm=split"]).is_empty());
    assert!(q(&["--label", "comm=no-such-process"]).is_empty());
    // SVG output to a file.
    let out = ember(
        &[
            "query",
            "--store-dir",
            store.to_str().unwrap(),
            "--since",
            "10m",
            "-o",
            "q.svg",
        ],
        &dir,
    );
    assert!(out.status.success());
    assert!(std::fs::read_to_string(dir.join("q.svg"))
        .unwrap()
        .contains("gamma_"));
}

fn write_secret(dir: &Path, name: &str, value: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    p
}

/// Pushes to Pyroscope (Connect and /ingest) and Parca (gRPC and JSON) are
/// accepted by receivers that enforce the servers' rules, with auth and
/// tenant headers, and without per-process series labels.
#[test]
fn agent_pushes_to_pyroscope_and_parca() {
    let bin = fixture("split.c");
    let dir = scratch("agent_push");
    let rx = Receiver::start();
    rx.require_tenant(Some("team-a".into()));
    let pw = write_secret(&dir, "pw", "s3cret");
    let token = write_secret(&dir, "token", "tok-123");
    let cfg = format!(
        r#"
frequency = 99
window = "1s"
[[push]]
kind = "pyroscope"
url = "{u}"
tenant = "team-a"
basic_auth_user = "user"
basic_auth_password_file = "{pw}"
[[push]]
kind = "pyroscope-ingest"
url = "{u}"
tenant = "team-a"
[[push]]
kind = "parca"
url = "{u}"
tenant = "team-a"
bearer_token_file = "{token}"
[[push]]
kind = "parca-json"
url = "{u}/"
tenant = "team-a"
"#,
        u = rx.url(),
        pw = pw.display(),
        token = token.display()
    );
    std::fs::write(dir.join("agent.toml"), cfg).unwrap();
    let agent = Agent::start(
        &dir,
        &["--config", dir.join("agent.toml").to_str().unwrap()],
    );
    let mut split = Command::new(&bin)
        .arg("3")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    split.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let attempts = agent.metric("ember_push_attempts_total");
    let successes = agent.metric("ember_push_successes_total");
    // Read while pushes may be in flight: no failure, and successes trail
    // attempts by at most one request per backend.
    let failures = agent.metric("ember_push_failures_total");
    let log = agent.stop();
    let got = rx.received();
    let rejected: Vec<_> = got
        .iter()
        .filter(|r| r.status >= 300 || r.grpc_status.unwrap_or(0) != 0)
        .collect();
    assert!(
        rejected.is_empty(),
        "rejected: {:?}\n{log}",
        rejected
            .iter()
            .map(|r| (&r.backend, &r.error))
            .collect::<Vec<_>>()
    );
    assert!(
        failures == 0.0 && successes > 0.0 && attempts - successes <= 4.0,
        "{successes} of {attempts}, {failures} failed\n{log}"
    );
    for backend in [
        Backend::Pyroscope,
        Backend::PyroscopeIngest,
        Backend::Parca,
        Backend::ParcaJson,
    ] {
        let mine: Vec<_> = got.iter().filter(|r| r.backend == backend).collect();
        assert!(mine.len() >= 2, "{backend:?}: {} requests", mine.len());
        let header = |r: &receiver::Received, k: &str| {
            r.headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        for r in &mine {
            assert_eq!(header(r, "x-scope-orgid").as_deref(), Some("team-a"));
            assert!(
                r.labels.contains_key("service_name") && !r.labels.contains_key("pid"),
                "{:?}",
                r.labels
            );
            assert!(
                !r.profiles.is_empty()
                    && r.profiles
                        .iter()
                        .all(|p| p.time_nanos > 0 && p.duration_nanos > 0)
            );
            match backend {
                Backend::Pyroscope => {
                    // base64("user:s3cret")
                    assert_eq!(
                        header(r, "authorization").as_deref(),
                        Some("Basic dXNlcjpzM2NyZXQ=")
                    );
                    assert_eq!(header(r, "content-encoding").as_deref(), Some("gzip"));
                    assert_eq!(
                        r.labels.get("__name__").map(String::as_str),
                        Some("process_cpu")
                    );
                }
                Backend::Parca => assert_eq!(
                    header(r, "authorization").as_deref(),
                    Some("Bearer tok-123")
                ),
                _ => {}
            }
        }
    }
    // The fixture's CPU reached the backends.
    let split_samples: i64 = got
        .iter()
        .filter(|r| {
            r.backend == Backend::Pyroscope
                && r.labels.get("comm").map(String::as_str) == Some("split")
        })
        .flat_map(|r| r.profiles.iter().map(total))
        .sum();
    assert!(split_samples > 100, "{split_samples} split samples pushed");
    assert!(
        !log.contains("tok-123") && !log.contains("s3cret"),
        "a secret was logged"
    );
}

/// With the backend down for several windows, nothing is lost within the
/// queue bound and everything arrives once it is back; past the bound the
/// oldest are dropped and counted.
#[test]
fn push_survives_backend_outage() {
    let bin = fixture("split.c");
    let dir = scratch("agent_outage");
    let addr = free_addr();
    let url = format!("http://{addr}");
    let agent = Agent::start(
        &dir,
        &["--window", "1s", "-F", "99", "--push-pyroscope", &url],
    );
    let mut split = Command::new(&bin)
        .arg("4")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    assert!(agent.metric("ember_push_failures_total") >= 1.0);
    assert!(
        agent.metric("ember_push_queued_profiles") >= 3.0,
        "queued: {}",
        agent.metric("ember_push_queued_profiles")
    );
    let rx = Receiver::start_on(addr);
    split.wait().unwrap();
    let t0 = Instant::now();
    while agent.metric("ember_push_queued_profiles") > 0.0 && t0.elapsed() < Duration::from_secs(40)
    {
        std::thread::sleep(Duration::from_millis(250));
    }
    let dropped = agent.metric("ember_push_dropped_queue_full_total")
        + agent.metric("ember_push_dropped_expired_total");
    let log = agent.stop();
    assert_eq!(dropped, 0.0, "{log}");
    let files = stored(&dir.join("store"));
    let accepted = rx.accepted();
    // Every stored window was delivered (one request per window and target).
    assert_eq!(
        accepted.len(),
        files.len(),
        "{} accepted, {} windows stored\n{log}",
        accepted.len(),
        files.len()
    );

    // A tiny queue while the backend is down: drops are counted, not silent.
    let dir = scratch("agent_outage_small");
    let cfg = format!("window = \"1s\"\nfrequency = 99\n[queue]\nmax_size = \"1KiB\"\n[[push]]\nkind = \"pyroscope\"\nurl = \"http://{}\"\n", free_addr());
    std::fs::write(dir.join("a.toml"), cfg).unwrap();
    let agent = Agent::start(&dir, &["--config", dir.join("a.toml").to_str().unwrap()]);
    let mut split = Command::new(&bin)
        .arg("3")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    split.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let dropped = agent.metric("ember_push_dropped_queue_full_total");
    agent.stop();
    assert!(dropped > 0.0, "no drops counted with a 1 KiB queue");
}

/// A 4xx answer is not retried: one attempt per profile, each counted as
/// rejected.
#[test]
fn push_rejections_are_not_retried() {
    let bin = fixture("split.c");
    let dir = scratch("agent_reject");
    let rx = Receiver::start();
    rx.set_forced_status(Some(400));
    let agent = Agent::start(
        &dir,
        &["--window", "1s", "-F", "99", "--push-pyroscope", &rx.url()],
    );
    let mut split = Command::new(&bin)
        .arg("3")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    split.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let attempts = agent.metric("ember_push_attempts_total");
    let rejected = agent.metric("ember_push_rejected_total");
    let log = agent.stop();
    assert!(
        attempts >= 2.0 && attempts == rejected,
        "{attempts} attempts, {rejected} rejected\n{log}"
    );
    // Exactly one request per profile produced (each is also stored).
    let profiles = stored(&dir.join("store")).len();
    assert_eq!(rx.received().len(), profiles, "requests vs profiles");
    // Logged once per status, not once per profile.
    assert_eq!(log.matches("rejected a profile").count(), 1, "{log}");
}

/// Hundreds of 10 ms processes on a busy host (a busy loop per CPU): they
/// are labeled and named (their mappings come from the kernel's mmap
/// records, not from a race with their exit), and the caches shrink back
/// once they are gone.
#[test]
fn fork_exec_storm_keeps_caches_bounded() {
    let tiny = fixture("tiny.c");
    let dir = scratch("agent_storm");
    let agent = Agent::start_alone(&dir, &["--window", "1s", "-F", "499"]);
    let hogs = Hogs::start();
    let script = format!("for i in $(seq 200); do {}; done", tiny.display());
    let st = Command::new("sh").args(["-c", &script]).status().unwrap();
    drop(hogs);
    assert!(st.success());
    // Exited processes go at the second collection (one per 1 s window)
    // that finds them gone: waited for, with room for a loaded machine
    // (a bound, not a timing: the count must come down at all).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut tracked = agent.metric("ember_processes_tracked");
    while tracked >= 40.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        tracked = agent.metric("ember_processes_tracked");
    }
    let binaries = agent.metric("ember_symbolizer_binaries");
    agent.stop();
    assert!(
        tracked < 40.0,
        "{tracked} processes still tracked a minute after the storm"
    );
    assert!(binaries < 200.0, "{binaries} binaries held");
    let out = ember(
        &[
            "query",
            "--store-dir",
            dir.join("store").to_str().unwrap(),
            "--since",
            "5m",
            "--label",
            "comm=tiny",
            "-f",
            "folded",
        ],
        &dir,
    );
    assert!(out.status.success());
    let f: Vec<(String, u64)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let (s, n) = l.rsplit_once(' ').unwrap();
            (s.to_string(), n.parse().unwrap())
        })
        .collect();
    let all: u64 = f.iter().map(|x| x.1).sum();
    let hot: u64 = f
        .iter()
        .filter(|(s, _)| s.contains("tiny_hot"))
        .map(|x| x.1)
        .sum();
    let unknown: u64 = f
        .iter()
        .filter(|(s, _)| s.rsplit(';').next() == Some("[unknown]"))
        .map(|x| x.1)
        .sum();
    assert!(
        all >= 100,
        "only {all} samples of the short processes were labeled comm=tiny"
    );
    // A 10 ms process spends a good part of its life in exec and the dynamic
    // loader; what matters is that its frames are named.
    assert!(hot as f64 >= 0.4 * all as f64, "{hot}/{all} in tiny_hot");
    assert!(
        unknown * 100 <= all,
        "{unknown} of {all} samples have an unnamed leaf"
    );
}

/// Bad configs fail with one sentence naming the key; --check-config prints
/// the effective config.
#[test]
fn agent_config_errors_and_check() {
    let dir = scratch("agent_config");
    let run = |cfg: &str| {
        std::fs::write(dir.join("c.toml"), cfg).unwrap();
        ember(
            &[
                "agent",
                "--config",
                dir.join("c.toml").to_str().unwrap(),
                "--check-config",
            ],
            &dir,
        )
    };
    for (cfg, want) in [
        ("frequency = 19\nwindw = \"15s\"\n", "windw"),
        ("window = \"soon\"\n", "window = \"soon\""),
        ("[store]\nmax_size = \"lots\"\n", "store.max_size"),
        (
            "[[push]]\nkind = \"zipkin\"\nurl = \"http://x\"\n",
            "kind = \"zipkin\"",
        ),
        ("[[push]]\nkind = \"pyroscope\"\nurl = \"ftp://x\"\n", "url"),
        ("[http]\nlisten = \"localhost\"\n", "http.listen"),
        ("[[relabel]]\naction = \"explode\"\n", "explode"),
        (
            "[[relabel]]\nregex = \"(\"\naction = \"drop\"\nsource_labels = [\"comm\"]\n",
            "regex",
        ),
    ] {
        let out = run(cfg);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success(), "{cfg} was accepted");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{cfg}: {err}");
    }
    let out = run("frequency = 29\n[store]\ndir = \"/tmp/ember-x\"\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("frequency = 29")
            && text.contains("window = \"15s\"")
            && text.contains("/tmp/ember-x"),
        "{text}"
    );
    let out = ember(&["agent", "--config", "/no/such.toml"], &dir);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the config file"));
}

/// Push over TLS (rustls): a server with a private CA is trusted through
/// `ca_file`, for the Connect API (HTTP/1.1 or h2 by ALPN) and gRPC (h2).
#[test]
fn push_over_tls_with_a_private_ca() {
    let bin = fixture("split.c");
    let dir = scratch("agent_tls");
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    // A private CA and a server certificate it signed, as a company runs.
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    for args in [
        "req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=ember-test-ca -keyout ca.key -out ca.pem",
        "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout key.pem -out leaf.csr",
        "x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile ext.cnf -out cert.pem",
    ] {
        let st = Command::new("openssl").args(args.split(' ')).current_dir(&dir).stderr(Stdio::null()).status().expect("openssl");
        assert!(st.success(), "openssl {args}");
    }
    let rx = Receiver::start_tls(&cert, &key);
    let url = format!("https://localhost:{}", rx.addr.port());
    let cfg = format!(
        "window = \"1s\"\nfrequency = 99\n[[push]]\nkind = \"pyroscope\"\nurl = \"{url}\"\nca_file = \"{c}\"\n[[push]]\nkind = \"parca\"\nurl = \"{url}\"\nca_file = \"{c}\"\n",
        c = ca.display()
    );
    std::fs::write(dir.join("a.toml"), cfg).unwrap();
    let agent = Agent::start(&dir, &["--config", dir.join("a.toml").to_str().unwrap()]);
    let mut split = Command::new(&bin)
        .arg("2")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    split.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let failures = agent.metric("ember_push_failures_total");
    let log = agent.stop();
    assert_eq!(failures, 0.0, "{log}");
    let got = rx.accepted();
    assert!(got.iter().any(|r| r.backend == Backend::Pyroscope), "{log}");
    assert!(got.iter().any(|r| r.backend == Backend::Parca), "{log}");
    assert_eq!(got.len(), rx.received().len());
}

/// A backend answering every push with a 512 MiB body (streamed): the agent
/// reads at most 64 KiB of it, so inside a 384 MiB memory cgroup (reading
/// a body whole took it past 1 GB) it stays small, alive, and keeps pushing
/// window after window.
#[test]
fn push_reads_at_most_64k_of_a_response() {
    let bin = fixture("split.c");
    let dir = scratch("agent_huge_body");
    let rx = Receiver::start();
    rx.set_huge_body(Some(512 << 20));
    let limit: u64 = 384 << 20;
    let cg = MemCgroup::new("ember-push-body", limit);
    let agent = Agent::start_in(
        &dir,
        &["--window", "1s", "-F", "99", "--push-pyroscope", &rx.url()],
        Some(&cg),
    );
    let mut split = Command::new(&bin)
        .arg("4")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The agent's anonymous memory (its heap, which a body read whole
    // would grow; file pages of the binaries it symbolizes are
    // reclaimable), sampled while it pushes.
    let anon_kib = || -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", agent.child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("RssAnon:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut max_anon = 0;
    let t0 = Instant::now();
    while split.try_wait().unwrap().is_none() || t0.elapsed() < Duration::from_millis(5500) {
        max_anon = max_anon.max(anon_kib());
        std::thread::sleep(Duration::from_millis(50));
    }
    let successes = agent.metric("ember_push_successes_total");
    let oversized = agent.metric("ember_push_oversized_responses_total");
    let peak = cg.peak();
    let log = agent.stop();
    assert!(
        successes >= 3.0,
        "{successes} pushes succeeded while every answer was 512 MiB\n{log}"
    );
    assert!(
        oversized >= successes,
        "{oversized} oversized answers counted\n{log}"
    );
    assert!(
        max_anon < 160 << 10,
        "agent anonymous memory reached {max_anon} KiB (cgroup peak {peak} of {limit})"
    );
    assert!(rx.accepted().len() as f64 >= successes, "{log}");
}

/// A 307 to another path on the same server is followed with the same
/// method, body and credentials, and counted; a 307 to another host gets
/// the profile but not the credentials or configured headers.
#[test]
fn push_follows_307_and_keeps_credentials_home() {
    let bin = fixture("split.c");
    let dir = scratch("agent_redirect");
    let rx = Receiver::start();
    rx.set_redirect(Some(("", "/moved")));
    let other = Receiver::start();
    let port = other.addr.port();
    let base = format!("http://localhost:{port}");
    other.set_redirect(Some((base.as_str(), "/elsewhere")));
    let pw = write_secret(&dir, "pw", "s3cret");
    let cfg = format!(
        r#"
frequency = 99
window = "1s"
[[push]]
kind = "pyroscope"
url = "{u}"
basic_auth_user = "user"
basic_auth_password_file = "{pw}"
headers = {{ "x-api-key" = "key-123" }}
[[push]]
kind = "pyroscope"
url = "{o}"
basic_auth_user = "user"
basic_auth_password_file = "{pw}"
headers = {{ "x-api-key" = "key-123" }}
"#,
        u = rx.url(),
        o = other.url(),
        pw = pw.display(),
    );
    std::fs::write(dir.join("agent.toml"), cfg).unwrap();
    let agent = Agent::start(
        &dir,
        &["--config", dir.join("agent.toml").to_str().unwrap()],
    );
    let mut split = Command::new(&bin)
        .arg("2")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    split.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let followed = agent.metric("ember_push_redirects_total");
    let rejected = agent.metric("ember_push_rejected_total");
    let log = agent.stop();
    let home = rx.accepted();
    assert!(!home.is_empty() && rx.redirected() >= 1, "{log}");
    assert_eq!(
        home.len() as u64,
        rx.redirected(),
        "every redirected push arrived"
    );
    for r in &home {
        let h = |k: &str| r.headers.iter().any(|(n, _)| n == k);
        assert!(h("authorization") && h("x-api-key"), "{:?}", r.headers);
    }
    let away = other.accepted();
    assert!(!away.is_empty(), "{log}");
    for r in &away {
        let h = |k: &str| r.headers.iter().any(|(n, _)| n == k);
        assert!(
            !h("authorization") && !h("x-api-key"),
            "credentials followed a redirect to another host: {:?}",
            r.headers
        );
    }
    // Read before the final flush: at least one, at most what was answered.
    let answered = rx.redirected() + other.redirected();
    assert!(
        followed >= 1.0 && followed <= answered as f64,
        "{followed} redirects counted, {answered} answered\n{log}"
    );
    assert_eq!(rejected, 0.0, "{log}");
}

/// A backend's error text reaches the log without its escape sequences,
/// line breaks or bells, and cut short.
#[test]
fn push_logs_sanitized_backend_text() {
    let bin = fixture("split.c");
    let dir = scratch("agent_evil_body");
    let rx = Receiver::start();
    rx.set_forced_status(Some(400));
    let mut body =
        b"\x1b[31mEVIL\x1b[0m\nINJECTED: ember agent: fake line\r\n\x07\x1b]0;title\x07".to_vec();
    body.extend(std::iter::repeat_n(b'x', 5000));
    rx.set_forced_body(Some(&body));
    let agent = Agent::start(
        &dir,
        &["--window", "1s", "-F", "99", "--push-pyroscope", &rx.url()],
    );
    let mut split = Command::new(&bin)
        .arg("2")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    split.wait().unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let log = agent.stop();
    let line = log
        .lines()
        .find(|l| l.contains("rejected a profile (400)"))
        .unwrap_or_else(|| panic!("no rejection logged: {log}"));
    assert!(
        line.contains("EVIL INJECTED: ember agent: fake line"),
        "{line}"
    );
    assert!(!log.contains('\x1b') && !log.contains('\x07'), "{log:?}");
    assert!(!log.lines().any(|l| l.starts_with("INJECTED")), "{log}");
    assert!(
        line.chars().count() < 400,
        "{} chars logged",
        line.chars().count()
    );
}

/// Credentials: a URL with user information is refused at start without
/// echoing it; --check-config never prints header values; a token file
/// with a line break inside fails validation in one sentence naming the key
/// and the file.
#[test]
fn push_credentials_are_checked_and_never_shown() {
    let dir = scratch("agent_secrets");
    for args in [
        &[
            "agent",
            "--check-config",
            "--push-pyroscope",
            "http://user:hunter2@127.0.0.1:4040",
        ][..],
        &["agent", "--push-parca", "https://user:hunter2@parca:7070"][..],
    ] {
        let out = ember(args, &dir);
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success(), "{args:?} was accepted");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("basic_auth_user") && err.contains("basic_auth_password_file"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    let token = write_secret(&dir, "token", "tok-SECRET-5a7c");
    let cfg = format!(
        "[[push]]\nkind = \"parca\"\nurl = \"http://127.0.0.1:7070\"\nbearer_token_file = \"{}\"\nheaders = {{ \"x-api-key\" = \"HEADER-SECRET-91f2\" }}\n",
        token.display()
    );
    std::fs::write(dir.join("ok.toml"), &cfg).unwrap();
    let out = ember(
        &[
            "agent",
            "--config",
            dir.join("ok.toml").to_str().unwrap(),
            "--check-config",
        ],
        &dir,
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("x-api-key") && stdout.contains("<redacted>"),
        "{stdout}"
    );
    for secret in ["HEADER-SECRET-91f2", "tok-SECRET-5a7c"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
    }

    for (name, content, want) in [
        ("nl-token", "tok-abc\ndef\n", "line break"),
        ("nul-token", "tok\0abc", "control character"),
        ("space-token", "tok abc", "printable ASCII"),
        ("empty-token", "\n", "is empty"),
    ] {
        let f = dir.join(name);
        std::fs::write(&f, content).unwrap();
        std::fs::write(
            dir.join("bad.toml"),
            cfg.replace(&token.display().to_string(), &f.display().to_string()),
        )
        .unwrap();
        let out = ember(
            &[
                "agent",
                "--config",
                dir.join("bad.toml").to_str().unwrap(),
                "--check-config",
            ],
            &dir,
        );
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success(), "{name} was accepted");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("bearer_token_file")
                && err.contains(&f.display().to_string())
                && err.contains(want),
            "{err}"
        );
        assert!(!err.contains("abc"), "the token leaked: {err}");
    }
    // A header value with a line break is refused without being echoed.
    std::fs::write(
        dir.join("bad.toml"),
        cfg.replace("HEADER-SECRET-91f2", "HEADER-SECRET\\r\\nx-evil: 1"),
    )
    .unwrap();
    let out = ember(
        &[
            "agent",
            "--config",
            dir.join("bad.toml").to_str().unwrap(),
            "--check-config",
        ],
        &dir,
    );
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success() && err.lines().count() == 1, "{err}");
    assert!(
        err.contains("x-api-key") && !err.contains("HEADER-SECRET"),
        "{err}"
    );
}

/// The agent walks Python frames too: a CPython workload's functions are in
/// its stored windows, /metrics counts the Python processes and walks, and
/// 50 Python processes (each with its own code objects) keep the agent's
/// memory bounded.
#[test]
fn agent_names_python_frames_with_bounded_memory() {
    let dir = scratch("agent_python");
    let py = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("the Python agent test needs the system python3");
    let agent = Agent::start(&dir, &["--window", "2s", "-F", "99"]);
    // Warmed up (kernel symbols read, first windows cut) before the
    // baseline.
    std::thread::sleep(Duration::from_secs(5));
    let rss0 = agent.metric("process_resident_memory_bytes");
    let src = fixture_src("pysplit.py");
    let mut split = Command::new(py)
        .arg(&src)
        .args(["5", "plain"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // 50 more Python processes, each defining and running 200 functions
    // of its own (10 000 code objects in all), sleeping between rounds so
    // that the agent is not starved of CPU on a 2-core machine.
    let many: Vec<Child> = (0..50)
        .map(|i| {
            let code = format!(
                "import time\nfs=[]\nfor k in range(200):\n    exec('def f%d_{i}(n):\\n    return sum(range(n))' % k)\n    fs.append(eval('f%d_{i}' % k))\nend=time.monotonic()+5\nwhile time.monotonic()<end:\n    for f in fs: f(200)\n    time.sleep(0.02)\n"
            );
            Command::new(py)
                .args(["-c", &code])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    let cache_mid = agent.metric("ember_python_code_cache_bytes");
    assert!(split.wait().unwrap().success());
    for mut c in many {
        let _ = c.wait();
    }
    // Exits are acted on after two windows.
    std::thread::sleep(Duration::from_secs(5));
    let processes = agent.metric("ember_python_processes_total");
    let walked = agent.metric("ember_python_stacks_total");
    let named = agent.metric("ember_python_code_objects_total");
    let cache = agent.metric("ember_python_code_cache_bytes");
    let rss1 = agent.metric("process_resident_memory_bytes");
    eprintln!(
        "python: {processes} registrations, {walked} samples walked, {named} code objects read, cache {:.2} MiB while they ran, {:.2} MiB after; agent RSS {:.1} -> {:.1} MiB",
        cache_mid / 1048576.0,
        cache / 1048576.0,
        rss0 / 1048576.0,
        rss1 / 1048576.0
    );
    assert!(processes >= 51.0, "{processes} Python processes found");
    assert!(
        cache_mid > 0.0 && cache < cache_mid,
        "the code cache is not released when processes exit"
    );
    assert!(walked > 0.0 && named > 0.0);
    assert!(
        rss1 < rss0 + 64.0 * 1048576.0,
        "agent RSS grew from {rss0} to {rss1} bytes with 51 Python processes"
    );
    agent.stop();
    let out = ember(
        &[
            "query",
            "--store-dir",
            dir.join("store").to_str().unwrap(),
            "--since",
            "10m",
            "-f",
            "folded",
        ],
        &dir,
    );
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let gamma: u64 = text
        .lines()
        .filter(|l| l.contains(";gamma (pysplit.py)_[py]"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let mine: u64 = text
        .lines()
        .filter(|l| l.contains("(pysplit.py)_[py]"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    eprintln!("stored windows: {mine} samples under pysplit.py, {gamma} in gamma");
    assert!(mine > 100 && gamma * 100 > mine * 35, "{mine} {gamma}");
}

/// With `off_cpu = true`, windows carry the off-CPU type, and pushes send
/// it as its own profile type: `off_cpu:off_cpu:nanoseconds::` to
/// Pyroscope, `parca_agent:wallclock:nanoseconds:samples:count` to Parca,
/// next to the CPU series; the stand-in receivers validate both the way
/// the servers do.
#[test]
fn agent_pushes_off_cpu_time_as_its_own_profile_type() {
    let bin = fixture("waits.c");
    let dir = scratch("agent_offcpu");
    let rx = Receiver::start();
    let cfg = format!(
        r#"
frequency = 99
window = "1s"
off_cpu = true
[[push]]
kind = "pyroscope"
url = "{u}"
[[push]]
kind = "parca"
url = "{u}"
"#,
        u = rx.url()
    );
    std::fs::write(dir.join("agent.toml"), cfg).unwrap();
    let agent = Agent::start(
        &dir,
        &["--config", dir.join("agent.toml").to_str().unwrap()],
    );
    let mut w = Command::new(&bin)
        .arg("3")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    w.wait().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let waits = agent.metric("ember_off_cpu_waits_total");
    let switches = agent.metric("ember_off_cpu_switches_total");
    let log = agent.stop();
    assert!(waits > 0.0, "no off-CPU wait recorded\n{log}");
    assert!(
        switches >= waits,
        "{switches} switches seen, {waits} waits recorded"
    );
    let got = rx.received();
    let type_of = |p: &pprof::proto::Profile| -> Vec<String> {
        p.sample_type
            .iter()
            .map(|t| p.string_table[t.r#type as usize].clone())
            .collect()
    };
    for (backend, name, ty) in [
        (Backend::Pyroscope, "off_cpu", "off_cpu"),
        (Backend::Parca, "parca_agent", "wallclock"),
    ] {
        let off: Vec<_> = got
            .iter()
            .filter(|r| r.backend == backend)
            .filter(|r| r.profiles.iter().any(|p| type_of(p) == [ty]))
            .collect();
        assert!(
            !off.is_empty(),
            "{backend:?}: no off-CPU series pushed\n{log}"
        );
        for r in &off {
            assert!(
                r.status < 300 && r.grpc_status.unwrap_or(0) == 0,
                "{:?}",
                r.error
            );
            assert_eq!(r.labels.get("__name__").map(String::as_str), Some(name));
        }
        let ns: i64 = off
            .iter()
            .flat_map(|r| &r.profiles)
            .flat_map(|p| &p.sample)
            .map(|s| s.value[0])
            .sum();
        assert!(
            ns > 1_000_000_000,
            "{backend:?}: only {ns} ns off CPU pushed"
        );
        // The CPU series is still there, with its own types.
        assert!(got.iter().any(|r| r.backend == backend
            && r.profiles
                .iter()
                .any(|p| type_of(p).contains(&"cpu".to_string()))));
    }
    // The stored windows carry the off_cpu type.
    let q = ember(
        &[
            "query",
            "--store-dir",
            dir.join("store").to_str().unwrap(),
            "--since",
            "10m",
            "-o",
            dir.join("q.pb.gz").to_str().unwrap(),
        ],
        &dir,
    );
    assert!(q.status.success(), "{}", String::from_utf8_lossy(&q.stderr));
    let p = pprof::read_profile(&std::fs::read(dir.join("q.pb.gz")).unwrap()).unwrap();
    assert!(
        p.off_cpu && p.off_cpu_total() > 1_000_000_000,
        "{}",
        p.off_cpu_total()
    );
}
