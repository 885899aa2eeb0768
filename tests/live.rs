//! End-to-end tests of the live views: `ember top` (its plain-text shares
//! against `ember record` and the fixture's own CPU split, and its keys in
//! a real terminal under tmux), `ember diff` and `ember query --diff-since`
//! (exactly the changed functions coloured), and the agent's page in
//! headless Chromium (hot functions named within 15 s of the agent's
//! start, a page over 10 000 unique stacks, hostile names escaped). Root
//! only (CI is); tmux and chromium come from scripts/setup.sh.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use ember::profile::{pprof, BuildOptions, Builder, Frame, Profile};

/// The tests that sample or burn CPU run one at a time: two cores.
static CPU: Mutex<()> = Mutex::new(());

fn cpu() -> std::sync::MutexGuard<'static, ()> {
    CPU.lock().unwrap_or_else(|e| e.into_inner())
}

/// A process that is killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Self shares (percent) of alpha, beta and gamma_ in `ember top`'s plain
/// table.
fn top_shares(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() == 5 && ["alpha", "beta", "gamma_"].contains(&f[4]) {
            out.insert(
                f[4].to_string(),
                f[0].trim_end_matches('%').parse::<f64>().unwrap(),
            );
        }
    }
    out
}

/// `ember top --pid P` (plain text, stdout a pipe) and `ember record --pid
/// P` over the same 10 s of the split fixture: top's self shares are
/// within 3 percentage points of record's, and both near the fixture's
/// own measured 1:2:3 split.
#[test]
fn top_shares_match_record_and_the_truth() {
    let _g = cpu();
    let bin = fixture("split.c");
    let dir = scratch("top_truth");
    let split = Command::new(&bin)
        .arg("13")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = split.id().to_string();
    let mut split = Proc(split);
    std::thread::sleep(Duration::from_millis(300));
    let rec = Command::new(EMBER)
        .args(["record", "--pid", &pid, "-d", "10s", "-F", "999", "-q"])
        .args(["-o", "rec.folded"])
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let top = Command::new(EMBER)
        .args(["top", "--pid", &pid, "--duration", "10s", "-F", "999"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let rec = rec.wait_with_output().unwrap();
    assert!(
        rec.status.success(),
        "record: {}",
        String::from_utf8_lossy(&rec.stderr)
    );
    let text = String::from_utf8_lossy(&top.stdout).into_owned();
    assert!(
        top.status.success(),
        "top: {}",
        String::from_utf8_lossy(&top.stderr)
    );
    println!("ember top printed:\n{text}");
    assert!(text.starts_with("ember top: pid "), "{text}");
    assert!(text.contains("sorted by self"), "{text}");
    let top = top_shares(&text);
    // record: leaf counts over every sample of the process.
    let f = folded(&dir.join("rec.folded"));
    let all: u64 = f.values().sum();
    let leaf = |name: &str| {
        let n: u64 = f
            .iter()
            .filter(|(s, _)| s.rsplit(';').next() == Some(name))
            .map(|(_, n)| n)
            .sum();
        100.0 * n as f64 / all as f64
    };
    // The fixture's own split, printed when it ends.
    let mut out = String::new();
    split
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = split.0.wait();
    let truth: BTreeMap<&str, f64> = out
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k, 100.0 * v.parse::<f64>().unwrap()))
        .collect();
    for name in ["alpha", "beta", "gamma_"] {
        let (t, r, truth) = (top[name], leaf(name), truth[name]);
        println!(
            "{name}: top {t:.1}%, record {r:.1}%, fixture {truth:.1}% (record: {all} samples)"
        );
        assert!(
            (t - r).abs() <= 3.0,
            "{name}: top {t:.1}% vs record {r:.1}%"
        );
        assert!(
            (t - truth).abs() <= 5.0,
            "{name}: top {t:.1}% vs the fixture's {truth:.1}%"
        );
    }
}

/// tmux: a private server with one window, torn down when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new(cols: u16, rows: u16, command: &str) -> Tmux {
        // A server (socket) of its own per session: a server being killed
        // must not take the next session down.
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let t = Tmux {
            socket: format!("ember-test-{}-{n}", std::process::id()),
        };
        let out = Command::new("tmux")
            .args(["-L", &t.socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .arg(command)
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux is missing; run scripts/setup.sh");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn keys(&self, keys: &[&str]) {
        let st = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", "-t", "0"])
            .args(keys)
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn pane(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-t", "0"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits (up to 10 s) for the pane to satisfy `ok`; returns it.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let p = self.pane();
            if ok(&p) {
                return p;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the pane never showed {what}:\n{p}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

/// The table rows' function names, top to bottom.
fn pane_functions(pane: &str) -> Vec<String> {
    pane.lines()
        .skip_while(|l| !l.starts_with("SELF%"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 5 && f[0].parse::<f64>().is_ok()).then(|| f[4].to_string())
        })
        .collect()
}

/// `ember top` in a real terminal: the keys sort, filter, hide kernel
/// frames, split by thread, pause and quit, and the terminal is restored
/// on q and on Ctrl-C; a tiny terminal gets a one-line notice.
#[test]
fn top_keys_in_tmux() {
    let _g = cpu();
    let bin = fixture("split.c");
    let split = Proc(
        Command::new(&bin)
            .arg("40")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = split.0.id();
    let cmd = format!("{EMBER} top --pid {pid}; echo EXITED $?; sleep 30");
    let t = Tmux::new(110, 30, &cmd);
    let p = t.wait_for("gamma_ on top", |p| {
        pane_functions(p).first().map(String::as_str) == Some("gamma_")
    });
    assert!(p.contains("sorted by self"), "{p}");
    assert!(p.contains("q quit"), "the key help is shown:\n{p}");
    let f = pane_functions(&p);
    assert!(f[1] == "beta" && f[2] == "alpha", "{p}");
    t.keys(&["s"]);
    let p = t.wait_for("the total order", |p| p.contains("sorted by total"));
    // Every sample is under main: sorted by total, it is near the top and
    // gamma_ is below it.
    let f = pane_functions(&p);
    let pos = |n: &str| f.iter().position(|x| x == n);
    assert!(pos("main").unwrap() < pos("gamma_").unwrap(), "{p}");
    t.keys(&["/", "b", "e", "t", "a", "Enter"]);
    let p = t.wait_for("the filter", |p| p.contains("filter \"beta\""));
    assert_eq!(pane_functions(&p), ["beta"], "{p}");
    t.keys(&["/", "Enter", "k"]);
    let p = t.wait_for("kernel frames hidden", |p| {
        p.contains("kernel frames hidden") && !p.contains("filter \"")
    });
    assert!(!p.contains("[k]"), "{p}");
    t.keys(&["t"]);
    let p = t.wait_for("per-thread rows", |p| p.contains("per thread"));
    assert!(
        p.contains("THREAD") && p.contains(&format!("split ({pid})")),
        "{p}"
    );
    t.keys(&["p"]);
    t.wait_for("pause", |p| p.contains("PAUSED"));
    t.keys(&["q"]);
    let p = t.wait_for("the exit", |p| p.contains("EXITED 0"));
    assert!(
        !p.contains("ember top:"),
        "the alternate screen was left:\n{p}"
    );
    drop(t);
    // Ctrl-C, in a terminal too small for the table.
    let cmd = format!("{EMBER} top --pid {pid}; echo EXITED $?; sleep 30");
    let t = Tmux::new(18, 3, &cmd);
    t.wait_for("the small-terminal notice", |p| p.contains("enlarge"));
    t.keys(&["C-c"]);
    let p = t.wait_for("the exit", |p| p.contains("EXITED 0"));
    assert!(!p.contains("enlarge"), "{p}");
    drop(split);
}

fn frame(name: &Arc<str>) -> Frame<'_> {
    Frame {
        name,
        system_name: name,
        file: None,
        line: 0,
    }
}

/// A profile of `prog`: main → work → each (leaf, count), and main → idle.
fn profile(start: SystemTime, leaves: &[(&str, u64)], labels: &[(&str, &str)]) -> Profile {
    let mut b = Builder::new();
    let file: Arc<str> = Arc::from("/usr/bin/prog");
    let m = b.mapping(0x1000, 0x100000, 0, &file, "");
    let (main, work): (Arc<str>, Arc<str>) = (Arc::from("main"), Arc::from("work"));
    let lm = b.user(Some(m), 0x1000, [frame(&main)]);
    let lw = b.user(Some(m), 0x1100, [frame(&work)]);
    for (i, (name, n)) in leaves.iter().enumerate() {
        let name: Arc<str> = Arc::from(*name);
        let l = b.user(Some(m), 0x2000 + 16 * i as u64, [frame(&name)]);
        if &*name == "idle" {
            b.sample(&[l, lm], *n, 7, 7, "prog", "prog");
        } else {
            b.sample(&[l, lw, lm], *n, 7, 7, "prog", "prog");
        }
    }
    let mut p = b.finish(&BuildOptions {
        start,
        duration: Duration::from_secs(15),
        frequency: 19,
        target: "prog".into(),
        off_cpu: false,
    });
    p.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    p
}

const BEFORE: &[(&str, u64)] = &[("alpha", 100), ("beta", 200), ("gamma", 300), ("idle", 100)];
/// Same total: beta grew, gamma shrank, newfn appeared; alpha and idle
/// kept their share.
const AFTER: &[(&str, u64)] = &[
    ("alpha", 100),
    ("beta", 300),
    ("gamma", 150),
    ("idle", 100),
    ("newfn", 50),
];

/// Functions whose frame is not inferno's neutral colour in a
/// differential SVG.
fn coloured(svg: &str) -> BTreeSet<String> {
    let doc = roxmltree::Document::parse_with_options(
        svg,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut out = BTreeSet::new();
    let mut frames = 0;
    for g in doc.descendants().filter(|n| n.has_tag_name("g")) {
        let (Some(title), Some(rect)) = (
            g.children().find(|c| c.has_tag_name("title")),
            g.children().find(|c| c.has_tag_name("rect")),
        ) else {
            continue;
        };
        frames += 1;
        let name = title.text().unwrap_or("").split(" (").next().unwrap();
        if rect.attribute("fill") != Some("rgb(250,250,250)") {
            out.insert(name.to_string());
        }
    }
    assert!(frames >= 5, "no frames found in the SVG");
    out
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// `ember diff`: exactly the functions whose share changed are coloured;
/// with twice the samples and the same shares nothing is, unless
/// --absolute; the text and folded forms agree.
#[test]
fn diff_colours_exactly_the_changed_functions() {
    let dir = scratch("diff");
    let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let write = |name: &str, p: &Profile| {
        let mut f = std::fs::File::create(dir.join(name)).unwrap();
        pprof::write(p, &mut f).unwrap();
    };
    write("before.pb.gz", &profile(t, BEFORE, &[]));
    write("after.pb.gz", &profile(t, AFTER, &[]));
    let doubled: Vec<(&str, u64)> = BEFORE.iter().map(|&(n, c)| (n, 2 * c)).collect();
    write("doubled.pb.gz", &profile(t, &doubled, &[]));
    ember_ok(
        &["diff", "before.pb.gz", "after.pb.gz", "-o", "diff.svg"],
        &dir,
    );
    let svg = std::fs::read_to_string(dir.join("diff.svg")).unwrap();
    assert_eq!(coloured(&svg), set(&["beta", "gamma", "newfn"]));
    // Same shares, twice the samples: nothing changed...
    ember_ok(
        &["diff", "before.pb.gz", "doubled.pb.gz", "-o", "same.svg"],
        &dir,
    );
    let svg = std::fs::read_to_string(dir.join("same.svg")).unwrap();
    assert_eq!(coloured(&svg), set(&[]));
    // ...but every leaf changed its count.
    ember_ok(
        &[
            "diff",
            "before.pb.gz",
            "doubled.pb.gz",
            "--absolute",
            "-o",
            "abs.svg",
        ],
        &dir,
    );
    let svg = std::fs::read_to_string(dir.join("abs.svg")).unwrap();
    assert_eq!(coloured(&svg), set(&["alpha", "beta", "gamma", "idle"]));
    // Text: the changed functions only (work's total kept its share).
    let out = ember(&["diff", "before.pb.gz", "after.pb.gz", "-f", "text"], &dir);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    let names: BTreeSet<String> = text
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().last().map(String::from))
        .collect();
    assert_eq!(names, set(&["beta", "gamma", "newfn"]));
    // Folded: two counts per stack, the baseline's scaled.
    ember_ok(
        &["diff", "before.pb.gz", "doubled.pb.gz", "-o", "d.folded"],
        &dir,
    );
    let text = std::fs::read_to_string(dir.join("d.folded")).unwrap();
    assert!(text.contains("prog;main;work;beta 400 400"), "{text}");
    // Hostile input: an error sentence, no panic.
    std::fs::write(dir.join("junk.pb.gz"), b"\x1f\x8b\x08\x00junk").unwrap();
    let out = ember(&["diff", "junk.pb.gz", "after.pb.gz"], &dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a readable pprof profile"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

fn now() -> SystemTime {
    SystemTime::now()
}

/// Writes windows into a store directory as the agent does.
fn store_windows(dir: &Path, windows: &[Profile]) {
    let st = ember::agent::store::Store::open(dir, Duration::from_secs(86_400), 1 << 30).unwrap();
    for p in windows {
        st.write(p).unwrap();
    }
}

/// `ember query --since 10m --diff-since 40m`: the last 10 minutes against
/// the 10 minutes from 40 minutes ago, in the store.
#[test]
fn query_diff_since_compares_two_ranges() {
    let dir = scratch("query_diff");
    let store = dir.join("store");
    let svc = [("service_name", "prog")];
    store_windows(
        &store,
        &[
            profile(now() - Duration::from_secs(35 * 60), BEFORE, &svc),
            // Between the ranges: in neither.
            profile(
                now() - Duration::from_secs(20 * 60),
                &[("stray", 999)],
                &svc,
            ),
            profile(now() - Duration::from_secs(5 * 60), AFTER, &svc),
        ],
    );
    let s = store.display().to_string();
    let args = [
        "query",
        "--store-dir",
        &s,
        "--since",
        "10m",
        "--diff-since",
        "40m",
    ];
    let mut a = args.to_vec();
    a.extend(["-o", "q.svg"]);
    let err = ember_ok(&a, &dir);
    assert!(err.contains("baseline 1 windows"), "{err}");
    let svg = std::fs::read_to_string(dir.join("q.svg")).unwrap();
    assert_eq!(coloured(&svg), set(&["beta", "gamma", "newfn"]));
    let mut a = args.to_vec();
    a.extend(["--diff-format", "text", "--service", "prog"]);
    let out = ember(&a, &dir);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("newfn") && !text.contains("stray"), "{text}");
    // The baseline must lie before the range.
    let out = ember(
        &[
            "query",
            "--store-dir",
            &s,
            "--since",
            "1h",
            "--diff-since",
            "30m",
        ],
        &dir,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--diff-since"),
        "{err}"
    );
}

fn free_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return (0, String::new(), vec![]);
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
        return (0, String::new(), vec![]);
    };
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head, buf[split + 4..].to_vec())
}

struct Agent {
    _child: Proc,
    http: SocketAddr,
    log: PathBuf,
}

impl Agent {
    fn start(dir: &Path, store: &Path) -> Agent {
        let http = free_addr();
        let log = dir.join("agent.log");
        let child = Command::new(EMBER)
            .args(["agent", "--store-dir"])
            .arg(store)
            .args(["--http-listen", &http.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Agent {
            _child: Proc(child),
            http,
            log,
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

/// Headless Chromium: the page's DOM after load (`what` is `--dump-dom`)
/// or a screenshot; returns what it printed and how long it took.
fn chromium(dir: &Path, what: &[&str], url: &str) -> (String, Duration) {
    let t0 = Instant::now();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1400,1600",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .args(what)
        .arg(url)
        .output()
        .expect("chromium is missing; run scripts/setup.sh");
    let took = t0.elapsed();
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (String::from_utf8_lossy(&out.stdout).into_owned(), took)
}

/// The rows of the page's top-functions table, from the DOM.
fn dom_functions(dom: &str) -> Vec<String> {
    let Some(start) = dom.find("id=\"top-functions\"") else {
        return vec![];
    };
    let table = &dom[start
        ..dom[start..]
            .find("</table>")
            .map_or(dom.len(), |e| start + e)];
    table
        .split("<td class=\"fn\">")
        .skip(1)
        .filter_map(|cell| {
            let a = cell.split_once('>')?.1;
            Some(a.split('<').next()?.to_string())
        })
        .collect()
}

/// Within 15 s of the agent's start, the page in headless Chromium names
/// the host's hot functions (the split fixture's, from the window being
/// collected: nothing is stored yet). A screenshot of it is kept.
#[test]
fn page_names_hot_functions_within_15s() {
    let _g = cpu();
    let bin = fixture("split.c");
    let dir = scratch("page_hot");
    let _split = Proc(
        Command::new(&bin)
            .arg("40")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let agent = Agent::start(&dir, &dir.join("store"));
    let (dom, when) = loop {
        std::thread::sleep(Duration::from_millis(500));
        let (dom, _) = chromium(&dir, &["--dump-dom"], &agent.url("/"));
        let f = dom_functions(&dom);
        if f.iter().take(3).any(|n| n == "gamma_") {
            break (dom, t0.elapsed());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "the page never named gamma_; functions {f:?}; agent log: {}",
            agent.log_text()
        );
    };
    println!(
        "the page named gamma_ {:.1} s after the agent started",
        when.as_secs_f64()
    );
    assert!(when <= Duration::from_secs(15), "{when:?}");
    let f = dom_functions(&dom);
    for hot in ["gamma_", "beta", "alpha"] {
        assert!(f.iter().take(10).any(|n| n == hot), "{hot} not in {f:?}");
    }
    assert!(dom.contains("the window being collected"), "{dom}");
    // The page's links carry its state; the flamegraph is inferno's.
    assert!(dom.contains("/profile.pb.gz?since=5m"), "{dom}");
    let (status, head, svg) = get(agent.http, "/flamegraph.svg?since=5m&q=gamma_");
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-security-policy"));
    let svg = String::from_utf8_lossy(&svg);
    assert!(
        svg.contains("gamma_") && svg.contains("function search("),
        "not inferno's interactive SVG"
    );
    let artifacts = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("page.png");
    let _ = std::fs::remove_file(&shot);
    chromium(
        &dir,
        &[&format!("--screenshot={}", shot.display())],
        &agent.url("/?since=5m"),
    );
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    println!("screenshot: {}", shot.display());
}

/// A page over stored windows with 10 000 unique stacks renders (its time
/// is printed), filters by service, downloads the pprof behind it, and
/// shows hostile function names and labels as text, never as markup.
#[test]
fn page_over_10k_stacks_and_hostile_names() {
    let _g = cpu();
    let dir = scratch("page_10k");
    let store = dir.join("store");
    // 10 000 distinct leaves under 100 callers, 10 samples each: every one
    // is wide enough (0.01%) for inferno to draw.
    let mut b = Builder::new();
    let file: Arc<str> = Arc::from("/usr/bin/synthetic");
    let m = b.mapping(0x1000, 0x10_000_000, 0, &file, "");
    let main: Arc<str> = Arc::from("main");
    let lm = b.user(Some(m), 0x1000, [frame(&main)]);
    let callers: Vec<u32> = (0..100)
        .map(|i| {
            let n: Arc<str> = Arc::from(format!("caller_{i:03}"));
            b.user(Some(m), 0x2000 + i, [frame(&n)])
        })
        .collect();
    let mut total = 0;
    for i in 0..10_000u64 {
        let n: Arc<str> = Arc::from(format!("leaf_{i:05}"));
        let l = b.user(Some(m), 0x100_000 + 16 * i, [frame(&n)]);
        let count = 10;
        total += count;
        b.sample(
            &[l, callers[(i % 100) as usize], lm],
            count,
            9,
            9,
            "synthetic",
            "synthetic",
        );
    }
    let mut big = b.finish(&BuildOptions {
        start: now() - Duration::from_secs(120),
        duration: Duration::from_secs(15),
        frequency: 19,
        target: "synthetic".into(),
        off_cpu: false,
    });
    big.labels = [("service_name", "synthetic")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let evil = "<script>alert(1)</script><img src=x onerror=alert(2)>";
    let hostile = profile(
        now() - Duration::from_secs(60),
        &[(evil, 100_000)],
        &[("service_name", evil), ("team", "\"><b>x</b>")],
    );
    store_windows(&store, &[big, hostile]);
    let agent = Agent::start(&dir, &store);
    let t0 = Instant::now();
    while get(agent.http, "/healthz").0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{}",
            agent.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let view = "/?since=10m&service=synthetic&sort=total";
    let (dom, took) = chromium(&dir, &["--dump-dom"], &agent.url(view));
    let (_, shot_took) = chromium(
        &dir,
        &[&format!("--screenshot={}", dir.join("10k.png").display())],
        &agent.url(view),
    );
    let (status, _, svg) = get(agent.http, "/flamegraph.svg?since=10m&service=synthetic");
    assert_eq!(status, 200);
    println!(
        "10 000 unique stacks: page loaded in headless Chromium (DOM) in {:.2} s, screenshot in {:.2} s; flamegraph SVG {} KiB with {} frames",
        took.as_secs_f64(),
        shot_took.as_secs_f64(),
        svg.len() >> 10,
        String::from_utf8_lossy(&svg).matches("<g>").count()
    );
    assert!(took < Duration::from_secs(60), "{took:?}");
    let f = dom_functions(&dom);
    assert_eq!(f.first().map(String::as_str), Some("main"), "{f:?}");
    assert_eq!(f.len(), 100, "the table shows its first 100 rows");
    assert!(
        !f.iter().any(|n| n.contains("script")),
        "the service filter let the hostile window in"
    );
    // Search filters the table.
    let (dom, _) = chromium(
        &dir,
        &["--dump-dom"],
        &agent.url("/?since=10m&service=synthetic&q=leaf_09999"),
    );
    assert_eq!(dom_functions(&dom), ["leaf_09999"]);
    // The pprof behind the view: every synthetic sample, nothing else.
    let (status, _, body) = get(agent.http, "/profile.pb.gz?since=10m&service=synthetic");
    assert_eq!(status, 200);
    let p = pprof::read_profile(&body).unwrap();
    assert_eq!(p.total(), total);
    // The hostile window, host-wide: its names are text.
    let (dom, _) = chromium(
        &dir,
        &["--dump-dom"],
        &agent.url("/?since=10m&label=team%3D%22%3E%3Cb%3Ex%3C%2Fb%3E"),
    );
    let f = dom_functions(&dom);
    assert!(
        f.iter().any(|n| n.contains("&lt;script&gt;alert(1)")),
        "{f:?}"
    );
    let lower = dom.to_ascii_lowercase();
    assert!(!lower.contains("<script"), "a script element was injected");
    assert!(!lower.contains("<img"), "an img element was injected");
    assert!(!lower.contains("<b>x"), "markup from a label was injected");
    // The flamegraph of the hostile window, selected by its service: the
    // names (and the title, which repeats the query) are escaped text, and
    // inferno's is the only script.
    let evil_q = "%3Cscript%3Ealert(1)%3C%2Fscript%3E%3Cimg%20src%3Dx%20onerror%3Dalert(2)%3E";
    let (status, _, svg) = get(
        agent.http,
        &format!("/flamegraph.svg?since=10m&service={evil_q}"),
    );
    assert_eq!(status, 200);
    let svg = String::from_utf8_lossy(&svg);
    assert!(svg.contains("&lt;script&gt;alert(1)"), "{svg}");
    assert_eq!(svg.matches("<script").count(), 1, "{svg}");
    assert!(!svg.contains("<img"));
    // Bad parameters: one sentence, 400.
    let (status, _, body) = get(agent.http, "/?since=%3Cscript%3E");
    assert_eq!(status, 400);
    assert!(!String::from_utf8_lossy(&body).contains("<script"));
}

/// Bad arguments to the live views: one sentence each, exit 2 for usage
/// errors, 1 for the rest, nothing started.
#[test]
fn live_view_argument_errors() {
    let dir = scratch("live_errors");
    for (args, want) in [
        (&["top"][..], "say what to profile"),
        (&["top", "--pid", "1", "--all"], "cannot be used with"),
        (&["top", "--all", "--window", "0s"], "--window"),
        (&["top", "--all", "--window", "2h"], "--window"),
        (&["top", "--all", "-F", "0"], "--frequency"),
        (&["top", "--all", "--rows", "0"], "--rows"),
        (&["top", "--pid", "999999999"], "999999999"),
        (
            &["diff", "nope.pb.gz", "nope2.pb.gz"],
            "cannot read nope.pb.gz",
        ),
        (&["diff", "a", "b", "-o", "x.png"], "cannot tell the format"),
        (&["diff", "a", "b", "-f", "png"], "unknown diff format"),
    ] {
        let out = ember(args, &dir);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}
