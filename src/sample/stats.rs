//! stats: the BPF program's counters (`enum ember_stat` in bpf/ember.h),
//! declared once.
//!
//! [`COUNTERS`] is the one table of them: for each counter its field in
//! [`KernelStats`], the Prometheus series the agent exports it as (family,
//! help text, label) and how the `record` summary words it. The kernel read
//! ([`super::Sampler::stats`]), the agent's `/metrics`
//! (`agent::metrics`) and the summary (`record::summary`) all go through
//! it, and the build fails unless it lists every index of the C enum
//! exactly once, in order.

use super::abi::{Stat, STAT_COUNT};

/// A Prometheus metric family (all kernel counters are `counter`s: the BPF
/// program only ever adds to them).
#[derive(Debug)]
pub struct Family {
    /// Metric name.
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
}

/// How the `record` summary reports a counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    /// Not a cause: a total the summary uses in its own lines, or none.
    Count,
    /// A cause on the `lost:` line, shown when nonzero, lowest `rank`
    /// first. In `text`, `{n}` is the count and `{samples}` the samples
    /// total.
    Lost {
        /// Position on the line.
        rank: u8,
        /// Wording.
        text: &'static str,
    },
    /// A cause in the `user stacks:` line's `truncated:` list, shown as
    /// `{n} {text}` when nonzero.
    Truncated(&'static str),
}

/// One kernel counter.
#[derive(Debug)]
pub struct Counter {
    stat: Stat,
    /// Its field in [`KernelStats`].
    pub field: &'static str,
    /// The family it is exported in.
    pub family: &'static Family,
    /// Its label within the family (`cause="..."`), if the family has more
    /// than one series.
    pub label: Option<(&'static str, &'static str)>,
    /// Its place in the `record` summary.
    pub summary: Summary,
}

impl Counter {
    /// Its index in the BPF stats array.
    pub fn index(&self) -> usize {
        self.stat.0 as usize
    }
}

const SAMPLES: Family = Family {
    name: "ember_samples_total",
    help: "Samples of profiled tasks taken by the BPF sampler.",
};
const IDLE: Family = Family {
    name: "ember_idle_samples_total",
    help: "Samples that hit an idle CPU (not recorded).",
};
const LOST: Family = Family {
    name: "ember_lost_samples_total",
    help: "Samples not recorded whole, by cause.",
};
const EVENTS_LOST: Family = Family {
    name: "ember_process_events_lost_total",
    help: "New-process notifications dropped.",
};
const USER_STACKS: Family = Family {
    name: "ember_user_stacks_total",
    help: "User stacks walked by the sampler.",
};
const COMPLETE: Family = Family {
    name: "ember_user_stacks_complete_total",
    help: "User stacks that reached the outermost frame (main or the thread start).",
};
const TRUNCATED: Family = Family {
    name: "ember_user_stacks_truncated_total",
    help: "User stacks cut short (kept, ending in a [truncated] frame), by cause.",
};

const PY_STACKS: Family = Family {
    name: "ember_python_stacks_total",
    help: "Samples of Python threads whose Python frames were walked.",
};
const PY_NO_THREAD: Family = Family {
    name: "ember_python_samples_without_thread_state_total",
    help: "Samples in Python processes on threads without a Python thread state (native threads, or an interpreter not started yet).",
};
const PY_CUT: Family = Family {
    name: "ember_python_stacks_failed_total",
    help: "Python frame walks cut short or not stored, by cause.",
};

const OFFCPU_WAITS: Family = Family {
    name: "ember_off_cpu_waits_total",
    help: "Off-CPU waits of profiled threads recorded with their stacks.",
};
const OFFCPU_WALKS: Family = Family {
    name: "ember_off_cpu_stack_walks_total",
    help: "Stack walks made when profiled threads left a CPU (the other switch-outs reused the stacks found last time from the same place).",
};
const OFFCPU_SKIPPED: Family = Family {
    name: "ember_off_cpu_waits_skipped_total",
    help: "Off-CPU waits not recorded, by cause: shorter than the threshold, sampled out (their time is carried by the recorded ones' weight), or dropped (a kernel map was full).",
};

macro_rules! label {
    () => {
        None
    };
    ($name:ident = $value:literal) => {
        Some((stringify!($name), $value))
    };
}

/// Declares [`KernelStats`] (one field per row) and [`COUNTERS`] (the
/// rows) from one list.
macro_rules! kernel_counters {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $stat:ident => $family:ident $({ $lname:ident = $lvalue:literal })?, $summary:expr;
    )*) => {
        /// Cumulative counters kept by the BPF program, summed over CPUs.
        /// Each field is a row of [`COUNTERS`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct KernelStats {
            $( $(#[doc = $doc])* pub $field: u64, )*
        }

        /// Every kernel counter, in `enum ember_stat` order.
        pub const COUNTERS: &[Counter] = &[$(
            Counter {
                stat: Stat::$stat,
                field: stringify!($field),
                family: &$family,
                label: label!($($lname = $lvalue)?),
                summary: $summary,
            },
        )*];

        impl KernelStats {
            /// From the stats array, indexed by `enum ember_stat`.
            pub fn from_values(v: [u64; STAT_COUNT]) -> KernelStats {
                KernelStats { $( $field: v[Stat::$stat.0 as usize], )* }
            }

            /// The stats array, indexed by `enum ember_stat`.
            pub fn values(&self) -> [u64; STAT_COUNT] {
                let mut v = [0; STAT_COUNT];
                $( v[Stat::$stat.0 as usize] = self.$field; )*
                v
            }
        }
    };
}

kernel_counters! {
    /// Samples of profiled tasks (recorded, or lost as counted below).
    samples: STAT_SAMPLES => SAMPLES, Summary::Count;
    /// Samples that hit an idle CPU (not recorded).
    idle: STAT_IDLE => IDLE, Summary::Count;
    /// Samples whose user stack could not be read (kept, marked `[lost]`).
    lost_user_stack: STAT_LOST_USER_STACK => LOST { cause = "user_stack_unreadable" },
        Summary::Lost { rank: 2, text: "{n} samples kept without a user stack: not readable" };
    /// Samples with a stack that did not fit the stack map (kept, marked).
    lost_stack_map_full: STAT_LOST_STACK_MAP_FULL => LOST { cause = "stack_map_full" },
        Summary::Lost {
            rank: 1,
            text: "{n} samples kept without a stack: stack map full (raise --stack-map-size)",
        };
    /// Samples lost entirely because the count map was full.
    lost_count_map_full: STAT_LOST_COUNT_MAP_FULL => LOST { cause = "count_map_full" },
        Summary::Lost {
            rank: 0,
            text: "{n} of {samples} samples dropped: count map full (raise --count-map-size)",
        };
    /// New-process notifications dropped (ring buffer full).
    events_lost: STAT_EVENTS_LOST => EVENTS_LOST,
        Summary::Lost { rank: 3, text: "{n} new-process notifications dropped" };
    /// User stacks walked.
    user_stacks: STAT_UNWIND_STACKS => USER_STACKS, Summary::Count;
    /// User stacks that reached the outermost frame (with frame pointers
    /// only: that were not cut at the depth limit).
    complete: STAT_UNWIND_COMPLETE => COMPLETE, Summary::Count;
    /// User stacks cut at the depth limit.
    truncated_depth: STAT_TRUNC_DEPTH => TRUNCATED { cause = "depth_limit" },
        Summary::Truncated("depth limit");
    /// User stacks cut where no unwind table covered the code and frame
    /// pointers failed.
    truncated_no_table: STAT_TRUNC_NO_TABLE => TRUNCATED { cause = "no_unwind_table" },
        Summary::Truncated("no unwind table");
    /// User stacks cut because stack memory was unreadable.
    truncated_read: STAT_TRUNC_READ => TRUNCATED { cause = "unreadable_stack" },
        Summary::Truncated("unreadable stack");
    /// User stacks cut at a CFI rule ember cannot follow.
    truncated_unsupported: STAT_TRUNC_UNSUPPORTED => TRUNCATED { cause = "unsupported_cfi" },
        Summary::Truncated("unsupported CFI");
    /// Samples of Python threads whose Python frames were walked.
    py_stacks: STAT_PY_STACKS => PY_STACKS, Summary::Count;
    /// Samples in Python processes outside any Python thread.
    py_no_thread: STAT_PY_NO_THREAD => PY_NO_THREAD, Summary::Count;
    /// Python walks cut by an unreadable frame.
    py_read: STAT_PY_READ => PY_CUT { cause = "unreadable_frame" }, Summary::Count;
    /// Python walks cut at the depth limit.
    py_depth: STAT_PY_DEPTH => PY_CUT { cause = "depth_limit" }, Summary::Count;
    /// Python walks whose frames could not be stored.
    py_lost: STAT_PY_LOST => PY_CUT { cause = "not_stored" }, Summary::Count;
    /// Off-CPU waits recorded.
    off_cpu_waits: STAT_OFFCPU_WAITS => OFFCPU_WAITS, Summary::Count;
    /// Off-CPU waits shorter than the threshold.
    off_cpu_short: STAT_OFFCPU_SHORT => OFFCPU_SKIPPED { cause = "below_threshold" }, Summary::Count;
    /// Off-CPU waits sampled out.
    off_cpu_sampled_out: STAT_OFFCPU_SAMPLED_OUT => OFFCPU_SKIPPED { cause = "sampled_out" }, Summary::Count;
    /// Off-CPU waits dropped: a map was full.
    off_cpu_dropped: STAT_OFFCPU_DROPPED => OFFCPU_SKIPPED { cause = "map_full" }, Summary::Count;
    /// Stack walks at switch-out (the other switch-outs reused stacks).
    off_cpu_walks: STAT_OFFCPU_WALKS => OFFCPU_WALKS, Summary::Count;
}

// The table covers `enum ember_stat` exactly: one row per index, in order.
const _: () = {
    assert!(
        COUNTERS.len() == STAT_COUNT,
        "COUNTERS needs one row per enum ember_stat index (bpf/ember.h)"
    );
    let mut i = 0;
    while i < COUNTERS.len() {
        assert!(
            COUNTERS[i].stat.0 as usize == i,
            "COUNTERS rows must follow enum ember_stat order"
        );
        i += 1;
    }
};

impl KernelStats {
    /// The value of one row of [`COUNTERS`].
    pub fn get(&self, c: &Counter) -> u64 {
        self.values()[c.index()]
    }

    /// Samples that made it into the count map.
    pub fn recorded(&self) -> u64 {
        self.samples - self.lost_count_map_full
    }

    /// User stacks cut short, all causes.
    pub fn truncated(&self) -> u64 {
        self.truncation_causes().iter().map(|&(_, n)| n).sum()
    }

    /// The truncation causes with counts, for summaries (nonzero only).
    pub fn truncation_causes(&self) -> Vec<(&'static str, u64)> {
        COUNTERS
            .iter()
            .filter_map(|c| match c.summary {
                Summary::Truncated(what) => Some((what, self.get(c))),
                _ => None,
            })
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// The summary's `truncated:` list (`3 depth limit, 1 unsupported
    /// CFI`); empty when no stack was cut.
    pub fn truncation_summary(&self) -> String {
        let causes: Vec<String> = self
            .truncation_causes()
            .iter()
            .map(|(what, n)| format!("{n} {what}"))
            .collect();
        causes.join(", ")
    }

    /// What the summary's `lost:` line lists: each nonzero cause, worded.
    pub fn lost_causes(&self) -> Vec<String> {
        let mut causes: Vec<(u8, String)> = COUNTERS
            .iter()
            .filter_map(|c| match c.summary {
                Summary::Lost { rank, text } if self.get(c) > 0 => Some((
                    rank,
                    text.replace("{n}", &self.get(c).to_string())
                        .replace("{samples}", &self.samples.to_string()),
                )),
                _ => None,
            })
            .collect();
        causes.sort_by_key(|&(rank, _)| rank);
        causes.into_iter().map(|(_, text)| text).collect()
    }

    /// The summary's `lost:` line after the colon: `none`, or the causes.
    pub fn lost_summary(&self) -> String {
        let causes = self.lost_causes();
        if causes.is_empty() {
            "none".to_string()
        } else {
            causes.join("; ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_name(s: &str, colon: bool) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':'))
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colon && c == ':'))
    }

    #[test]
    fn counters_are_valid_prometheus_series_each_once() {
        let mut series = std::collections::HashSet::new();
        for c in COUNTERS {
            assert!(valid_name(c.family.name, true), "{}", c.family.name);
            assert!(c.family.name.ends_with("_total"), "{}", c.family.name);
            assert!(!c.family.help.is_empty() && !c.family.help.contains('\n'));
            if let Some((name, value)) = c.label {
                assert!(valid_name(name, false) && !name.starts_with("__"), "{name}");
                assert!(!value.contains(['"', '\\', '\n']), "{value}");
            }
            assert!(series.insert((c.family.name, c.label)), "{c:?} twice");
            // A family is either one unlabeled series or labeled ones.
            let siblings = COUNTERS.iter().filter(|o| o.family.name == c.family.name);
            for o in siblings {
                assert!(
                    std::ptr::eq(o.family, c.family),
                    "{} defined twice",
                    c.family.name
                );
                assert_eq!(o.label.is_some(), c.label.is_some(), "{}", c.family.name);
                if let (Some((a, _)), Some((b, _))) = (o.label, c.label) {
                    assert_eq!(a, b, "{}: one label name per family", c.family.name);
                }
            }
        }
    }

    #[test]
    fn values_round_trip_in_enum_order() {
        let v: [u64; STAT_COUNT] = std::array::from_fn(|i| 100 + i as u64);
        let st = KernelStats::from_values(v);
        assert_eq!(st.values(), v);
        assert_eq!(st.samples, 100);
        assert_eq!(st.off_cpu_walks, 100 + STAT_COUNT as u64 - 1);
        for (i, c) in COUNTERS.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(st.get(c), v[i], "{}", c.field);
        }
    }

    #[test]
    fn the_summary_mentions_every_nonzero_cause() {
        let zero = KernelStats::default();
        assert_eq!(zero.lost_summary(), "none");
        assert_eq!(zero.truncation_summary(), "");
        let causes: Vec<&Counter> = COUNTERS
            .iter()
            .filter(|c| c.summary != Summary::Count)
            .collect();
        assert!(causes.len() >= 8);
        // One cause at a time: mentioned with its count, nothing else is.
        for c in &causes {
            let mut v = [0u64; STAT_COUNT];
            v[Stat::STAT_SAMPLES.0 as usize] = 1000;
            v[c.index()] = 7;
            let st = KernelStats::from_values(v);
            let (lost, truncated) = (st.lost_summary(), st.truncation_summary());
            match c.summary {
                Summary::Lost { text, .. } => {
                    let words = text
                        .split("{n}")
                        .nth(1)
                        .unwrap()
                        .split("{samples}")
                        .last()
                        .unwrap();
                    assert!(
                        lost.starts_with("7 ") && lost.contains(words),
                        "{}: {lost}",
                        c.field
                    );
                    assert_eq!(truncated, "", "{}", c.field);
                }
                Summary::Truncated(what) => {
                    assert_eq!(truncated, format!("7 {what}"));
                    assert_eq!(lost, "none", "{}", c.field);
                }
                Summary::Count => unreachable!(),
            }
        }
        // All at once: each listed, the lost line in rank order.
        let mut v: [u64; STAT_COUNT] = std::array::from_fn(|i| 1000 + i as u64);
        v[Stat::STAT_SAMPLES.0 as usize] = 100_000;
        let st = KernelStats::from_values(v);
        let (lost, truncated) = (st.lost_summary(), st.truncation_summary());
        for c in &causes {
            let n = st.get(c).to_string();
            let line = match c.summary {
                Summary::Lost { .. } => &lost,
                _ => &truncated,
            };
            assert!(line.contains(&n), "{} ({n}) missing: {line}", c.field);
        }
        assert_eq!(
            lost,
            "1004 of 100000 samples dropped: count map full (raise --count-map-size); \
             1003 samples kept without a stack: stack map full (raise --stack-map-size); \
             1002 samples kept without a user stack: not readable; \
             1005 new-process notifications dropped"
        );
        assert_eq!(
            truncated,
            "1008 depth limit, 1009 no unwind table, 1010 unreadable stack, 1011 unsupported CFI"
        );
        assert_eq!(st.truncated(), 1008 + 1009 + 1010 + 1011);
        assert_eq!(st.recorded(), 100_000 - 1004);
    }
}
