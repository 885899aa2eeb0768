//! Splitting a profile into pprof parts a server accepts: each part holds
//! some of the samples and only the mappings, functions, locations and
//! strings they use, copied through the profile interner.

use prost::Message;

use super::encode::{to_proto_with, EncodeOptions};
use super::proto;
use crate::profile::intern::{Import, Interner};
use crate::profile::{Profile, Sample};

/// Encodes `p` in parts of at most `max_samples` samples and (if possible)
/// `max_bytes` encoded bytes each, every part carrying only the mappings,
/// locations, functions and strings its samples use, with dense ids; one
/// part when the whole fits. Servers reject profiles over their limits; this
/// keeps every part acceptable instead of losing the whole window.
pub fn split(
    p: &Profile,
    opts: EncodeOptions,
    max_samples: usize,
    max_bytes: usize,
) -> Vec<proto::Profile> {
    let whole = to_proto_with(p, opts);
    if p.samples.len() <= max_samples && whole.encoded_len() <= max_bytes {
        return vec![whole];
    }
    drop(whole);
    let mut per = max_samples.min(p.samples.len()).max(1);
    loop {
        let parts: Vec<proto::Profile> = p
            .samples
            .chunks(per)
            .map(|c| to_proto_with(&subset(p, c), opts))
            .collect();
        if per == 1 || parts.iter().all(|q| q.encoded_len() <= max_bytes) {
            return parts;
        }
        per = per.div_ceil(2);
    }
}

/// A profile holding `samples` (of `p`) as they are, one for one, and only
/// what they reference.
pub fn subset(p: &Profile, samples: &[Sample]) -> Profile {
    let mut t = Interner::default();
    let mut import = Import::new(p);
    let mut out = Vec::with_capacity(samples.len());
    for s in samples {
        let mut locations = Vec::with_capacity(s.locations.len());
        import.stack(&mut t, &s.locations, &mut locations);
        out.push(Sample {
            locations,
            count: s.count,
            off_cpu: s.off_cpu,
            pid: s.pid,
            tid: s.tid,
            comm: s.comm.clone(),
            thread_name: s.thread_name.clone(),
        });
    }
    let t = t.finish();
    Profile {
        start: p.start,
        duration: p.duration,
        frequency: p.frequency,
        target: p.target.clone(),
        labels: p.labels.clone(),
        off_cpu: p.off_cpu,
        mappings: t.mappings,
        functions: t.functions,
        locations: t.locations,
        samples: out,
    }
}
