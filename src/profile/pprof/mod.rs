//! pprof (`profile.proto`), ember's file format and what it pushes:
//!
//! - [`proto`]: the messages, hand-written for prost;
//! - [`encode`]: [`Profile`](crate::profile::Profile) → messages → gzip;
//! - [`decode`]: bytes → messages, bounded, → `Profile`;
//! - [`subset`]: a profile split into parts a server accepts.
//!
//! # Frame kinds in pprof
//!
//! pprof has no field for what a frame is, so kinds travel as mappings:
//! the builder puts every kernel, JIT and marker location in a pseudo-mapping
//! named by [`FrameKind::mapping_file`](crate::profile::FrameKind::mapping_file)
//! (`[kernel.kallsyms]`, `[jit]`, `[ember:lost-kernel-stack]`,
//! `[ember:lost-user-stack]`, `[ember:truncated-stack]`), and user code stays
//! in the process's own mappings (or none). The encoder copies mappings as
//! they are; the decoder ([`decode::to_profile`]) gives each location the
//! kind of its mapping's name. Other pprof tools see ordinary mappings.
//!
//! Every sample is labeled `pid`, `tid`, `comm` and (unless left out)
//! `thread_name`; comments hold `ember VERSION: TARGET` then `label:K=V`
//! for each target label.

/// The sample type of off-CPU time (unit: nanoseconds):
/// `go tool pprof -sample_index=off_cpu`.
pub const OFF_CPU_TYPE: &str = "off_cpu";

pub mod decode;
pub mod encode;
pub mod proto;
pub mod subset;

pub use decode::{
    decoded_size, read, read_profile, to_profile, MAX_DECODED_BYTES, MAX_DECODED_MEMORY,
};
pub use encode::{gzip, to_proto, to_proto_with, write, EncodeOptions};
pub use subset::split;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{BuildOptions, Builder, Frame};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    /// `n` samples of one distinct function each.
    fn sample_profile(n: usize) -> crate::profile::Profile {
        let mut b = Builder::new();
        let file: Arc<str> = Arc::from("/bin/x");
        let m = b.mapping(0x1000, 0x9000, 0, &file, "");
        for i in 0..n {
            let name: Arc<str> = Arc::from(format!("f{i}"));
            let frame = Frame {
                name: &name,
                system_name: &name,
                file: None,
                line: 1,
            };
            let l = b.user(Some(m), 0x1000 + i as u64, [frame]);
            b.sample(&[l], 1, 1, 1, "x", "x");
        }
        b.finish(&BuildOptions {
            start: UNIX_EPOCH + Duration::from_secs(1),
            duration: Duration::from_secs(1),
            frequency: 99,
            target: "test".into(),
            off_cpu: false,
        })
    }

    #[test]
    fn split_keeps_every_sample_and_only_what_it_needs() {
        use prost::Message;
        let p = sample_profile(10);
        let parts = split(&p, EncodeOptions::default(), 3, usize::MAX);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.iter().map(|q| q.sample.len()).sum::<usize>(), 10);
        for q in &parts {
            assert_eq!(q.string_table[0], "");
            assert_eq!(q.location.len(), q.sample.len());
            assert_eq!(q.mapping.len(), 1);
            for (i, l) in q.location.iter().enumerate() {
                assert_eq!(l.id, i as u64 + 1);
            }
            let names: Vec<&str> = q
                .function
                .iter()
                .map(|f| q.string_table[f.name as usize].as_str())
                .collect();
            assert_eq!(names.len(), q.sample.len(), "{names:?}");
            assert!(!q.string_table.iter().any(|s| s == "f9") || names == ["f9"]);
        }
        // A byte bound two single-sample parts fit in.
        let one = split(&p, EncodeOptions::default(), 1, usize::MAX)[0].encoded_len();
        let small = split(&p, EncodeOptions::default(), 100, 2 * one);
        assert!(small.len() > 1 && small.iter().all(|q| q.encoded_len() <= 2 * one));
        assert_eq!(small.iter().map(|q| q.sample.len()).sum::<usize>(), 10);
        // Whole when it fits.
        assert_eq!(
            split(&p, EncodeOptions::default(), 100, usize::MAX).len(),
            1
        );
    }

    #[test]
    fn thread_names_can_be_left_out() {
        let p = sample_profile(2);
        let with = to_proto(&p);
        let without = to_proto_with(
            &p,
            EncodeOptions {
                off_cpu_only: None,
                thread_names: false,
            },
        );
        assert!(with.string_table.iter().any(|s| s == "thread_name"));
        assert!(!without.string_table.iter().any(|s| s == "thread_name"));
        assert_eq!(with.sample[0].label.len(), 4);
        assert_eq!(without.sample[0].label.len(), 3);
    }
}
