//! JIT symbols from `/tmp/perf-PID.map` (Node `--perf-basic-prof`, JVM
//! perf-map agents, Python 3.12 `-X perf`): lines of `START SIZE NAME` in hex.

use std::path::Path;
use std::sync::Arc;

/// One process's perf map, sorted by start address.
#[derive(Default)]
pub struct PerfMap {
    entries: Vec<(u64, u64, Arc<str>)>,
}

impl PerfMap {
    /// Reads a perf map; a missing or unreadable file gives an empty map.
    pub fn load(path: &Path) -> Option<PerfMap> {
        let text = std::fs::read_to_string(path).ok()?;
        Some(PerfMap::parse(&text))
    }

    /// Parses perf-map text. Later lines win for the same start (a JIT may
    /// reuse an address after freeing code).
    pub fn parse(text: &str) -> PerfMap {
        let mut entries: Vec<(u64, u64, Arc<str>)> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.splitn(3, ' ');
                let start = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
                let size = u64::from_str_radix(it.next()?.trim_start_matches("0x"), 16).ok()?;
                let name = it.next()?.trim();
                (!name.is_empty()).then(|| (start, size, Arc::from(name)))
            })
            .collect();
        // Stable sort keeps file order among equal starts; keep the last.
        entries.sort_by_key(|e| e.0);
        entries.reverse();
        entries.dedup_by_key(|e| e.0);
        entries.reverse();
        PerfMap { entries }
    }

    /// The symbol covering `addr`.
    pub fn find(&self, addr: u64) -> Option<&Arc<str>> {
        let i = self.entries.partition_point(|e| e.0 <= addr);
        let (start, size, name) = self.entries.get(i.checked_sub(1)?)?;
        (addr < start + size.max(&1)).then_some(name)
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the map holds no symbols.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds() {
        let m = PerfMap::parse(
            "1000 10 JS:*hot /x.js:1\n2000 0x20 LazyCompile:~cold\nbad line\n1000 8 newer\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(m.find(0x1004).map(|s| &**s), Some("newer"));
        assert_eq!(m.find(0x1009), None);
        assert_eq!(m.find(0x201f).map(|s| &**s), Some("LazyCompile:~cold"));
        assert_eq!(m.find(0x2020), None);
        assert_eq!(m.find(0x10), None);
    }
}
