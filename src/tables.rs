//! `ember tables`: what the unwind tables of the binaries running processes
//! map would cost, built but not loaded.

use std::io::Write;

use anyhow::Result;

use crate::unwind;

/// Builds the table of every distinct binary mapped executable by `pids`
/// (every process when empty) and reports rows, kernel memory and build
/// time, one line per binary with `verbose`.
pub fn run(pids: &[u32], verbose: bool, out: &mut impl Write) -> Result<()> {
    for &p in pids {
        crate::preflight::check_pid(p)?;
    }
    let t0 = std::time::Instant::now();
    let mut all = unwind::survey(pids);
    let wall = t0.elapsed();
    all.sort_by_key(|e| std::cmp::Reverse(e.bytes));
    if verbose {
        for e in &all {
            match &e.error {
                None => writeln!(
                    out,
                    "{:>9} rows {:>9.1} KiB {:>8.1} ms  {}",
                    e.rows,
                    e.bytes as f64 / 1024.0,
                    e.build_time.as_secs_f64() * 1000.0,
                    e.path
                ),
                Some(err) => writeln!(
                    out,
                    "{:>9} rows {:>9} KiB {:>8} ms  {} ({err})",
                    "-", "-", "-", e.path
                ),
            }
            .ok(); // a closed pipe (| head) is not an error
        }
    }
    let with: Vec<_> = all.iter().filter(|e| e.error.is_none()).collect();
    let rows: usize = with.iter().map(|e| e.rows).sum();
    let bytes: u64 = with.iter().map(|e| e.bytes).sum();
    let build: f64 = all.iter().map(|e| e.build_time.as_secs_f64()).sum();
    let rss = crate::untrusted::read_proc("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    writeln!(
        out,
        "{} binaries ({} without usable CFI): {} rows, {:.1} MiB of kernel memory if all were loaded; built in {:.0} ms ({:.0} ms wall); peak RSS {:.1} MiB",
        with.len(),
        all.len() - with.len(),
        rows,
        bytes as f64 / 1048576.0,
        build * 1000.0,
        wall.as_secs_f64() * 1000.0,
        rss as f64 / 1024.0
    )
    .ok();
    Ok(())
}
