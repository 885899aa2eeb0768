//! Profile → pprof: the messages ([`to_proto`]), and gzip-compressed bytes
//! ([`write()`], [`gzip`]). A straight copy of the profile's tables; frame
//! kinds travel as the pseudo-mappings the builder put their locations in
//! (see [the module docs](super)).

use std::borrow::Cow;
use std::hash::BuildHasher;
use std::io::Write;
use std::time::UNIX_EPOCH;

use flate2::write::GzEncoder;
use prost::Message;

use super::OFF_CPU_TYPE;

use super::proto;
use crate::profile::intern::{FastHash, Table};
use crate::profile::{FrameKind, Profile};

/// What goes into an encoded profile beyond its tables.
#[derive(Debug, Clone, Copy)]
pub struct EncodeOptions {
    /// Label each sample with its thread name (`thread_name`), besides
    /// `pid`, `tid` and `comm`.
    pub thread_names: bool,
    /// Write the off-CPU time alone, as this sample type (nanoseconds)
    /// with this period type (none when `None`): what a backend that keeps
    /// one profile type per series needs. Default: every type the profile
    /// has (`samples`, `cpu`, and `off_cpu` when recorded).
    pub off_cpu_only: Option<(&'static str, Option<(&'static str, &'static str)>)>,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        EncodeOptions {
            thread_names: true,
            off_cpu_only: None,
        }
    }
}

/// The pprof string table under construction: index 0 is "". Strings of
/// the profile are borrowed, not copied, until the table is done.
struct Strings<'a> {
    hash: FastHash,
    table: Table<Cow<'a, str>>,
}

impl<'a> Strings<'a> {
    fn new() -> Strings<'a> {
        let mut s = Strings {
            hash: FastHash::default(),
            table: Table::default(),
        };
        s.id("");
        s
    }

    fn id(&mut self, s: &'a str) -> i64 {
        self.intern(Cow::Borrowed(s))
    }

    fn intern(&mut self, s: Cow<'a, str>) -> i64 {
        let h = &self.hash;
        i64::from(self.table.intern(
            h.hash_one(&*s),
            |x| *x == s,
            |x| h.hash_one(&**x),
            || s.clone(),
        ))
    }

    fn into_table(self) -> Vec<String> {
        self.table
            .into_items()
            .into_iter()
            .map(Cow::into_owned)
            .collect()
    }
}

/// Converts a profile into pprof messages, with every label. Ids are dense,
/// 1..=N.
pub fn to_proto(p: &Profile) -> proto::Profile {
    to_proto_with(p, EncodeOptions::default())
}

/// Converts a profile into pprof messages. Ids are dense, 1..=N.
pub fn to_proto_with(p: &Profile, opts: EncodeOptions) -> proto::Profile {
    let mut st = Strings::new();
    let vt = |st: &mut Strings, t: &'static str, u: &'static str| proto::ValueType {
        r#type: st.id(t),
        unit: st.id(u),
    };
    let (sample_type, period_type, period) = match opts.off_cpu_only {
        None => {
            let mut types = vec![
                vt(&mut st, "samples", "count"),
                vt(&mut st, "cpu", "nanoseconds"),
            ];
            if p.off_cpu {
                types.push(vt(&mut st, OFF_CPU_TYPE, "nanoseconds"));
            }
            (
                types,
                Some(vt(&mut st, "cpu", "nanoseconds")),
                p.period_ns() as i64,
            )
        }
        Some((name, period)) => (
            vec![vt(&mut st, name, "nanoseconds")],
            period.map(|(t, u)| vt(&mut st, t, u)),
            i64::from(period.is_some()),
        ),
    };
    let cpu_period = p.period_ns() as i64;
    let (k_pid, k_tid) = (st.id("pid"), st.id("tid"));
    let k_thread = opts.thread_names.then(|| st.id("thread_name"));
    let k_comm = st.id("comm");

    let mapping = p
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| proto::Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.offset,
            filename: st.id(&m.file),
            build_id: st.id(&m.build_id),
            has_functions: m.has_functions,
            has_filenames: m.has_filenames,
            has_line_numbers: m.has_line_numbers,
            has_inline_frames: m.has_inline_frames,
        })
        .collect();
    let function = p
        .functions
        .iter()
        .enumerate()
        .map(|(i, f)| proto::Function {
            id: i as u64 + 1,
            name: st.id(&f.name),
            system_name: st.id(&f.system_name),
            filename: st.id(&f.filename),
            start_line: 0,
        })
        .collect();
    let location = p
        .locations
        .iter()
        .enumerate()
        .map(|(i, l)| {
            debug_assert_eq!(
                l.kind,
                l.mapping
                    .map_or(FrameKind::User, |m| FrameKind::of_mapping_file(
                        &p.mappings[m as usize].file
                    )),
                "a location's kind disagrees with its mapping, and would not survive pprof"
            );
            proto::Location {
                id: i as u64 + 1,
                mapping_id: l.mapping.map(|m| m as u64 + 1).unwrap_or(0),
                address: l.address,
                line: l
                    .lines
                    .iter()
                    .map(|ln| proto::Line {
                        function_id: ln.function as u64 + 1,
                        line: ln.line as i64,
                        column: 0,
                    })
                    .collect(),
                is_folded: false,
            }
        })
        .collect();
    let sample = p
        .samples
        .iter()
        .map(|s| {
            let mut label = Vec::with_capacity(4);
            label.push(proto::Label {
                key: k_pid,
                num: s.pid as i64,
                ..Default::default()
            });
            label.push(proto::Label {
                key: k_tid,
                num: s.tid as i64,
                ..Default::default()
            });
            if let Some(key) = k_thread {
                label.push(proto::Label {
                    key,
                    str: st.id(&s.thread_name),
                    ..Default::default()
                });
            }
            label.push(proto::Label {
                key: k_comm,
                str: st.id(&s.comm),
                ..Default::default()
            });
            proto::Sample {
                location_id: s.locations.iter().map(|&l| l as u64 + 1).collect(),
                value: {
                    // Saturating: a merged profile's counts come from files.
                    let n = i64::try_from(s.count).unwrap_or(i64::MAX);
                    let off = i64::try_from(s.off_cpu).unwrap_or(i64::MAX);
                    if opts.off_cpu_only.is_some() {
                        vec![off]
                    } else if p.off_cpu {
                        vec![n, n.saturating_mul(cpu_period), off]
                    } else {
                        vec![n, n.saturating_mul(cpu_period)]
                    }
                },
                label,
            }
        })
        .collect();
    let mut comment = vec![st.intern(Cow::Owned(format!(
        "ember {}: {}",
        env!("CARGO_PKG_VERSION"),
        p.target
    )))];
    // Target labels ride along as comments, so a stored window is
    // self-describing.
    comment.extend(
        p.labels
            .iter()
            .map(|(k, v)| st.intern(Cow::Owned(format!("label:{k}={v}")))),
    );
    proto::Profile {
        sample_type,
        sample,
        mapping,
        location,
        function,
        drop_frames: 0,
        keep_frames: 0,
        time_nanos: p
            .start
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        duration_nanos: p.duration.as_nanos() as i64,
        period_type,
        period,
        comment,
        default_sample_type: 0,
        doc_url: 0,
        string_table: st.into_table(),
    }
}

/// gzip level 1: on real profiles about 3x faster than the default level 6
/// for files about 4% larger; the agent compresses every window all day.
const COMPRESSION: flate2::Compression = flate2::Compression::new(1);

/// Writes a gzip-compressed pprof profile.
pub fn write(p: &Profile, out: impl Write) -> std::io::Result<()> {
    let bytes = to_proto(p).encode_to_vec();
    let mut gz = GzEncoder::new(out, COMPRESSION);
    gz.write_all(&bytes)?;
    gz.finish()?.flush()
}

/// Gzips encoded bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::with_capacity(bytes.len() / 4 + 64), COMPRESSION);
    gz.write_all(bytes).expect("writing to memory");
    gz.finish().expect("writing to memory")
}
