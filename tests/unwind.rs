//! Unwinding without frame pointers: the unwind tables against binutils'
//! reading of the same CFI, and real recordings (root, BPF) of programs
//! built without frame pointers against their known call paths and against
//! `perf record --call-graph dwarf`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::process::Command;

use common::*;
use ember::unwind::table::{Cfa, Rbp, Rule, Table};

/// One row of `readelf --debug-dump=frames-interp`: [start, end) and its
/// CFA, rbp and return-address columns as printed.
struct ReadelfRow {
    start: u64,
    end: u64,
    cfa: String,
    rbp: Option<String>,
    ra: String,
    signal: bool,
}

fn readelf_rows(bin: &Path) -> Vec<ReadelfRow> {
    let out = Command::new("readelf")
        .arg("--debug-dump=frames-interp")
        .arg(bin)
        .output()
        .expect("running readelf (binutils)");
    let text = String::from_utf8_lossy(&out.stdout);
    // readelf exits 1 on some distro libraries (libc) while printing the
    // whole table; only output without any CFI is a failure.
    assert!(
        text.contains("Contents of the .eh_frame section"),
        "readelf printed no .eh_frame for {}: {}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );

    // CIE offset -> (augmentation has 'S', its initial rows)
    type Rows = Vec<(u64, String, Option<String>, String)>;
    let mut cies: HashMap<String, (bool, Rows)> = HashMap::new();
    // FDEs: (start, end, cie, rows)
    let mut fdes: Vec<(u64, u64, String, Rows)> = Vec::new();
    enum Cur {
        None,
        Cie(String),
        Fde,
    }
    let mut cur = Cur::None;
    let mut columns: Vec<String> = Vec::new();
    for line in text.lines() {
        // "r9 (r9)" is one column: glue parenthesised names to the token
        // before them.
        let mut f: Vec<&str> = Vec::new();
        let mut glued: Vec<String> = Vec::new();
        for tok in line.split_whitespace() {
            if tok.starts_with('(') && !glued.is_empty() {
                let last = glued.pop().unwrap();
                glued.push(format!("{last} {tok}"));
            } else {
                glued.push(tok.to_string());
            }
        }
        f.extend(glued.iter().map(String::as_str));
        if f.len() >= 4 && f[3] == "CIE" {
            let signal = line.split('"').nth(1).is_some_and(|aug| aug.contains('S'));
            cies.insert(f[0].to_string(), (signal, Vec::new()));
            cur = Cur::Cie(f[0].to_string());
        } else if f.len() >= 6 && f[3] == "FDE" {
            let cie = f[4].trim_start_matches("cie=").to_string();
            let (a, b) = f[5].trim_start_matches("pc=").split_once("..").unwrap();
            let start = u64::from_str_radix(a, 16).unwrap();
            let end = u64::from_str_radix(b, 16).unwrap();
            fdes.push((start, end, cie, Vec::new()));
            cur = Cur::Fde;
        } else if f.first() == Some(&"LOC") {
            columns = f.iter().map(|s| s.to_string()).collect();
        } else if f.len() == columns.len()
            && f.len() >= 3
            && f[0].len() == 16
            && u64::from_str_radix(f[0], 16).is_ok()
        {
            let col = |name: &str| {
                columns
                    .iter()
                    .position(|c| c == name)
                    .map(|i| f[i].to_string())
            };
            let row = (
                u64::from_str_radix(f[0], 16).unwrap(),
                col("CFA").unwrap(),
                col("rbp"),
                col("ra").unwrap_or_else(|| "c-8".into()),
            );
            match &cur {
                Cur::Cie(o) => cies.get_mut(o).unwrap().1.push(row),
                Cur::Fde => fdes.last_mut().unwrap().3.push(row),
                Cur::None => {}
            }
        }
    }
    fdes.retain(|f| f.1 > f.0);
    fdes.sort_by_key(|f| f.0);
    let mut out = Vec::new();
    for (i, (start, end, cie, rows)) in fdes.iter().enumerate() {
        // Overlapping FDEs have no single right answer: skip them.
        let overlaps =
            (i > 0 && fdes[i - 1].1 > *start) || (i + 1 < fdes.len() && fdes[i + 1].0 < *end);
        if overlaps {
            continue;
        }
        let (signal, cie_rows) = cies.get(cie).cloned().unwrap_or_default();
        let rows = if rows.is_empty() {
            // No instructions of its own: the CIE's initial rules apply.
            cie_rows
                .last()
                .map(|r| vec![(*start, r.1.clone(), r.2.clone(), r.3.clone())])
                .unwrap_or_default()
        } else {
            rows.clone()
        };
        for (j, r) in rows.iter().enumerate() {
            let row_end = rows.get(j + 1).map_or(*end, |n| n.0);
            if row_end <= r.0 {
                continue;
            }
            out.push(ReadelfRow {
                start: r.0.max(*start),
                end: row_end,
                cfa: r.1.clone(),
                rbp: r.2.clone(),
                ra: r.3.clone(),
                signal,
            });
        }
    }
    out
}

/// Why `got` is not what readelf's row says, if it is not.
fn mismatch(want: &ReadelfRow, got: Rule) -> Option<String> {
    let num = |s: &str, prefix: &str| -> Option<i32> {
        s.strip_prefix(prefix).and_then(|n| n.parse().ok())
    };
    let cfa_ok = if want.signal {
        got.cfa == Cfa::Signal
    } else if want.ra == "u" {
        got.cfa == Cfa::End
    } else if want.ra != "c-8" {
        // The return address elsewhere than CFA-8 (e.g. in a register).
        got.cfa == Cfa::Unsupported
    } else if let Some(n) = num(&want.cfa, "rsp+") {
        got.cfa == Cfa::Rsp(n) || (got.cfa == Cfa::Unsupported && (n % 8 != 0 || n / 8 > 32767))
    } else if let Some(n) = num(&want.cfa, "rbp+") {
        got.cfa == Cfa::Rbp(n)
    } else if want.cfa == "exp" {
        matches!(
            got.cfa,
            Cfa::Plt { .. } | Cfa::DerefRsp(_) | Cfa::DerefRbp(_) | Cfa::Unsupported
        )
    } else {
        got.cfa == Cfa::Unsupported
    };
    // The rbp column only matters where the CFA rule is followed.
    let rbp_ok = matches!(
        got.cfa,
        Cfa::Signal | Cfa::End | Cfa::Unsupported | Cfa::Plt { .. }
    ) || match want.rbp.as_deref() {
        None | Some("u") | Some("s") => got.rbp == Rbp::Same,
        Some(c) if c.starts_with('c') => {
            c[1..].parse::<i32>().is_ok_and(|n| got.rbp == Rbp::Cfa(n))
        }
        Some("exp") => matches!(got.rbp, Rbp::AtRbp(_) | Rbp::Lost),
        Some(_) => got.rbp == Rbp::Lost,
    };
    (!(cfa_ok && rbp_ok)).then(|| {
        format!(
            "{:#x}..{:#x}: readelf says CFA {} rbp {:?} ra {}{}, table says {got:?}",
            want.start,
            want.end,
            want.cfa,
            want.rbp,
            want.ra,
            if want.signal { " (signal frame)" } else { "" }
        )
    })
}

fn check_against_readelf(bin: &Path, min_rows: usize) {
    let table = Table::build(&File::open(bin).unwrap()).unwrap();
    let index = table.page_index();
    let rows = readelf_rows(bin);
    assert!(
        rows.len() >= min_rows,
        "{}: only {} CFI rows from readelf",
        bin.display(),
        rows.len()
    );
    let mut bad = Vec::new();
    for r in &rows {
        // The first and the last address of each row.
        for at in [r.start, r.end - 1] {
            if let Some(why) = mismatch(r, table.lookup_in(&index, at)) {
                bad.push(why);
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{}: {} of {} rows differ from readelf, e.g.:\n{}",
        bin.display(),
        bad.len(),
        rows.len(),
        bad[..bad.len().min(10)].join("\n")
    );
    // Code between FDEs falls back to frame pointers rather than borrow a
    // neighbour's rule.
    let mut ends: Vec<(u64, u64)> = rows.iter().map(|r| (r.start, r.end)).collect();
    ends.sort_unstable();
    for w in ends.windows(2) {
        if w[0].1 < w[1].0 && !rows.iter().any(|r| r.start <= w[0].1 && w[0].1 < r.end) {
            assert_eq!(
                table.lookup_in(&index, w[0].1).cfa,
                Cfa::Gap,
                "gap at {:#x}",
                w[0].1
            );
        }
    }
}

#[test]
fn tables_match_readelf_for_c_without_frame_pointers() {
    check_against_readelf(&fixture_nofp("nofp.c"), 20);
}

#[test]
fn tables_match_readelf_for_the_c_library() {
    check_against_readelf(Path::new("/lib/x86_64-linux-gnu/libc.so.6"), 5000);
}

#[test]
fn tables_match_readelf_for_a_rust_release_binary() {
    check_against_readelf(Path::new(EMBER), 5000);
}

#[test]
fn tables_match_readelf_for_the_cpp_runtime_and_python() {
    for (p, min) in [
        ("/usr/lib/x86_64-linux-gnu/libstdc++.so.6", 5000),
        ("/usr/bin/python3", 5000),
    ] {
        let path = std::fs::canonicalize(p)
            .unwrap_or_else(|_| panic!("{p} is missing; scripts/setup.sh installs it"));
        check_against_readelf(&path, min);
    }
}

// ---- Real recordings -------------------------------------------------------

/// The frames of a folded line from `main` (inclusive) down, with runs of a
/// repeated frame (recursion) collapsed to one.
fn from_main(stack: &str, main: &str) -> Option<Vec<String>> {
    let frames: Vec<&str> = stack.split(';').collect();
    let i = frames.iter().position(|f| *f == main)?;
    let mut out: Vec<String> = Vec::new();
    for f in &frames[i..] {
        if out.last().map(String::as_str) != Some(*f) {
            out.push(f.to_string());
        }
    }
    Some(out)
}

fn record_folded(
    bin: &Path,
    args: &[&str],
    extra: &[&str],
    name: &str,
) -> (BTreeMap<String, u64>, String) {
    let dir = scratch(name);
    let mut cmd = Command::new(EMBER);
    cmd.args(["record", "-F", "999", "--no-kernel", "-o", "out.folded"])
        .args(extra)
        .arg("--")
        .arg(bin)
        .args(args)
        .current_dir(&dir);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    (folded(&dir.join("out.folded")), stderr)
}

fn share_with(f: &BTreeMap<String, u64>, pred: impl Fn(&str) -> bool) -> (u64, u64) {
    let total: u64 = f.values().sum();
    let hit: u64 = f.iter().filter(|(s, _)| pred(s)).map(|(_, n)| n).sum();
    (hit, total)
}

#[test]
fn c_without_frame_pointers_reaches_main_through_libc() {
    let bin = fixture_nofp("nofp.c");
    let (f, stderr) = record_folded(&bin, &["3"], &[], "nofp-c");
    let (hit, total) = share_with(&f, |s| s.split(';').any(|fr| fr == "main"));
    assert!(total > 2000, "too few samples: {total}\n{stderr}");
    assert!(
        hit as f64 >= 0.99 * total as f64,
        "only {hit} of {total} samples reach main\n{stderr}"
    );
    // The known paths, each about a third of the time.
    type PathCheck = fn(&[String]) -> bool;
    let paths: [(&str, PathCheck); 3] = [
        ("compute_inner", |p| {
            p == ["main", "run_compute", "compute_outer", "compute_inner"]
        }),
        ("cmp_doubles", |p| {
            p.len() >= 4
                && p[..2] == ["main", "run_sort"]
                && p[2].contains("qsort")
                && p.last().unwrap() == "cmp_doubles"
        }),
        ("memcpy", |p| {
            p.len() == 3 && p[..2] == ["main", "run_copy"] && p[2].contains("mem")
        }),
    ];
    for (name, ok) in paths {
        let (n, _) = share_with(&f, |s| from_main(s, "main").is_some_and(|p| ok(&p)));
        let share = n as f64 / total as f64;
        assert!(
            (0.25..=0.42).contains(&share),
            "{name}: {n} of {total} samples ({share:.3}) on its known path from main; want about 1/3\n{stderr}"
        );
    }
    assert!(stderr.contains("unwind tables:"), "{stderr}");

    // The fixture really lacks frame pointers: frame pointers alone lose main.
    let (f, stderr) = record_folded(&bin, &["2"], &["--frame-pointers"], "nofp-c-fp");
    let (hit, total) = share_with(&f, |s| s.split(';').any(|fr| fr == "main"));
    assert!(
        (hit as f64) < 0.9 * total as f64,
        "with frame pointers only, {hit} of {total} samples still reach main: the fixture is not testing unwinding\n{stderr}"
    );
}

#[test]
fn rust_release_without_frame_pointers_reaches_main() {
    let bin = fixture_nofp("nofp.rs");
    let (f, stderr) = record_folded(&bin, &["3"], &[], "nofp-rs");
    let (hit, total) = share_with(&f, |s| s.split(';').any(|fr| fr == "nofp::main"));
    assert!(total > 2000, "too few samples: {total}\n{stderr}");
    assert!(
        hit as f64 >= 0.99 * total as f64,
        "only {hit} of {total} samples reach nofp::main\n{stderr}"
    );
    for hot in ["nofp::count_keys", "nofp::sort_floats", "nofp::boxed_churn"] {
        let (n, _) = share_with(&f, |s| {
            from_main(s, "nofp::main").is_some_and(|p| p.get(1).map(String::as_str) == Some(hot))
        });
        assert!(
            n as f64 >= 0.05 * total as f64,
            "{hot}: only {n} of {total} samples under nofp::main -> {hot}\n{stderr}"
        );
    }
}

/// A 400-deep recursion (a recursive parser, deep C++ templates, a JVM)
/// unwinds to `main`: user stacks keep up to 512 frames, stored as a chain
/// of 127-frame chunks.
#[test]
fn recursion_400_deep_reaches_main() {
    let bin = fixture_nofp("deep.c");
    let (f, stderr) = record_folded(&bin, &["2", "400"], &[], "deep400");
    let (in_spin, total) = share_with(&f, |s| s.ends_with(";spin"));
    assert!(in_spin as f64 >= 0.9 * total as f64, "{stderr}");
    let mut complete = 0;
    for (s, n) in &f {
        let frames: Vec<&str> = s.split(';').collect();
        if !s.ends_with(";spin") || frames.get(1) == Some(&"[truncated]") {
            continue;
        }
        // ... main, 401 recurse frames, spin: every frame between kept.
        let main = frames.iter().position(|f| *f == "main");
        let recursion = main.map(|m| &frames[m + 1..frames.len() - 1]);
        assert!(
            recursion.is_some_and(|r| r.len() == 401 && r.iter().all(|f| *f == "recurse")),
            "{s}"
        );
        complete += n;
    }
    assert!(
        complete as f64 >= 0.95 * in_spin as f64,
        "only {complete} of {in_spin} samples in spin reach main\n{stderr}"
    );
}

/// Deeper than the limit (600 frames against 512, or against
/// `--max-depth`): every sample is cut there and marked, and the summary
/// counts the cut, never passing it off as a complete stack.
#[test]
fn recursion_deeper_than_the_limit_is_reported_not_cut_silently() {
    let bin = fixture_nofp("deep.c");
    for (depth, extra, limit) in [
        ("600", &[][..], 512),
        ("150", &["--max-depth", "100"][..], 100),
    ] {
        let (f, stderr) = record_folded(&bin, &["2", depth], extra, "deep");
        let total: u64 = f.values().sum();
        let (in_spin, _) = share_with(&f, |s| s.ends_with(";spin"));
        assert!(in_spin as f64 >= 0.9 * total as f64, "{stderr}");
        // Those taken once the tables were loaded (all but the first few)
        // are cut at exactly the limit.
        let mut at_limit = 0;
        for (s, n) in &f {
            if !s.ends_with(";spin") {
                continue;
            }
            let frames: Vec<&str> = s.split(';').collect();
            assert_eq!(frames.get(1), Some(&"[truncated]"), "not marked: {s}");
            if frames.len() - 2 == limit {
                at_limit += n;
            }
        }
        assert!(
            at_limit as f64 >= 0.97 * in_spin as f64,
            "only {at_limit} of {in_spin} samples in spin kept {limit} frames\n{stderr}"
        );
        let line = stderr
            .lines()
            .find(|l| l.contains("user stacks:"))
            .unwrap_or_else(|| panic!("no user stacks line\n{stderr}"));
        let cut: u64 = line
            .split("truncated: ")
            .nth(1)
            .and_then(|t| {
                t.split(", ")
                    .find(|c| c.ends_with("depth limit"))
                    .and_then(|c| c.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or_else(|| panic!("depth limit not reported: {line}"));
        assert!(
            cut >= at_limit,
            "{cut} depth-limited < {at_limit} samples at the limit: {line}"
        );
    }
}

/// perf's stacks as folded lines (root first), from `perf script`.
fn perf_folded(script: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for block in script.split("\n\n") {
        // `-F ip,sym`: no header line, one "addr symbol" line per frame.
        let mut frames: Vec<String> = block
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let _addr = it.next()?;
                let sym = it.next()?;
                Some(sym.split('+').next().unwrap_or(sym).to_string())
            })
            .collect();
        frames.reverse();
        if !frames.is_empty() {
            *out.entry(frames.join(";")).or_insert(0) += 1;
        }
    }
    out
}

/// For each leaf: the most common collapsed path from main to it.
fn top_paths(f: &BTreeMap<String, u64>, leaves: &[&str]) -> BTreeMap<String, String> {
    let mut counts: HashMap<(String, String), u64> = HashMap::new();
    for (s, n) in f {
        let Some(p) = from_main(s, "main") else {
            continue;
        };
        let leaf = p.last().unwrap();
        if let Some(l) = leaves.iter().find(|l| leaf.contains(*l)) {
            *counts.entry((l.to_string(), p.join(";"))).or_insert(0) += n;
        }
    }
    let mut best: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for ((leaf, path), n) in counts {
        let e = best.entry(leaf).or_insert((0, String::new()));
        if n > e.0 {
            *e = (n, path);
        }
    }
    best.into_iter().map(|(k, (_, p))| (k, p)).collect()
}

#[test]
fn frames_match_perf_call_graph_dwarf() {
    let bin = fixture_nofp("nofp.c");
    let dir = scratch("vs-perf");
    let status = Command::new("perf")
        .args([
            "record",
            "-q",
            "-e",
            "cpu-clock",
            "-F",
            "499",
            "--call-graph",
            "dwarf",
            "-o",
        ])
        .arg(dir.join("perf.data"))
        .arg("--")
        .arg(&bin)
        .arg("3")
        .stdout(std::process::Stdio::null())
        .status()
        .expect("running perf (linux-perf; scripts/setup.sh installs it)");
    assert!(status.success(), "perf record failed");
    let script = Command::new("perf")
        .args(["script", "-F", "ip,sym", "-i"])
        .arg(dir.join("perf.data"))
        .output()
        .unwrap();
    assert!(script.status.success(), "perf script failed");
    let perf = perf_folded(&String::from_utf8_lossy(&script.stdout));
    let (ember, stderr) = record_folded(&bin, &["3"], &[], "vs-perf-ember");

    let leaves = ["compute_inner", "cmp_doubles", "mem"];
    let p = top_paths(&perf, &leaves);
    let e = top_paths(&ember, &leaves);
    assert_eq!(p.len(), 3, "perf did not see all three hot paths: {p:?}");
    assert_eq!(
        e, p,
        "ember's main-to-leaf paths differ from perf --call-graph dwarf\n{stderr}"
    );
}

#[test]
fn dlopened_library_and_signal_handler_unwind_to_main() {
    let bin = fixture_nofp("dlopen.c");
    let lib = bin.with_file_name("libplugin.so");
    let status = Command::new("clang")
        .args([
            "-O2",
            "-g",
            "-fomit-frame-pointer",
            "-shared",
            "-fPIC",
            "-o",
        ])
        .arg(&lib)
        .arg(fixture_src("plugin.c"))
        .status()
        .unwrap();
    assert!(status.success(), "building libplugin.so failed");
    let (f, stderr) = record_folded(&bin, &[lib.to_str().unwrap(), "4"], &[], "dlopen");
    let total: u64 = f.values().sum();
    let (plugin, _) = share_with(&f, |s| s.ends_with(";plugin_inner"));
    let (plugin_main, _) = share_with(&f, |s| {
        s.ends_with(";plugin_inner")
            && from_main(s, "main")
                .is_some_and(|p| p == ["main", "run_plugin", "plugin_hot", "plugin_inner"])
    });
    // The library appears after the process was registered: its table comes
    // a moment later, so the first few milliseconds may be cut.
    assert!(
        plugin as f64 >= 0.3 * total as f64,
        "{plugin} of {total} in the plugin\n{stderr}"
    );
    assert!(
        plugin_main as f64 >= 0.9 * plugin as f64,
        "{plugin_main} of {plugin} plugin samples reach main\n{stderr}"
    );
    // Through the signal frame: handler -> trampoline -> raise ... -> main.
    let (handler, _) = share_with(&f, |s| s.ends_with(";in_handler"));
    let (handler_main, _) = share_with(&f, |s| {
        s.ends_with(";in_handler") && from_main(s, "main").is_some_and(|p| p.len() >= 3)
    });
    assert!(
        handler as f64 >= 0.3 * total as f64,
        "{handler} of {total} in the handler\n{stderr}"
    );
    assert!(
        handler_main as f64 >= 0.97 * handler as f64,
        "{handler_main} of {handler} handler samples reach main across the signal frame\n{stderr}"
    );
}
