//! Stripped binaries named through separate debug files found by build ID
//! (`DIR/.build-id/xx/rest.debug`, as gdb and perf look them up), as
//! Debian's dbgsym packages install them. Root only (CI is).

mod common;

use std::path::Path;
use std::process::Command;

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
    let record = |out: &str, extra: &[&str]| {
        let mut args = vec!["record", "-F", "499", "-o", out];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", stripped.to_str().unwrap(), "2"]);
        ember_ok(&args, &dir)
    };

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
