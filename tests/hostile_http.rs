//! The agent against hostile local users and hostile store contents, with
//! the real BPF sampler cutting windows all along: idle connections, piles
//! of abandoned live requests, overflowing query parameters, unprivileged
//! readers (nobody, nobody as "root" of a user namespace), non-loopback
//! clients in a private network namespace, bearer tokens, symlinks, FIFOs,
//! hard links, a gzip bomb and forged windows in the store (inside a memory
//! cgroup, so a regression fails the test rather than the machine), and a
//! read-only store. Root only (CI is).

mod common;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const NOBODY: u32 = 65534;

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

/// A memory cgroup (v1) that the agent and `ember query` run in: a
/// regression that inflates a bomb is killed there, not on the machine.
struct MemCgroup {
    path: PathBuf,
}

impl MemCgroup {
    fn new(name: &str, limit: u64) -> MemCgroup {
        let path = PathBuf::from("/sys/fs/cgroup/memory")
            .join(format!("ember-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).expect("creating a memory cgroup (v1)");
        std::fs::write(path.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
        MemCgroup { path }
    }

    /// Makes `cmd` join the cgroup before it execs.
    fn enter(&self, cmd: &mut Command) {
        let procs = CString::new(self.path.join("cgroup.procs").as_os_str().as_bytes()).unwrap();
        // SAFETY: only async-signal-safe calls (open, write, close) between
        // fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0\n".as_ptr().cast(), 2) == 2;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    }

    fn read(&self, file: &str) -> u64 {
        std::fs::read_to_string(self.path.join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // Empty once its processes are gone; retry briefly.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

struct Agent {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, extra: &[&str], cgroup: Option<&MemCgroup>) -> Agent {
        let http = free_addr();
        let log = dir.join("agent.log");
        let mut cmd = Command::new(EMBER);
        cmd.arg("agent")
            .arg("--store-dir")
            .arg(dir.join("store"))
            .arg("--http-listen")
            .arg(http.to_string())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(cg) = cgroup {
            cg.enter(&mut cmd);
        }
        let child = cmd.spawn().unwrap();
        let mut a = Agent { child, http, log };
        let t0 = Instant::now();
        while get(a.http, "/healthz").0 != 200 {
            assert!(
                a.child.try_wait().unwrap().is_none(),
                "agent exited: {}",
                a.log_text()
            );
            assert!(
                t0.elapsed() < Duration::from_secs(30),
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

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

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

    fn metrics(&self) -> String {
        String::from_utf8_lossy(&get(self.http, "/metrics").1).into_owned()
    }

    /// Sum of a metric's series (with `{` in `name`, one series).
    fn metric(&self, name: &str) -> f64 {
        metric_in(&self.metrics(), name)
    }

    /// Waits until `metric` satisfies `ok`; returns its last value.
    fn wait_metric(&self, name: &str, deadline: Duration, ok: impl Fn(f64) -> bool) -> f64 {
        let t0 = Instant::now();
        loop {
            let v = self.metric(name);
            if ok(v) || t0.elapsed() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn metric_in(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            if name.contains('{') {
                l.starts_with(name)
            } else {
                l.split([' ', '{']).next() == Some(name)
            }
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

/// A blocking HTTP/1.1 GET as root from loopback, with extra header lines.
fn get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return (0, vec![]);
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    if write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n"
    )
    .is_err()
    {
        return (0, vec![]);
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

fn get(addr: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    get_with(addr, path, "")
}

fn parse_response(buf: &[u8]) -> (u16, Vec<u8>) {
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

/// curl as `uid` (via setpriv, no groups) or as root: (status, body).
fn curl_as(uid: Option<u32>, url: &str, headers: &[&str]) -> (u16, Vec<u8>) {
    curl_in(uid, None, url, headers)
}

/// curl, optionally as `uid` and inside the network namespace of `netns_pid`.
fn curl_in(
    uid: Option<u32>,
    netns_pid: Option<u32>,
    url: &str,
    headers: &[&str],
) -> (u16, Vec<u8>) {
    let mut argv: Vec<String> = Vec::new();
    if let Some(pid) = netns_pid {
        argv.extend(["nsenter", "-t", &pid.to_string(), "-n", "--"].map(String::from));
    }
    if let Some(u) = uid {
        argv.extend(
            [
                "setpriv",
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--clear-groups",
            ]
            .map(String::from),
        );
    }
    argv.extend(["curl", "-s", "-m", "60", "-w", "\n%{http_code}"].map(String::from));
    for h in headers {
        argv.push("-H".into());
        argv.push(h.to_string());
    }
    argv.push(url.into());
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir("/")
        .output()
        .unwrap();
    let mut body = out.stdout;
    let nl = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
    let code = String::from_utf8_lossy(&body[nl..])
        .trim()
        .parse()
        .unwrap_or(0);
    body.truncate(nl);
    (code, body)
}

fn one_sentence(body: &[u8]) -> String {
    let t = String::from_utf8_lossy(body).into_owned();
    assert_eq!(t.trim_end().lines().count(), 1, "not one line: {t:?}");
    assert!(t.trim_end().len() > 20, "{t:?}");
    t
}

fn raise_nofile(n: u64) {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid rlimit structs.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur), 0);
        if cur.rlim_cur < n {
            let r = libc::rlimit {
                rlim_cur: n,
                rlim_max: cur.rlim_max.max(n),
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
        }
    }
}

/// 1100 idle connections, then 20 abandoned live requests, then a query
/// parameter that overflows: /healthz keeps answering, windows keep being
/// cut, the live set drains when clients leave, idle connections are
/// closed by the header timeout.
#[test]
fn idle_connections_and_abandoned_live_requests() {
    raise_nofile(8192);
    let dir = scratch("hostile_conns");
    let agent = Agent::start(&dir, &["--window", "1s", "-F", "49"], None);
    let windows_before = agent.metric("ember_windows_total");

    let t0 = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = TcpStream::connect_timeout(&agent.http, Duration::from_secs(5)) {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 1000, "only {} connections opened", idle.len());
    let opened = t0.elapsed();
    let t1 = Instant::now();
    let (st, body) = get(agent.http, "/healthz");
    let took = t1.elapsed();
    assert_eq!(
        (st, body.as_slice()),
        (200, &b"ok\n"[..]),
        "after {opened:?}"
    );
    assert!(took < Duration::from_secs(5), "/healthz took {took:?}");
    let m = agent.metrics();
    assert!(
        metric_in(&m, "ember_http_connections") <= 256.0,
        "{}",
        metric_in(&m, "ember_http_connections")
    );
    assert!(metric_in(&m, "ember_http_connections_evicted_total") >= 800.0);
    // Windows keep coming while the connections sit there.
    let w = agent.wait_metric("ember_windows_total", Duration::from_secs(20), |v| {
        v >= windows_before + 3.0
    });
    assert!(
        w >= windows_before + 3.0,
        "{w} windows, {windows_before} before"
    );
    // The newest idle connection was not evicted; the header timeout closes
    // it (it never sent a request).
    let last = idle.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut b = [0u8; 64];
    assert!(
        matches!(last.read(&mut b), Ok(0)),
        "an idle connection stayed open"
    );
    assert!(agent.metric("ember_http_header_timeouts_total") >= 1.0);
    drop(idle);

    // 20 live requests: 8 collect, 12 are refused at once with 429.
    let mut live = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect_timeout(&agent.http, Duration::from_secs(5)).unwrap();
        s.write_all(b"GET /debug/pprof/profile?seconds=60 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        live.push(s);
    }
    std::thread::sleep(Duration::from_secs(2));
    let (mut refused, mut waiting) = (0, 0);
    for s in &mut live {
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut buf = vec![0u8; 4096];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {
                let (st, body) = parse_response(&buf[..n]);
                assert_eq!(st, 429, "{}", String::from_utf8_lossy(&buf[..n]));
                one_sentence(&body);
                refused += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                waiting += 1
            }
            other => panic!("live request: {other:?}"),
        }
    }
    assert_eq!((refused, waiting), (12, 8));
    assert_eq!(agent.metric("ember_http_live_requests"), 8.0);
    assert_eq!(agent.metric("ember_http_live_rejected_total"), 12.0);
    // The clients go away: their requests leave the live set.
    drop(live);
    let n = agent.wait_metric("ember_http_live_requests", Duration::from_secs(20), |v| {
        v == 0.0
    });
    assert_eq!(n, 0.0, "abandoned live requests stay");
    assert_eq!(agent.metric("ember_http_live_cancelled_total"), 8.0);
    // No slot leaked: 8 new ones are taken (none gets 429), and they too
    // leave when their clients do.
    let mut again = Vec::new();
    for _ in 0..8 {
        let mut s = TcpStream::connect_timeout(&agent.http, Duration::from_secs(5)).unwrap();
        s.write_all(b"GET /debug/pprof/profile?seconds=600 HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        again.push(s);
    }
    let n = agent.wait_metric("ember_http_live_requests", Duration::from_secs(20), |v| {
        v == 8.0
    });
    assert_eq!(n, 8.0);
    assert_eq!(agent.metric("ember_http_live_rejected_total"), 12.0);
    drop(again);
    let n = agent.wait_metric("ember_http_live_requests", Duration::from_secs(20), |v| {
        v == 0.0
    });
    assert_eq!(n, 0.0);
    assert_eq!(agent.metric("ember_http_live_cancelled_total"), 16.0);

    // Overflowing and malformed parameters: 400 with one sentence.
    for path in [
        "/windows?since=99999999999999999h",
        "/windows?since=18446744073709551616",
        "/windows?since=-5m",
        "/debug/pprof/profile?seconds=99999999999999999999999",
        "/debug/pprof/profile?seconds=0",
        "/debug/pprof/profile?pid=-1",
        "/windows/..%2F..%2Fetc%2Fpasswd",
        "/windows/1-2-0123456789abcdeg",
    ] {
        let (st, body) = get(agent.http, path);
        assert_eq!(st, 400, "{path}: {}", String::from_utf8_lossy(&body));
        one_sentence(&body);
    }
    assert_eq!(get(agent.http, "/windows/../../etc/passwd").0 / 100, 4);
    assert_eq!(get(agent.http, "/healthz").0, 200);
    let w = agent.metric("ember_windows_total");
    let log = agent.stop();
    assert!(w >= windows_before + 5.0, "{w} windows\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Who may read: root over loopback; nobody gets 403 (also as "root" of its
/// own user namespace), but /healthz and /metrics; a bearer token opens
/// everything to any uid; allow_groups admits a group's members; clients
/// from a non-loopback address need the token even as root.
#[test]
fn access_by_uid_group_and_token() {
    let dir = scratch("hostile_access");
    let token = "ember-test-token-5c1e0c9d2b7a4f38";
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    std::fs::write(
        dir.join("a.toml"),
        format!(
            "window = \"1s\"\nfrequency = 49\n[http]\nbearer_token_file = \"{}\"\n",
            dir.join("token").display()
        ),
    )
    .unwrap();
    let agent = Agent::start(
        &dir,
        &["--config", dir.join("a.toml").to_str().unwrap()],
        None,
    );
    let base = format!("http://{}", agent.http);
    // Wait for a window to exist.
    agent.wait_metric("ember_store_windows", Duration::from_secs(20), |v| v >= 1.0);
    let (st, body) = get(agent.http, "/windows?since=1h");
    assert_eq!(st, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let url = list[0]["url"].as_str().expect("a window").to_string();

    let bearer = format!("Authorization: Bearer {token}");
    let restricted = [
        "/debug/pprof/profile?seconds=1".to_string(),
        "/windows".to_string(),
        "/windows?since=1h".to_string(),
        url.clone(),
        // The page and what it embeds and offers for download.
        "/".to_string(),
        "/flamegraph.svg?since=1h".to_string(),
        "/profile.pb.gz?since=1h&sort=total".to_string(),
    ];
    for path in &restricted {
        let u = format!("{base}{path}");
        let (st, body) = curl_as(Some(NOBODY), &u, &[]);
        assert_eq!(st, 403, "nobody read {path}");
        let t = one_sentence(&body);
        assert!(
            t.contains("uid 65534") && t.contains("http.allow_uids") && t.contains("Bearer"),
            "{t}"
        );
        // As "root" of an unprivileged user namespace: still nobody.
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "unshare",
                "-Ur",
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &u,
            ])
            .current_dir("/")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "403",
            "userns root read {path}"
        );
        // With the token, from any uid.
        let (st, body) = curl_as(Some(NOBODY), &u, &[&bearer]);
        assert_eq!(st, 200, "nobody with the token: {path}");
        if path.starts_with("/debug")
            || path.starts_with("/windows/")
            || path.starts_with("/profile")
        {
            assert!(ember::profile::pprof::read(&body).is_ok());
        }
        // A wrong token is refused, even for root.
        let (st, body) = curl_as(None, &u, &["Authorization: Bearer not-the-token-at-all"]);
        assert_eq!(st, 403, "a wrong token read {path}");
        assert!(one_sentence(&body).contains("bearer token does not match"));
        // Root over loopback, no token.
        assert_eq!(curl_as(None, &u, &[]).0, 200, "root: {path}");
    }
    for open in ["/healthz", "/metrics"] {
        assert_eq!(curl_as(Some(NOBODY), &format!("{base}{open}"), &[]).0, 200);
    }
    let m = agent.metrics();
    assert_eq!(
        metric_in(&m, "ember_http_refused_total{reason=\"uid_not_allowed\"}"),
        14.0,
        "{m}"
    );
    assert_eq!(
        metric_in(&m, "ember_http_refused_total{reason=\"bad_token\"}"),
        7.0
    );
    // /metrics holds counts only: no paths, addresses, names or stacks.
    for l in m.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            !l.contains('/') && !l.contains("0x") && !l.contains("ffffffff"),
            "{l}"
        );
        let (name, v) = l.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok(), "{l}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_{}=\",".contains(&b)),
            "{l}"
        );
    }
    let log = agent.stop();
    assert!(!log.contains(token), "the token was logged");

    // allow_groups: nobody's primary group (nogroup) admits nobody, and no
    // one else.
    let dir = scratch("hostile_access_group");
    std::fs::write(
        dir.join("a.toml"),
        "window = \"1s\"\nfrequency = 49\n[http]\nallow_groups = [\"nogroup\"]\nallow_uids = [4242]\n",
    )
    .unwrap();
    let agent = Agent::start(
        &dir,
        &["--config", dir.join("a.toml").to_str().unwrap()],
        None,
    );
    let u = format!("http://{}/windows", agent.http);
    assert_eq!(curl_as(Some(NOBODY), &u, &[]).0, 200);
    assert_eq!(curl_as(Some(4242), &u, &[]).0, 200);
    assert_eq!(curl_as(Some(4243), &u, &[]).0, 403);
    agent.stop();

    // A non-loopback client: the agent listens on 0.0.0.0 in a network
    // namespace of its own with 192.0.2.1 (a documentation address) on its
    // loopback device; nothing leaves the namespace.
    let dir = scratch("hostile_access_netns");
    std::fs::write(dir.join("token"), format!("{token}\n")).unwrap();
    let port = 6060;
    std::fs::write(
        dir.join("a.toml"),
        format!(
            "window = \"1s\"\nfrequency = 49\n[store]\ndir = \"{}\"\n[http]\nlisten = \"0.0.0.0:{port}\"\nbearer_token_file = \"{}\"\n",
            dir.join("store").display(),
            dir.join("token").display()
        ),
    )
    .unwrap();
    let log = dir.join("agent.log");
    let mut child = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && ip addr add 192.0.2.1/32 dev lo && exec \"$0\" \"$@\"",
            EMBER,
            "agent",
            "--config",
            dir.join("a.toml").to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let outside = format!("http://192.0.2.1:{port}");
    let t0 = Instant::now();
    while curl_in(None, Some(pid), &format!("{outside}/healthz"), &[]).0 != 200 {
        assert!(
            child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(30),
            "agent in a netns did not come up: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (st, body) = curl_in(None, Some(pid), &format!("{outside}/windows"), &[]);
    assert_eq!(st, 403, "a non-loopback root client read /windows");
    assert!(one_sentence(&body).contains("non-loopback"));
    assert_eq!(
        curl_in(None, Some(pid), &format!("{outside}/windows"), &[&bearer]).0,
        200
    );
    assert_eq!(
        curl_in(None, Some(pid), &format!("{outside}/metrics"), &[]).0,
        200
    );
    // Root over the namespace's own loopback needs no token.
    assert_eq!(
        curl_in(
            None,
            Some(pid),
            &format!("http://127.0.0.1:{port}/windows"),
            &[]
        )
        .0,
        200
    );
    let (_, m) = curl_in(None, Some(pid), &format!("{outside}/metrics"), &[]);
    assert_eq!(
        metric_in(
            &String::from_utf8_lossy(&m),
            "ember_http_refused_total{reason=\"not_loopback\"}"
        ),
        1.0
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(
        st.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// Config mistakes around access are one sentence each, and never show the
/// token.
#[test]
fn http_config_errors() {
    let dir = scratch("hostile_config");
    let secret = "a-secret-token with-a-space-inside";
    std::fs::write(dir.join("bad-token"), format!("{secret}\n")).unwrap();
    std::fs::write(dir.join("short-token"), "abc\n").unwrap();
    std::fs::write(dir.join("empty-token"), "").unwrap();
    for (cfg, want) in [
        ("[http]\nlisten = \"0.0.0.0:6060\"\n", "bearer_token_file"),
        ("[http]\nlisten = \"[::]:6060\"\n", "bearer_token_file"),
        (
            &*format!(
                "[http]\nbearer_token_file = \"{}\"\n",
                dir.join("bad-token").display()
            ),
            "whitespace",
        ),
        (
            &*format!(
                "[http]\nbearer_token_file = \"{}\"\n",
                dir.join("short-token").display()
            ),
            "shorter than 16",
        ),
        (
            &*format!(
                "[http]\nbearer_token_file = \"{}\"\n",
                dir.join("empty-token").display()
            ),
            "is empty",
        ),
        (
            "[http]\nbearer_token_file = \"/no/such/token\"\n",
            "cannot read",
        ),
        (
            "[http]\nallow_groups = [\"no-such-group-for-ember\"]\n",
            "no-such-group-for-ember",
        ),
        ("[http]\nallow_uids = [-1]\n", "line 2"),
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
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success(), "{cfg} was accepted");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{cfg}: {err}");
        assert!(
            !err.contains("with-a-space"),
            "the token was printed: {err}"
        );
    }
    // A token on a non-loopback address is fine; --check-config does not
    // print it.
    let good = "0123456789abcdef0123456789abcdef";
    std::fs::write(dir.join("token"), format!("{good}\n")).unwrap();
    std::fs::write(
        dir.join("c.toml"),
        format!(
            "[http]\nlisten = \"0.0.0.0:6060\"\nbearer_token_file = \"{}\"\nallow_uids = [1000]\n",
            dir.join("token").display()
        ),
    )
    .unwrap();
    let out = ember(
        &[
            "agent",
            "--config",
            dir.join("c.toml").to_str().unwrap(),
            "--check-config",
        ],
        &dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("allow_uids = [1000]") && !all.contains(good),
        "{all}"
    );
}

fn window_name(start_ns: u64, duration_ns: u64, hash: u64) -> String {
    format!("{start_ns}-{duration_ns}-{hash:016x}.pb.gz")
}

/// Hostile store contents: a symlink to a root-only file, a hard link to
/// it, a FIFO, a 1 GiB gzip bomb, garbage and a real window copied under a
/// forged name, all named like windows. The agent (in a 512 MiB memory
/// cgroup) neither lists nor serves them, keeps its memory bounded,
/// deletes none of them by retention while it deletes its own expired
/// window, and `ember query` skips them with warnings and merges the rest.
#[test]
fn hostile_store_contents() {
    let dir = scratch("hostile_store");
    let store = dir.join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let secret = dir.join("secret");
    std::fs::write(&secret, "TOPSECRET-ember-test\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let now = now_ns();
    let recent = now - 30_000_000_000;
    let old = now - 7_200_000_000_000;
    let window = 15_000_000_000;

    // A window ember really wrote, two hours old: retention deletes it.
    let labels: std::collections::BTreeMap<String, String> =
        [("service_name".to_string(), "old".to_string())].into();
    let old_window = {
        let st =
            ember::agent::store::Store::open(&store, Duration::from_secs(3600), 1 << 30).unwrap();
        st.write(&ember::profile::Profile {
            start: UNIX_EPOCH + Duration::from_nanos(old),
            duration: Duration::from_nanos(window),
            frequency: 19,
            target: "old".into(),
            labels: labels.clone(),
            off_cpu: false,
            mappings: Vec::new(),
            functions: Vec::new(),
            locations: Vec::new(),
            samples: Vec::new(),
        })
        .unwrap()
    };
    let mut foreign = Vec::new();
    let mut plant = |name: String| {
        foreign.push(store.join(&name));
        store.join(name)
    };
    // The same bytes under another (old) time: ember's content, not
    // ember's window.
    let forged = plant(window_name(
        old - 1,
        window,
        ember::agent::store::labels_hash(&labels),
    ));
    std::fs::copy(&old_window, &forged).unwrap();
    let garbage = plant(window_name(old, window, 1));
    std::fs::write(&garbage, "not a profile").unwrap();
    let link = plant(window_name(recent, window, 0xdeadbeef));
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let hard = plant(window_name(recent, window, 0xfeedface));
    std::fs::hard_link(&secret, &hard).unwrap();
    let fifo = plant(window_name(recent, window, 0xf1f0));
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let bomb = plant(window_name(recent, window, 0xb0b));
    {
        let mut gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&bomb).unwrap(),
            flate2::Compression::best(),
        );
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            gz.write_all(&zeros).unwrap();
        }
        gz.finish().unwrap();
    }
    assert!(std::fs::metadata(&bomb).unwrap().len() < 2 << 20);

    let cg = MemCgroup::new("store", 512 << 20);
    let mut agent = Agent::start(
        &dir,
        &["--window", "1s", "-F", "49", "--retention", "10m"],
        Some(&cg),
    );
    // Retention ran after the index was built: ember's old window is gone.
    let t0 = Instant::now();
    while old_window.exists() {
        assert!(
            agent.alive(),
            "the agent died (killed in its memory cgroup?): {}",
            agent.log_text()
        );
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "ember's expired window was not deleted: {}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.wait_metric("ember_store_windows", Duration::from_secs(20), |v| v >= 2.0);
    let (st, body) = get(agent.http, "/windows?since=1000h");
    assert_eq!(st, 200);
    let list: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert!(!ids.is_empty());
    for f in &foreign {
        let id = f
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .trim_end_matches(".pb.gz");
        assert!(!ids.contains(&id), "{id} listed");
        let (st, body) = get(agent.http, &format!("/windows/{id}"));
        assert_eq!(st, 404, "{id} served");
        assert!(!String::from_utf8_lossy(&body).contains("TOPSECRET"));
    }
    let m = agent.metrics();
    assert!(
        metric_in(&m, "ember_store_skipped_total{reason=\"too_large\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric_in(&m, "ember_store_skipped_total{reason=\"not_regular\"}") >= 3.0,
        "{m}"
    );
    assert!(
        metric_in(&m, "ember_store_skipped_total{reason=\"foreign\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric_in(&m, "ember_store_skipped_total{reason=\"unreadable\"}") >= 1.0,
        "{m}"
    );
    let rss = metric_in(&m, "process_resident_memory_bytes");
    assert!(rss < 320.0 * 1048576.0, "agent RSS {rss}");
    // Windows keep being written after the scan.
    let w0 = agent.metric("ember_windows_total");
    let w = agent.wait_metric("ember_windows_total", Duration::from_secs(20), |v| {
        v >= w0 + 2.0
    });
    assert!(w >= w0 + 2.0);
    assert!(agent.alive(), "{}", agent.log_text());
    let log = agent.stop();
    assert!(log.contains("inflates to more than 64 MiB"), "{log}");
    assert!(log.contains("a symbolic link"), "{log}");
    assert!(!log.contains("TOPSECRET"), "{log}");
    assert!(
        cg.read("memory.max_usage_in_bytes") < 512 << 20,
        "the agent hit its memory limit"
    );
    for f in &foreign {
        assert!(
            std::fs::symlink_metadata(f).is_ok(),
            "{} was deleted",
            f.display()
        );
    }

    // ember query, in the same cgroup: the agent's windows, the rest
    // skipped with a warning.
    let mut q = Command::new(EMBER);
    q.args(["query", "--store-dir"])
        .arg(&store)
        .args(["--since", "1000h", "-f", "folded"])
        .current_dir(&dir);
    cg.enter(&mut q);
    let out = q.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!out.stdout.is_empty(), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("TOPSECRET"));
    for f in [&bomb, &link, &fifo, &garbage, &forged] {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(
            err.lines()
                .any(|l| l.contains("warning: skipping") && l.contains(name)),
            "no warning for {name}: {err}"
        );
    }
    assert!(err.contains("inflates to more than 64 MiB"), "{err}");
    let merged: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("ember: merged "))
        .and_then(|l| l.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(merged >= 2, "{err}");
}

/// A store that cannot be written, is a symlink or is open to other users
/// fails at start with one sentence.
#[test]
fn unusable_store_fails_at_start() {
    let dir = scratch("hostile_store_start");
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    // A read-only bind mount in a private mount namespace: root cannot
    // write there, and nothing outlives the test.
    let out = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$1\" \"$1\" && mount -o remount,bind,ro \"$1\" && shift && exec \"$@\"",
            "sh",
            ro.to_str().unwrap(),
            EMBER,
            "agent",
            "--store-dir",
            ro.to_str().unwrap(),
            "--http-listen",
            &free_addr().to_string(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("not writable") && err.contains("Read-only file system"),
        "{err}"
    );

    let real = dir.join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    for (store, want) in [(&link, "symbolic link"), (&shared, "chmod go-w")] {
        let out = ember(
            &[
                "agent",
                "--store-dir",
                store.to_str().unwrap(),
                "--http-listen",
                &free_addr().to_string(),
            ],
            &dir,
        );
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(!out.status.success(), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{err}");
    }
}
