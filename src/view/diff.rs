//! Differences between two profiles: a differential flamegraph (inferno's:
//! the widths are the second profile's, a frame is red where the stacks it
//! ends grew and blue where they shrank, and white where they did not
//! change), the two-count folded lines behind it, and a table of the
//! functions whose share changed.
//!
//! By default the first profile is scaled to the second's sample total,
//! so the comparison is of shares; a stack whose scaled count differs from
//! the second's by less than one sample counts as unchanged (a rounding
//! difference, never a change). With `absolute`, raw counts are compared.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use inferno::flamegraph::{self, Options};

use super::table::{self, FunctionTable, TableOptions};
use crate::export::{folded, ExportOptions};
use crate::profile::Profile;

/// Largest sample total handed to inferno (it adds counts in a usize
/// without overflow checks; profiles read from files can hold anything).
const MAX_TOTAL: u128 = 1 << 48;

/// How the two profiles are compared.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    /// Compare raw sample counts instead of shares.
    pub absolute: bool,
}

/// One output format of a diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffFormat {
    /// A differential flamegraph.
    Svg,
    /// `stack BEFORE AFTER` lines, as inferno's `flamegraph` reads them.
    Folded,
    /// A table of the functions whose share changed.
    Text,
}

impl std::str::FromStr for DiffFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<DiffFormat, String> {
        match s.to_ascii_lowercase().as_str() {
            "svg" => Ok(DiffFormat::Svg),
            "folded" => Ok(DiffFormat::Folded),
            "text" | "txt" => Ok(DiffFormat::Text),
            _ => Err(format!(
                "unknown diff format {s:?}; use svg, folded or text"
            )),
        }
    }
}

impl DiffFormat {
    /// The format a file name implies, if any.
    pub fn from_path(p: &std::path::Path) -> Option<DiffFormat> {
        let name = p.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".svg") {
            Some(DiffFormat::Svg)
        } else if name.ends_with(".folded") || name.ends_with(".collapsed") {
            Some(DiffFormat::Folded)
        } else if name.ends_with(".txt") || name.ends_with(".text") {
            Some(DiffFormat::Text)
        } else {
            None
        }
    }
}

/// Every stack of either profile with its (before, after) count, the
/// before counts scaled unless `absolute`, sorted by stack; stacks that are
/// in neither (both zero after scaling) are left out.
pub fn lines(before: &Profile, after: &Profile, o: DiffOptions) -> Vec<(String, u64, u64)> {
    let eo = ExportOptions::default();
    let b = folded::lines(before, eo);
    let a = folded::lines(after, eo);
    let tb: u128 = b.values().map(|&n| u128::from(n)).sum();
    let ta: u128 = a.values().map(|&n| u128::from(n)).sum();
    let scale = !o.absolute && tb > 0 && ta > 0 && tb != ta;
    let mut all: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (s, n) in b {
        all.entry(s).or_default().0 = n;
    }
    for (s, n) in a {
        all.entry(s).or_default().1 = n;
    }
    let mut out = Vec::with_capacity(all.len());
    for (s, (nb, na)) in all {
        let nb = if scale {
            // before × ta / tb, exact in 128 bits for any real profile;
            // absurd totals (from hostile files) saturate, losing only
            // precision.
            let num = u128::from(nb).saturating_mul(ta);
            let exact_a = u128::from(na).saturating_mul(tb);
            if num.abs_diff(exact_a) < tb {
                na
            } else {
                u64::try_from(num.saturating_add(tb / 2) / tb).unwrap_or(u64::MAX)
            }
        } else {
            nb
        };
        if nb > 0 || na > 0 {
            out.push((s, nb, na));
        }
    }
    out
}

/// The differential flamegraph of `before` → `after`.
pub fn write_svg(
    before: &Profile,
    after: &Profile,
    o: DiffOptions,
    title: &str,
    w: &mut impl Write,
) -> anyhow::Result<()> {
    let l = lines(before, after, o);
    let total: u128 = l
        .iter()
        .map(|(_, b, a)| u128::from(*b).max(u128::from(*a)))
        .sum();
    let div = total.div_ceil(MAX_TOTAL).max(1);
    let text: Vec<String> = l
        .iter()
        .filter_map(|(s, b, a)| {
            let (b, a) = (u128::from(*b) / div, u128::from(*a) / div);
            (a > 0 || b > 0).then(|| format!("{s} {b} {a}"))
        })
        .collect();
    let mut opt = Options::default();
    opt.title = title.to_string();
    opt.subtitle = Some(format!(
        "widths: after ({} samples); red: more than before, blue: less{}",
        after.total(),
        if o.absolute {
            " (absolute counts)"
        } else {
            " (before scaled to the same total)"
        }
    ));
    opt.count_name = "samples".to_string();
    opt.name_type = "Function:".to_string();
    if text.iter().all(|l| l.ends_with(" 0")) {
        write!(
            w,
            r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="30" text-anchor="middle">{}: no samples after</text></svg>"#,
            xml_escape(title)
        )?;
        return Ok(());
    }
    flamegraph::from_lines(&mut opt, text.iter().map(|s| s.as_str()), w)?;
    Ok(())
}

/// The `stack BEFORE AFTER` lines.
pub fn write_folded(
    before: &Profile,
    after: &Profile,
    o: DiffOptions,
    w: &mut impl Write,
) -> std::io::Result<()> {
    for (s, b, a) in lines(before, after, o) {
        writeln!(w, "{s} {b} {a}")?;
    }
    Ok(())
}

/// One function's change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// The function.
    pub name: String,
    /// Self share (or samples, absolute) before and after.
    pub self_before: f64,
    /// See `self_before`.
    pub self_after: f64,
    /// Total share (or samples, absolute) before and after.
    pub total_before: f64,
    /// See `total_before`.
    pub total_after: f64,
}

impl Change {
    /// After minus before, self.
    pub fn self_delta(&self) -> f64 {
        self.self_after - self.self_before
    }

    /// After minus before, total.
    pub fn total_delta(&self) -> f64 {
        self.total_after - self.total_before
    }
}

/// The functions whose self or total share (or count, absolute) changed,
/// largest self change first.
pub fn changes(before: &Profile, after: &Profile, o: DiffOptions) -> Vec<Change> {
    let opts = TableOptions::default();
    let (tb, ta) = (
        table::functions(before, opts),
        table::functions(after, opts),
    );
    let value = |t: &FunctionTable, n: u64| {
        if o.absolute {
            n as f64
        } else {
            t.share(n)
        }
    };
    let by_name = |t: &FunctionTable| {
        let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in &t.rows {
            let e = m.entry(r.name.clone()).or_default();
            e.0 += r.self_samples;
            e.1 += r.total_samples;
        }
        m
    };
    let (mb, ma) = (by_name(&tb), by_name(&ta));
    let names: BTreeSet<&String> = mb.keys().chain(ma.keys()).collect();
    // Shares equal up to rounding are equal (1e-9 pp).
    let eps = 1e-9;
    let mut out: Vec<Change> = names
        .into_iter()
        .map(|n| {
            let (sb, tb_) = mb.get(n).copied().unwrap_or_default();
            let (sa, ta_) = ma.get(n).copied().unwrap_or_default();
            Change {
                name: n.clone(),
                self_before: value(&tb, sb),
                self_after: value(&ta, sa),
                total_before: value(&tb, tb_),
                total_after: value(&ta, ta_),
            }
        })
        .filter(|c| c.self_delta().abs() > eps || c.total_delta().abs() > eps)
        .collect();
    out.sort_by(|a, b| {
        b.self_delta()
            .abs()
            .total_cmp(&a.self_delta().abs())
            .then_with(|| b.total_delta().abs().total_cmp(&a.total_delta().abs()))
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// The changed functions as a plain-text table.
pub fn write_text(
    before: &Profile,
    after: &Profile,
    o: DiffOptions,
    w: &mut impl Write,
) -> std::io::Result<()> {
    let unit = if o.absolute { "" } else { "%" };
    writeln!(
        w,
        "before: {} samples, after: {} samples ({})",
        before.total(),
        after.total(),
        if o.absolute {
            "absolute counts"
        } else {
            "shares of each profile's samples; deltas in percentage points"
        }
    )?;
    writeln!(
        w,
        "{:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  FUNCTION",
        "SELF-B", "SELF-A", "ΔSELF", "TOTAL-B", "TOTAL-A", "ΔTOTAL"
    )?;
    let prec = if o.absolute { 0 } else { 2 };
    for c in changes(before, after, o) {
        writeln!(
            w,
            "{:>8.p$}{unit} {:>8.p$}{unit} {:>+9.p$} {:>8.p$}{unit} {:>8.p$}{unit} {:>+9.p$}  {}",
            c.self_before,
            c.self_after,
            c.self_delta(),
            c.total_before,
            c.total_after,
            c.total_delta(),
            crate::util::printable(&c.name, 300),
            p = prec
        )?;
    }
    Ok(())
}

/// Writes a diff in `format`.
pub fn write(
    before: &Profile,
    after: &Profile,
    o: DiffOptions,
    format: DiffFormat,
    title: &str,
    w: &mut impl Write,
) -> anyhow::Result<()> {
    match format {
        DiffFormat::Svg => write_svg(before, after, o, title, w)?,
        DiffFormat::Folded => write_folded(before, after, o, w)?,
        DiffFormat::Text => write_text(before, after, o, w)?,
    }
    Ok(())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{BuildOptions, Builder, Frame};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn profile(counts: &[(&str, u64)]) -> Profile {
        let mut b = Builder::new();
        let file: Arc<str> = Arc::from("/bin/x");
        let m = b.mapping(0x1000, 0x9000, 0, &file, "");
        let main: Arc<str> = Arc::from("main");
        let lm = b.user(
            Some(m),
            0x1000,
            [Frame {
                name: &main,
                system_name: &main,
                file: None,
                line: 0,
            }],
        );
        for (i, (name, n)) in counts.iter().enumerate() {
            let name: Arc<str> = Arc::from(*name);
            let l = b.user(
                Some(m),
                0x2000 + i as u64,
                [Frame {
                    name: &name,
                    system_name: &name,
                    file: None,
                    line: 0,
                }],
            );
            b.sample(&[l, lm], *n, 1, 1, "x", "x");
        }
        b.finish(&BuildOptions {
            start: UNIX_EPOCH,
            duration: Duration::from_secs(1),
            frequency: 99,
            target: "t".into(),
            off_cpu: false,
        })
    }

    #[test]
    fn scaled_counts_equal_up_to_rounding_are_unchanged() {
        // Twice the samples, same shares, except beta doubled its share.
        let b = profile(&[("alpha", 100), ("beta", 100), ("gamma", 301)]);
        let a = profile(&[("alpha", 200), ("beta", 401), ("gamma", 401)]);
        let l = lines(&b, &a, DiffOptions::default());
        let get = |n: &str| l.iter().find(|x| x.0.ends_with(n)).unwrap();
        assert_eq!(get("alpha").1, get("alpha").2, "alpha: {l:?}");
        assert_ne!(get("beta").1, get("beta").2);
        let abs = lines(&b, &a, DiffOptions { absolute: true });
        assert!(abs.iter().all(|x| x.1 != x.2));
        let c = changes(&b, &a, DiffOptions::default());
        let mut names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["beta", "gamma"], "{c:?}");
        assert!(c.iter().all(|c| c.self_delta().abs() > 10.0));
    }
}
