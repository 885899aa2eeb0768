//! JIT symbols from `/tmp/perf-PID.map` (Node `--perf-basic-prof`, JVM
//! perf-map agents, Python 3.12 `-X perf`): lines of `START SIZE NAME` in hex.
//!
//! A perf map is written by the profiled process, so it is hostile input:
//! ember streams it once per build, keeps only the entries that name the
//! addresses it was asked about (memory grows with the addresses, never
//! with the file), skips overlong lines and stops at
//! [`MAX_PERF_MAP_BYTES`](crate::untrusted::MAX_PERF_MAP_BYTES).

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;

use crate::untrusted::{next_line, MAX_PERF_MAP_BYTES, MAX_PERF_MAP_LINE};

/// One perf-map line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// First address.
    pub start: u64,
    /// Size in bytes (0 is read as 1).
    pub size: u64,
    /// Symbol name.
    pub name: Arc<str>,
}

/// Parses one perf-map line (`START SIZE NAME`, hex, optional `0x`).
pub fn parse_line(line: &str) -> Option<(u64, u64, &str)> {
    let mut it = line.splitn(3, ' ');
    let start = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
    let size = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
    let name = it.next()?.trim();
    (!name.is_empty()).then_some((start, size, name))
}

/// Names `addrs` (sorted, deduplicated) from a perf map read from `src`:
/// each address takes the entry with the greatest start at or below it
/// (the last such line when several share a start: a JIT reuses freed
/// addresses), if that entry covers it. Reads at most
/// `limit` bytes (at most [`MAX_PERF_MAP_BYTES`]); returns the name of
/// each address (`None` where none covers it) and the bytes read.
pub fn lookup(src: impl Read, addrs: &[u64], limit: u64) -> (Vec<Option<Arc<str>>>, u64) {
    let mut runs = Runs::new(addrs.len());
    let mut r =
        std::io::BufReader::with_capacity(64 << 10, src.take(limit.min(MAX_PERF_MAP_BYTES)));
    let mut line = Vec::with_capacity(256);
    while let Some(fits) = next_line(&mut r, &mut line, MAX_PERF_MAP_LINE) {
        if !fits {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            continue;
        };
        let Some((start, size, name)) = parse_line(text.trim_end_matches(['\n', '\r'])) else {
            continue;
        };
        runs.offer(addrs, start, size, name);
    }
    let read = limit.min(MAX_PERF_MAP_BYTES) - r.into_inner().limit();
    (runs.finish(addrs), read)
}

/// For every address, the entry with the greatest start at or below it,
/// kept as runs of consecutive addresses sharing one entry: as entries
/// arrive, an entry's start only ever raises an address's best start, so
/// the addresses a new entry takes over form one contiguous range.
struct Runs {
    /// Index of the first address of a run → the run's entry.
    runs: BTreeMap<usize, Entry>,
    n: usize,
}

impl Runs {
    fn new(n: usize) -> Runs {
        Runs {
            runs: BTreeMap::new(),
            n,
        }
    }

    /// The run (first index, entry) holding address index `i`.
    fn at(&self, i: usize) -> Option<(usize, &Entry)> {
        self.runs.range(..=i).next_back().map(|(&k, e)| (k, e))
    }

    fn offer(&mut self, addrs: &[u64], start: u64, size: u64, name: &str) {
        // Addresses at or above the start...
        let lo = addrs.partition_point(|&a| a < start);
        if lo == self.n {
            return;
        }
        // ...up to the first whose best start is already higher (best
        // starts never decrease along the addresses).
        let (mut a, mut b) = (lo, self.n);
        while a < b {
            let mid = (a + b) / 2;
            let higher = self.at(mid).is_some_and(|(_, e)| e.start > start);
            if higher {
                b = mid;
            } else {
                a = mid + 1;
            }
        }
        let hi = a;
        if hi == lo {
            return;
        }
        // Keep the run that continues after hi, then replace [lo, hi).
        if hi < self.n && !self.runs.contains_key(&hi) {
            if let Some((_, e)) = self.at(hi) {
                let e = e.clone();
                self.runs.insert(hi, e);
            }
        }
        let doomed: Vec<usize> = self.runs.range(lo..hi).map(|(&k, _)| k).collect();
        for k in doomed {
            self.runs.remove(&k);
        }
        self.runs.insert(
            lo,
            Entry {
                start,
                size,
                name: Arc::from(crate::util::clean_name(name)),
            },
        );
    }

    fn finish(self, addrs: &[u64]) -> Vec<Option<Arc<str>>> {
        let mut out = vec![None; addrs.len()];
        let mut it = self.runs.into_iter().peekable();
        while let Some((first, e)) = it.next() {
            let end = it.peek().map(|(k, _)| *k).unwrap_or(addrs.len());
            let limit = e.start.saturating_add(e.size.max(1));
            for i in first..end {
                if addrs[i] < limit {
                    out[i] = Some(e.name.clone());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(text: &str, addrs: &[u64]) -> Vec<Option<String>> {
        lookup(text.as_bytes(), addrs, u64::MAX)
            .0
            .into_iter()
            .map(|n| n.map(|s| s.to_string()))
            .collect()
    }

    /// The rule written the obvious way: every entry in memory.
    fn reference(text: &str, addrs: &[u64]) -> Vec<Option<String>> {
        let mut entries: Vec<(u64, u64, String)> = text
            .lines()
            .filter(|l| l.len() <= MAX_PERF_MAP_LINE)
            .filter_map(parse_line)
            .map(|(s, z, n)| (s, z, n.to_string()))
            .collect();
        entries.sort_by_key(|e| e.0);
        entries.reverse();
        entries.dedup_by_key(|e| e.0);
        entries.reverse();
        addrs
            .iter()
            .map(|&a| {
                let i = entries.partition_point(|e| e.0 <= a);
                let (s, z, n) = entries.get(i.checked_sub(1)?)?;
                (a < s.saturating_add((*z).max(1))).then(|| n.clone())
            })
            .collect()
    }

    #[test]
    fn parses_and_finds() {
        let text = "1000 10 JS:*hot /x.js:1\n2000 0x20 LazyCompile:~cold\nbad line\n1000 8 newer\n";
        let addrs = [0x10, 0x1004, 0x1009, 0x201f, 0x2020];
        let got = names(text, &addrs);
        assert_eq!(
            got,
            vec![
                None,
                Some("newer".into()),
                None,
                Some("LazyCompile:~cold".into()),
                None
            ]
        );
        assert_eq!(got, reference(text, &addrs));
    }

    #[test]
    fn overlong_lines_are_skipped_and_the_rest_read() {
        let long = format!("3000 10 {}\n", "x".repeat(MAX_PERF_MAP_LINE * 3));
        let text = format!("1000 10 a\n{long}2000 10 b\n");
        assert_eq!(
            names(&text, &[0x1000, 0x2000, 0x3000]),
            vec![Some("a".into()), Some("b".into()), None]
        );
    }

    #[test]
    fn endless_input_stops_at_the_limit() {
        // /dev/zero-like input: no newline, ever.
        let zeros = std::io::repeat(0).take(MAX_PERF_MAP_BYTES * 4);
        assert_eq!(
            lookup(zeros, &[1, 2], u64::MAX),
            (vec![None, None], MAX_PERF_MAP_BYTES)
        );
        // A smaller budget stops earlier.
        let zeros = std::io::repeat(0).take(1000);
        assert_eq!(lookup(zeros, &[1], 10).1, 10);
    }

    proptest::proptest! {
        #[test]
        fn streaming_matches_the_in_memory_rule(
            entries in proptest::collection::vec((0u64..64, 0u64..20, 0u8..4), 0..40),
            mut addrs in proptest::collection::vec(0u64..80, 0..30),
        ) {
            let text: String = entries
                .iter()
                .enumerate()
                .map(|(i, (s, z, n))| format!("{s:x} {z:x} f{n}_{i}\n"))
                .collect();
            addrs.sort_unstable();
            addrs.dedup();
            proptest::prop_assert_eq!(names(&text, &addrs), reference(&text, &addrs));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
            let _ = lookup(&bytes[..], &[0, 1, 0x1000, u64::MAX], u64::MAX);
        }
    }
}
