//! SVG flamegraphs through inferno.

use std::io::Write;
use std::time::UNIX_EPOCH;

use inferno::flamegraph::{self, Options};

use super::{folded, ExportOptions};
use crate::profile::Profile;

/// Largest sample total handed to inferno.
const MAX_SVG_TOTAL: u128 = 1 << 48;

/// Writes an interactive flamegraph whose title names what was profiled,
/// when, at what frequency and for how long.
pub fn write(p: &Profile, w: &mut impl Write, opts: ExportOptions) -> anyhow::Result<()> {
    let stacks = folded::lines(p, opts);
    // inferno adds the counts up in a usize without overflow checks; a
    // merged profile's counts come from files, so an absurd total is
    // scaled down (widths stay proportional) rather than overflowing.
    let total: u128 = stacks.values().map(|&n| u128::from(n)).sum();
    let div = total.div_ceil(MAX_SVG_TOTAL).max(1);
    let lines: Vec<String> = stacks
        .into_iter()
        .filter_map(|(s, n)| {
            let n = u128::from(n) / div;
            (n > 0).then(|| format!("{s} {n}"))
        })
        .collect();
    // Python frames in their own colour (blues), whatever the palette
    // gives native ones.
    let mut palette = inferno::flamegraph::color::PaletteMap::default();
    for line in &lines {
        let stack = line.rsplit_once(' ').map_or(line.as_str(), |(s, _)| s);
        for f in stack.split(';').filter(|f| f.ends_with(folded::PY_SUFFIX)) {
            if palette.get(f).is_none() {
                let h = f
                    .bytes()
                    .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
                let v = (h % 60) as u8;
                palette.insert(
                    f,
                    inferno::flamegraph::color::Color {
                        r: 60 + v,
                        g: 140 + v,
                        b: 230,
                    },
                );
            }
        }
    }
    let mut o = Options::default();
    if palette.iter().next().is_some() {
        o.palette_map = Some(&mut palette);
    }
    o.title = match opts.sample_type {
        super::SampleType::Cpu => format!("ember: {}", p.target),
        t => format!("ember: {} — {}", p.target, t.title()),
    };
    o.subtitle = Some(format!(
        "{} · {:.1} s at {} Hz · {} samples",
        utc(p
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)),
        p.duration.as_secs_f64(),
        p.frequency,
        p.total()
    ));
    o.count_name = opts.sample_type.unit().to_string();
    o.name_type = "Function:".to_string();
    if lines.is_empty() {
        // inferno refuses empty input; an empty profile is still a valid answer.
        write!(
            w,
            r#"<?xml version="1.0" standalone="no"?><svg version="1.1" width="1200" height="60" xmlns="http://www.w3.org/2000/svg"><text x="600" y="30" text-anchor="middle">{}: no samples</text></svg>"#,
            xml_escape(&o.title)
        )?;
        return Ok(());
    }
    flamegraph::from_lines(&mut o, lines.iter().map(|s| s.as_str()), w)?;
    Ok(())
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Formats seconds since the epoch as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use crate::profile::{BuildOptions, Builder, Frame};
    use std::sync::Arc;

    /// Python frames get their own colour (blues: the blue channel 230),
    /// native ones the palette's (warm: never that blue).
    #[test]
    fn python_frames_have_their_own_colour() {
        let mut b = Builder::new();
        let (name, file, native) = (
            Arc::from("handler"),
            Arc::from("/srv/app.py"),
            Arc::from("main"),
        );
        let py = b.python(
            0x1000,
            Some(Frame {
                name: &name,
                system_name: &name,
                file: Some(&file),
                line: 3,
            }),
        );
        let n = b.user(
            None,
            0x2000,
            [Frame {
                name: &native,
                system_name: &native,
                file: None,
                line: 0,
            }],
        );
        b.sample(&[py, n], 3, 1, 1, "python3", "python3");
        let p = b.finish(&BuildOptions {
            start: std::time::UNIX_EPOCH,
            duration: std::time::Duration::from_secs(1),
            frequency: 99,
            target: "t".into(),
            off_cpu: false,
        });
        let mut out = Vec::new();
        super::write(&p, &mut out, Default::default()).unwrap();
        let svg = String::from_utf8(out).unwrap();
        let fill = |title: &str| {
            let at = svg.find(&format!("<title>{title}")).expect(title);
            let rest = &svg[at..];
            let f = rest.find("fill=\"rgb(").unwrap() + 10;
            let rgb: Vec<u32> = rest[f..rest[f..].find(')').unwrap() + f]
                .split(',')
                .map(|v| v.parse().unwrap())
                .collect();
            rgb
        };
        assert_eq!(fill("handler (app.py)_[py]")[2], 230);
        assert!(fill("main ")[2] < 200, "{:?}", fill("main "));
    }

    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
    }
}
