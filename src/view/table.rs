//! Function tables: samples per function, as the leaf of a stack (self)
//! and anywhere in it (total, each function counted once per stack), over
//! every sample of a profile, optionally without kernel frames and split
//! by thread. `ember top` and the agent's page show them.

use std::collections::HashMap;

use crate::profile::{FrameKind, Profile};

/// What goes into a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableOptions {
    /// Count kernel frames; without, a sample's self time goes to its
    /// innermost user frame.
    pub kernel: bool,
    /// One row per function and thread rather than per function.
    pub threads: bool,
}

impl Default for TableOptions {
    fn default() -> Self {
        TableOptions {
            kernel: true,
            threads: false,
        }
    }
}

/// How rows are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sort {
    /// By self samples, highest first.
    #[default]
    SelfTime,
    /// By total samples, highest first.
    Total,
}

impl Sort {
    /// The other order.
    pub fn toggle(self) -> Sort {
        match self {
            Sort::SelfTime => Sort::Total,
            Sort::Total => Sort::SelfTime,
        }
    }

    /// `self` or `total`.
    pub fn name(self) -> &'static str {
        match self {
            Sort::SelfTime => "self",
            Sort::Total => "total",
        }
    }
}

/// One function (in one thread, when split by thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// The function's name (or `binary+0xoffset` when unnamed).
    pub name: String,
    /// `thread name (tid)`, when split by thread.
    pub thread: Option<String>,
    /// Samples with this function as the leaf.
    pub self_samples: u64,
    /// Samples with this function anywhere in the stack.
    pub total_samples: u64,
    /// A kernel function.
    pub kernel: bool,
}

/// The rows of a profile, unsorted, with the profile's sample total.
#[derive(Debug, Clone, Default)]
pub struct FunctionTable {
    /// One per function (and thread).
    pub rows: Vec<Row>,
    /// Every sample of the profile: the denominator of the shares.
    pub samples: u64,
}

impl FunctionTable {
    /// Share of all samples, in percent.
    pub fn share(&self, n: u64) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.samples as f64
        }
    }

    /// Sorts the rows, highest first, then by name and thread.
    pub fn sort(&mut self, by: Sort) {
        let key = |r: &Row| match by {
            Sort::SelfTime => (r.self_samples, r.total_samples),
            Sort::Total => (r.total_samples, r.self_samples),
        };
        self.rows.sort_by(|a, b| {
            key(b)
                .cmp(&key(a))
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.thread.cmp(&b.thread))
        });
    }

    /// Keeps the rows whose name contains `needle`, ignoring case.
    pub fn filter(&mut self, needle: &str) {
        if needle.is_empty() {
            return;
        }
        let needle = needle.to_lowercase();
        self.rows
            .retain(|r| r.name.to_lowercase().contains(&needle));
    }

    /// Self samples per function name (threads added up).
    pub fn self_by_name(&self) -> HashMap<&str, u64> {
        let mut m: HashMap<&str, u64> = HashMap::new();
        for r in &self.rows {
            *m.entry(r.name.as_str()).or_default() += r.self_samples;
        }
        m
    }

    /// The table as plain text: a header line, then up to `limit` rows
    /// (sorted as they are), names cut to `width` characters. Names come
    /// from profiled programs: control characters are made visible.
    pub fn text(&self, limit: usize, width: usize) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let threads = self.rows.iter().any(|r| r.thread.is_some());
        let _ = writeln!(
            s,
            "{:>7} {:>9} {:>7} {:>9}  {}FUNCTION",
            "SELF%",
            "SELF",
            "TOTAL%",
            "TOTAL",
            if threads { "THREAD  " } else { "" }
        );
        for r in self.rows.iter().take(limit) {
            let thread = match &r.thread {
                Some(t) => format!("{}  ", crate::util::printable(t, 40)),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "{:>6.1}% {:>9} {:>6.1}% {:>9}  {thread}{}",
                self.share(r.self_samples),
                r.self_samples,
                self.share(r.total_samples),
                r.total_samples,
                crate::util::printable(&r.name, width)
            );
        }
        s
    }
}

/// Counts self and total samples per function of `p`.
pub fn functions(p: &Profile, o: TableOptions) -> FunctionTable {
    // Every frame gets a name id once: function names for symbolized
    // lines, a location's fallback name otherwise.
    let mut names: Vec<String> = Vec::new();
    let mut kernel_name: Vec<bool> = Vec::new();
    let mut ids: HashMap<String, u32> = HashMap::new();
    let mut intern = |name: String, kernel: bool, names: &mut Vec<String>| -> u32 {
        if let Some(&i) = ids.get(&name) {
            return i;
        }
        let i = names.len() as u32;
        ids.insert(name.clone(), i);
        names.push(name);
        kernel_name.push(kernel);
        i
    };
    // Per location: its frames' name ids, innermost first.
    let mut loc_names: Vec<Option<Vec<u32>>> = vec![None; p.locations.len()];
    let mut func_ids: Vec<Option<u32>> = vec![None; p.functions.len()];
    // (thread, name id) → (self, total).
    type Key = (Option<(u32, u32)>, u32);
    let mut table: HashMap<Key, (u64, u64)> = HashMap::new();
    let mut thread_names: HashMap<(u32, u32), String> = HashMap::new();
    let mut stack: Vec<u32> = Vec::new();
    let mut samples = 0u64;
    for s in &p.samples {
        samples = samples.saturating_add(s.count);
        stack.clear();
        for &l in &s.locations {
            let Some(loc) = p.locations.get(l as usize) else {
                continue;
            };
            if loc.kind == FrameKind::Kernel && !o.kernel {
                continue;
            }
            if loc_names[l as usize].is_none() {
                let kernel = loc.kind == FrameKind::Kernel;
                let v = if loc.lines.is_empty() {
                    vec![intern(p.frame_name(loc, None), kernel, &mut names)]
                } else {
                    loc.lines
                        .iter()
                        .map(|line| {
                            let f = line.function as usize;
                            match func_ids.get(f).copied().flatten() {
                                Some(id) => id,
                                None => {
                                    let id =
                                        intern(p.frame_name(loc, Some(line)), kernel, &mut names);
                                    if let Some(slot) = func_ids.get_mut(f) {
                                        *slot = Some(id);
                                    }
                                    id
                                }
                            }
                        })
                        .collect()
                };
                loc_names[l as usize] = Some(v);
            }
            stack.extend(loc_names[l as usize].iter().flatten());
        }
        let Some(&leaf) = stack.first() else {
            continue;
        };
        let thread = o.threads.then_some((s.pid, s.tid));
        if let Some(t) = thread {
            thread_names
                .entry(t)
                .or_insert_with(|| format!("{} ({})", s.thread_name, s.tid));
        }
        let e = table.entry((thread, leaf)).or_default();
        e.0 = e.0.saturating_add(s.count);
        // Each function once per stack (recursion counts once).
        stack.sort_unstable();
        stack.dedup();
        for &f in &stack {
            let e = table.entry((thread, f)).or_default();
            e.1 = e.1.saturating_add(s.count);
        }
    }
    let rows = table
        .into_iter()
        .map(|((thread, f), (self_samples, total_samples))| Row {
            name: names[f as usize].clone(),
            thread: thread.and_then(|t| thread_names.get(&t).cloned()),
            self_samples,
            total_samples,
            kernel: kernel_name[f as usize],
        })
        .collect();
    FunctionTable { rows, samples }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{BuildOptions, Builder, Frame};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn frame(name: &Arc<str>) -> Frame<'_> {
        Frame {
            name,
            system_name: name,
            file: None,
            line: 0,
        }
    }

    /// main → work → {alpha ×1, beta ×2 (through a syscall), work ×1 (recursion)}.
    fn sample_profile() -> Profile {
        let n = |s: &str| -> Arc<str> { Arc::from(s) };
        let (main, work, alpha, beta, sys) =
            (n("main"), n("work"), n("alpha"), n("beta"), n("sys_write"));
        let file: Arc<str> = Arc::from("/bin/x");
        let mut b = Builder::new();
        let m = b.mapping(0x1000, 0x9000, 0, &file, "");
        let lm = b.user(Some(m), 0x1100, [frame(&main)]);
        let lw = b.user(Some(m), 0x1200, [frame(&work)]);
        let la = b.user(Some(m), 0x1300, [frame(&alpha)]);
        let lb = b.user(Some(m), 0x1400, [frame(&beta)]);
        let lk = b.kernel(0xffff_ffff_8100_0000, [frame(&sys)]);
        b.sample(&[la, lw, lm], 1, 10, 10, "x", "x");
        b.sample(&[lk, lb, lw, lm], 2, 10, 11, "x", "worker");
        b.sample(&[lw, lw, lm], 1, 10, 10, "x", "x");
        b.finish(&BuildOptions {
            start: UNIX_EPOCH,
            duration: Duration::from_secs(1),
            frequency: 99,
            target: "t".into(),
            off_cpu: false,
        })
    }

    fn row<'a>(t: &'a FunctionTable, name: &str) -> &'a Row {
        t.rows.iter().find(|r| r.name == name).unwrap()
    }

    #[test]
    fn self_and_total() {
        let p = sample_profile();
        let t = functions(&p, TableOptions::default());
        assert_eq!(t.samples, 4);
        assert_eq!(
            (
                row(&t, "sys_write").self_samples,
                row(&t, "sys_write").total_samples
            ),
            (2, 2)
        );
        assert!(row(&t, "sys_write").kernel);
        assert_eq!(row(&t, "beta").self_samples, 0);
        assert_eq!(row(&t, "work").total_samples, 4, "recursion counts once");
        assert_eq!(row(&t, "work").self_samples, 1);
        assert_eq!(row(&t, "main").total_samples, 4);
        // Without kernel frames, the syscall's samples are beta's own.
        let t = functions(
            &p,
            TableOptions {
                kernel: false,
                threads: false,
            },
        );
        assert!(t.rows.iter().all(|r| r.name != "sys_write"));
        assert_eq!(row(&t, "beta").self_samples, 2);
        let mut t = functions(
            &p,
            TableOptions {
                kernel: true,
                threads: true,
            },
        );
        t.sort(Sort::Total);
        assert_eq!(
            t.rows
                .iter()
                .filter(|r| r.name == "main")
                .map(|r| r.thread.clone().unwrap())
                .collect::<Vec<_>>(),
            vec!["worker (11)".to_string(), "x (10)".to_string()]
        );
        t.filter("ALP");
        assert_eq!(t.rows.len(), 1);
        assert!(t.text(10, 80).contains("alpha"));
    }
}
