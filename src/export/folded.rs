//! Folded (collapsed) stacks: `comm;outer;...;inner count`, one line per
//! distinct stack, as flamegraph.pl and inferno read them. Kernel frames end
//! in `_[k]` and JIT frames in `_[j]`, as `stackcollapse-perf --all` marks them;
//! Python frames are `function (file.py)_[py]`.

use std::collections::BTreeMap;
use std::io::Write;

use super::ExportOptions;
use crate::profile::{FrameKind, Profile};

/// What ends a Python frame's name.
pub const PY_SUFFIX: &str = "_[py]";

/// The folded lines of a profile with their counts, merged and sorted.
pub fn lines(p: &Profile, opts: ExportOptions) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = BTreeMap::new();
    let mut buf = String::new();
    for s in &p.samples {
        let weight = opts.sample_type.weight(p, s);
        if weight == 0 {
            continue;
        }
        buf.clear();
        push_frame(&mut buf, &s.comm);
        if opts.threads {
            buf.push(';');
            push_frame(
                &mut buf,
                &format!("{} ({}) [{}]", s.thread_name, s.tid, s.pid),
            );
        }
        for &l in s.locations.iter().rev() {
            let loc = &p.locations[l as usize];
            let suffix = match loc.kind {
                FrameKind::Kernel => "_[k]",
                FrameKind::Jit => "_[j]",
                FrameKind::Python => PY_SUFFIX,
                _ => "",
            };
            if loc.lines.is_empty() {
                buf.push(';');
                push_frame(&mut buf, &p.frame_name(loc, None));
                buf.push_str(suffix);
            }
            for line in loc.lines.iter().rev() {
                buf.push(';');
                push_frame(&mut buf, &p.frame_name(loc, Some(line)));
                if loc.kind == FrameKind::Python {
                    // Module code is `<module>` in every file: name the file.
                    let file = &p.functions[line.function as usize].filename;
                    if !file.is_empty() {
                        buf.push_str(" (");
                        push_frame(&mut buf, file.rsplit('/').next().unwrap_or(file));
                        buf.push(')');
                    }
                }
                buf.push_str(suffix);
            }
        }
        let n = out.entry(buf.clone()).or_default();
        *n = n.saturating_add(weight);
    }
    out
}

/// Frame names may contain anything; `;` separates frames and a newline
/// ends the record, so both are replaced.
fn push_frame(buf: &mut String, name: &str) {
    buf.extend(name.chars().map(|c| match c {
        ';' => ':',
        '\n' | '\r' => ' ',
        c => c,
    }));
}

/// Writes folded stacks.
pub fn write(p: &Profile, w: &mut impl Write, opts: ExportOptions) -> std::io::Result<()> {
    for (stack, n) in lines(p, opts) {
        writeln!(w, "{stack} {n}")?;
    }
    Ok(())
}
