//! Stripped binaries named through separate debug files found by build ID
//! (`DIR/.build-id/xx/rest.debug`, as gdb and perf look them up, as
//! Debian's dbgsym packages install them) and fetched from a real
//! debuginfod server (elfutils', started on 127.0.0.1). Root only (CI is).

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn run(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd).args(args).status().unwrap();
    assert!(st.success(), "{cmd} {args:?} failed");
}

/// The hex GNU build ID of an ELF file.
fn build_id(path: &Path) -> String {
    use object::Object;
    let data = std::fs::read(path).unwrap();
    let f = object::File::parse(&*data).unwrap();
    let id = f.build_id().unwrap().expect("the fixture has a build ID");
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Records `bin 2` (the fixture's 2 s run) at 499 Hz into `out` with local
/// debug info only (no debuginfod); returns ember's stderr.
fn record_local(dir: &Path, bin: &Path, out: &str, extra: &[&str]) -> String {
    let mut args = vec!["record", "-F", "499", "--no-debuginfod", "-o", out];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", bin.to_str().unwrap(), "2"]);
    ember_ok(&args, dir)
}

/// Samples of the fixture in each burner, and samples with a frame of the
/// stripped binary left unnamed (`name+0x...`).
fn burners(dir: &Path, name: &str) -> (u64, u64, u64, u64) {
    let f = folded(&dir.join(name));
    let n = |fr: &str| count_where(&f, |x| x == fr);
    let unnamed = count_where(&f, |x| x.starts_with("split-stripped+0x"));
    (n("alpha"), n("beta"), n("gamma_"), unnamed)
}

#[test]
fn stripped_binary_is_named_from_its_debug_file_by_build_id() {
    let bin = fixture("split.c");
    let dir = scratch("debuginfo");
    let stripped = dir.join("split-stripped");
    let debug = dir.join("split.debug");
    std::fs::copy(&bin, &stripped).unwrap();
    run(
        "objcopy",
        &[
            "--only-keep-debug",
            bin.to_str().unwrap(),
            debug.to_str().unwrap(),
        ],
    );
    run("strip", &["--strip-all", stripped.to_str().unwrap()]);
    let id = build_id(&stripped);
    assert_eq!(id, build_id(&debug));
    let debug_dir = dir.join("debug");
    let at = debug_dir
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    std::fs::copy(&debug, &at).unwrap();
    let record = |out: &str, extra: &[&str]| record_local(&dir, &stripped, out, extra);

    // Stripped and without its debug file: the burners have no names.
    record("plain.folded", &[]);
    let (a, b, g, unnamed) = burners(&dir, "plain.folded");
    assert_eq!(a + b + g, 0, "a stripped binary named without debug info");
    assert!(unnamed > 100, "{unnamed} unnamed samples");

    // With the directory holding its debug file: named, in the right
    // shares (1:2:3 by construction), nothing of it left unnamed.
    let dd = debug_dir.to_str().unwrap();
    let stderr = record("debug.folded", &["--debug-dir", dd]);
    let (a, b, g, unnamed) = burners(&dir, "debug.folded");
    let total = a + b + g;
    assert!(total > 500, "{total} samples in the burners\n{stderr}");
    assert!(
        unnamed * 20 <= total,
        "{unnamed} samples of the stripped binary unnamed beside {total} named"
    );
    for (got, want) in [(a, 1.0 / 6.0), (b, 2.0 / 6.0), (g, 3.0 / 6.0)] {
        let share = got as f64 / total as f64;
        assert!(
            (share - want).abs() < 0.05,
            "share {share:.3}, truth {want:.3}"
        );
    }

    // A .gnu_debuglink beside the binary (CRC-checked by blazesym, for a
    // binary only root can change).
    let linked = dir.join("split-linked");
    std::fs::copy(&stripped, &linked).unwrap();
    let link = format!("--add-gnu-debuglink={}", debug.display());
    run("objcopy", &[&link, linked.to_str().unwrap()]);
    let out = record_local(&dir, &linked, "link.folded", &[]);
    let (a, b, g, _) = burners(&dir, "link.folded");
    let linked_total = a + b + g;
    assert!(
        linked_total > 500,
        "{linked_total} named through the debug link\n{out}"
    );
    assert!((g as f64 / linked_total as f64 - 0.5).abs() < 0.05);

    // A debug file others can change is not trusted: refused, counted.
    let open = dir.join("open");
    std::fs::create_dir_all(at.parent().unwrap()).unwrap();
    let open_at = open
        .join(".build-id")
        .join(&id[..2])
        .join(format!("{}.debug", &id[2..]));
    std::fs::create_dir_all(open_at.parent().unwrap()).unwrap();
    std::fs::copy(&debug, &open_at).unwrap();
    std::os::unix::fs::chown(&open_at, Some(65534), Some(65534)).unwrap();
    let stderr = record("open.folded", &["--debug-dir", open.to_str().unwrap()]);
    let (a, b, g, _) = burners(&dir, "open.folded");
    assert_eq!(a + b + g, 0, "named from a debug file another user owns");
    assert!(stderr.contains("debug_file"), "{stderr}");
}

/// The stripped fixture and its debug file, split as distributions do.
fn split_fixture(dir: &Path) -> (PathBuf, PathBuf, String) {
    let bin = fixture("split.c");
    let stripped = dir.join("split-stripped");
    let srv = dir.join("srv");
    std::fs::create_dir_all(&srv).unwrap();
    let debug = srv.join("split.debug");
    std::fs::copy(&bin, &stripped).unwrap();
    run(
        "objcopy",
        &[
            "--only-keep-debug",
            bin.to_str().unwrap(),
            debug.to_str().unwrap(),
        ],
    );
    run("strip", &["--strip-all", stripped.to_str().unwrap()]);
    let id = build_id(&stripped);
    (stripped, srv, id)
}

/// elfutils' debuginfod serving `srv` on a free port, killed on drop.
struct Server(Child, u16);

impl Server {
    fn start(srv: &Path, db: &Path, id: &str) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("debuginfod")
            .args(["-F", srv.to_str().unwrap(), "-p", &port.to_string(), "-d"])
            .arg(db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting debuginfod (scripts/setup.sh installs it)");
        let s = Server(child, port);
        // Ready once it has scanned the directory and serves the file.
        let t0 = Instant::now();
        while http_status(port, &format!("/buildid/{id}/debuginfo")) != Some(200) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "debuginfod did not serve the debug file"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(c, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut head = [0u8; 12];
    c.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// The summary's "wrote ... (in X s)": end of sampling to files written.
fn finish_secs(stderr: &str) -> f64 {
    stderr
        .lines()
        .find_map(|l| l.split("(in ").nth(1)?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no finish time\n{stderr}"))
}

#[test]
fn stripped_binary_is_named_through_a_local_debuginfod() {
    let dir = scratch("debuginfod");
    let (stripped, srv, id) = split_fixture(&dir);
    let server = Server::start(&srv, &dir.join("db.sqlite"), &id);
    let cache = dir.join("cache");
    let record = |out: &str, urls: &str, extra: &[&str]| {
        let mut cmd = Command::new(EMBER);
        cmd.args(["record", "-F", "499", "-o", out])
            .args(extra)
            .arg("--")
            .arg(&stripped)
            .arg("2")
            .env("DEBUGINFOD_URLS", urls)
            .env("DEBUGINFOD_CACHE_PATH", &cache)
            .current_dir(&dir);
        let o = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{stderr}");
        stderr
    };
    let url = format!("http://127.0.0.1:{}", server.1);
    let stderr = record("d.folded", &url, &[]);
    let (a, b, g, unnamed) = burners(&dir, "d.folded");
    let total = a + b + g;
    assert!(
        total > 500,
        "{total} samples named in the burners\n{stderr}"
    );
    assert!(
        unnamed * 20 <= total,
        "{unnamed} unnamed beside {total}\n{stderr}"
    );
    for (got, want) in [(a, 1.0 / 6.0), (b, 2.0 / 6.0), (g, 3.0 / 6.0)] {
        let share = got as f64 / total as f64;
        assert!(
            (share - want).abs() < 0.05,
            "share {share:.3}, truth {want:.3}"
        );
    }
    assert!(stderr.contains("from debuginfod"), "{stderr}");
    // Cached where elfutils keeps it: gdb and perf find it there too.
    assert!(cache.join(&id).join("debuginfo").is_file());
    drop(server);

    // A server that accepts but never answers: the files are written at
    // most the timeout (plus slack for a busy machine) after sampling
    // ends, with one warning, and nothing else is lost.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    std::fs::remove_dir_all(&cache).unwrap();
    let stderr = record("s.folded", &silent_url, &["--debuginfod-timeout", "1s"]);
    let secs = finish_secs(&stderr);
    assert!(
        secs < 1.0 + 3.0,
        "files written {secs} s after sampling\n{stderr}"
    );
    // Said once, in the summary.
    assert_eq!(stderr.matches("debuginfod:").count(), 1, "{stderr}");
    let f = folded(&dir.join("s.folded"));
    assert!(f.values().sum::<u64>() > 500, "samples kept");
}

/// A stripped binary carrying MiniDebugInfo (`.gnu_debugdata`, an
/// xz-compressed ELF with the function symbols `.dynsym` lacks), built the
/// way Fedora builds it: named from it with no debug file anywhere.
#[test]
fn stripped_binary_is_named_from_its_minidebuginfo() {
    let dir = scratch("minidebug");
    let bin = fixture("split.c");
    let script = format!(
        "set -e; cd {d}; cp {b} prog; objcopy --only-keep-debug prog prog.debug; \
         nm prog --format=posix --defined-only | awk '$2 ~ /[Tt]/ {{print $1}}' | sort > funcsyms; \
         objcopy -S --remove-section .gdb_index --remove-section .comment \
           --keep-symbols=funcsyms prog.debug mini; \
         xz -f mini; strip --strip-all prog -o split-stripped; \
         objcopy --add-section .gnu_debugdata=mini.xz split-stripped",
        d = dir.display(),
        b = bin.display()
    );
    run("sh", &["-c", &script]);
    let stripped = dir.join("split-stripped");
    let plain = Command::new("nm").arg(&stripped).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("alpha"),
        "the stripped binary still names alpha itself"
    );
    let out = record_local(&dir, &stripped, "m.folded", &[]);
    let (a, b, g, unnamed) = burners(&dir, "m.folded");
    let total = a + b + g;
    assert!(total > 500, "{total} samples named in the burners\n{out}");
    assert!(
        unnamed * 20 <= total,
        "{unnamed} unnamed beside {total}\n{out}"
    );
    for (got, want) in [(a, 1.0 / 6.0), (b, 2.0 / 6.0), (g, 3.0 / 6.0)] {
        let share = got as f64 / total as f64;
        assert!(
            (share - want).abs() < 0.05,
            "share {share:.3}, truth {want:.3}"
        );
    }
}

/// Runs `inner` (which ends by exec'ing the fixture for 6 s) in a mount
/// namespace of its own, records it by pid for 2 s into `out`, and
/// returns ember's stderr.
fn record_in_container(dir: &Path, inner: &str, out: &str) -> String {
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", inner])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let pid = child.id().to_string();
    let stderr = ember_ok(
        &[
            "record",
            "--pid",
            &pid,
            "-d",
            "2s",
            "-F",
            "499",
            "--no-debuginfod",
            "-o",
            out,
        ],
        dir,
    );
    let _ = child.kill();
    let _ = child.wait();
    stderr
}

/// A containerized process (a mount namespace of its own) whose debug file
/// exists only inside its root, under `/usr/lib/debug/.build-id/`: found
/// there, checked to carry the binary's build ID, and its symbol table
/// names the stripped binary.
#[test]
fn debug_file_inside_a_containers_root_is_found() {
    let dir = scratch("debuginfo-container");
    let (stripped, srv, id) = split_fixture(&dir);
    let debug = srv.join("split.debug");
    let inner = format!(
        "mount -t tmpfs none /usr/lib/debug && mkdir -p /usr/lib/debug/.build-id/{a} && \
         cp {d} /usr/lib/debug/.build-id/{a}/{b}.debug && exec {s} 6",
        a = &id[..2],
        b = &id[2..],
        d = debug.display(),
        s = stripped.display()
    );
    let out = record_in_container(&dir, &inner, "c.folded");
    let (a, b, g, unnamed) = burners(&dir, "c.folded");
    let total = a + b + g;
    assert!(total > 300, "{total} samples named in the burners\n{out}");
    assert!(
        unnamed * 20 <= total,
        "{unnamed} unnamed beside {total}\n{out}"
    );
    // Not on the host: only the container's root has it.
    assert!(!Path::new(&format!(
        "/usr/lib/debug/.build-id/{}/{}.debug",
        &id[..2],
        &id[2..]
    ))
    .exists());

    // By its .gnu_debuglink, beside a binary that exists only in the
    // container (a tmpfs mounted there alone).
    let linked = dir.join("split-linked");
    std::fs::copy(&stripped, &linked).unwrap();
    let link = format!("--add-gnu-debuglink={}", debug.display());
    run("objcopy", &[&link, linked.to_str().unwrap()]);
    let ct = dir.join("ct");
    std::fs::create_dir_all(&ct).unwrap();
    let inner = format!(
        "mount -t tmpfs none {c} && cp {l} {c}/app && cp {d} {c}/split.debug && exec {c}/app 6",
        c = ct.display(),
        l = linked.display(),
        d = debug.display()
    );
    let out = record_in_container(&dir, &inner, "l.folded");
    let (a, b, g, _) = burners(&dir, "l.folded");
    let named = a + b + g;
    assert!(
        named > 300,
        "{named} samples named through the container's debug link\n{out}"
    );
    assert!(
        std::fs::read_dir(&ct).unwrap().next().is_none(),
        "the host sees the files"
    );
}
