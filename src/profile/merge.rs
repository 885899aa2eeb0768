//! Merges profiles (ember's stored windows, for `ember query`) into one
//! [`Profile`]: every input's mappings, functions and locations go through
//! the profile interner, so equal entries coincide, and equal samples add
//! up. Frame kinds are the inputs' (a stored window's come from the pprof
//! decoder, [`pprof::decode`](super::pprof::decode)).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::intern::{Import, Interner};
use super::pprof::{decode, proto};
use super::Profile;

/// Accumulates profiles.
pub struct Merger {
    t: Interner,
    target: String,
    frequency: u64,
    /// Labels every input so far has, with the same value; `None` before
    /// the first input.
    labels: Option<BTreeMap<String, String>>,
    first: Option<u64>,
    last: u64,
    stack: Vec<u32>,
    off_cpu: bool,
}

impl Merger {
    /// An empty merge whose title will name `target`.
    pub fn new(target: String) -> Merger {
        Merger {
            t: Interner::default(),
            target,
            frequency: 0,
            labels: None,
            first: None,
            last: 0,
            stack: Vec::new(),
            off_cpu: false,
        }
    }

    /// Adds the samples of a pprof profile whose pid `keep_pid` accepts.
    pub fn add(&mut self, p: &proto::Profile, keep_pid: impl Fn(u32) -> bool) {
        self.add_profile(&decode::to_profile(p), keep_pid);
    }

    /// Adds the samples of `p` whose pid `keep_pid` accepts. The merge's
    /// time range spans every input's, its frequency is the first input's
    /// that has one, and its labels are those every input has.
    pub fn add_profile(&mut self, p: &Profile, keep_pid: impl Fn(u32) -> bool) {
        let start = nanos_since_epoch(p.start);
        self.first = Some(self.first.map_or(start, |f| f.min(start)));
        let end = start.saturating_add(u64::try_from(p.duration.as_nanos()).unwrap_or(u64::MAX));
        self.last = self.last.max(end);
        if self.frequency == 0 {
            self.frequency = p.frequency;
        }
        self.off_cpu |= p.off_cpu;
        match &mut self.labels {
            None => self.labels = Some(p.labels.clone()),
            Some(l) => l.retain(|k, v| p.labels.get(k) == Some(v)),
        }
        let mut import = Import::new(p);
        for s in p.samples.iter().filter(|s| keep_pid(s.pid)) {
            import.stack(&mut self.t, &s.locations, &mut self.stack);
            self.t.sample(
                &self.stack,
                [s.count, s.off_cpu],
                s.pid,
                s.tid,
                &s.comm,
                &s.thread_name,
            );
            self.off_cpu |= s.off_cpu > 0;
        }
    }

    /// The merged profile; its time range spans every input.
    pub fn finish(self) -> Profile {
        let t = self.t.finish();
        let (start, duration) = match self.first {
            Some(first) => (
                UNIX_EPOCH + Duration::from_nanos(first),
                Duration::from_nanos(self.last.saturating_sub(first)),
            ),
            None => (SystemTime::now(), Duration::ZERO),
        };
        Profile {
            start,
            duration,
            frequency: self.frequency.max(1),
            target: self.target,
            labels: self.labels.unwrap_or_default(),
            off_cpu: self.off_cpu,
            mappings: t.mappings,
            functions: t.functions,
            locations: t.locations,
            samples: t.samples,
        }
    }
}

fn nanos_since_epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
