//! pprof encoding: hand-written prost messages for `profile.proto`, so the
//! build needs no `protoc` (and not the `pprof` crate's in-process sampler).

use std::collections::HashMap;
use std::io::Write;
use std::time::UNIX_EPOCH;

use flate2::write::GzEncoder;
use prost::Message;

use super::{FrameKind, Profile};

/// The messages of `perftools.profiles` (profile.proto), field for field.
pub mod proto {
    #![allow(missing_docs)]

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Profile {
        #[prost(message, repeated, tag = "1")]
        pub sample_type: Vec<ValueType>,
        #[prost(message, repeated, tag = "2")]
        pub sample: Vec<Sample>,
        #[prost(message, repeated, tag = "3")]
        pub mapping: Vec<Mapping>,
        #[prost(message, repeated, tag = "4")]
        pub location: Vec<Location>,
        #[prost(message, repeated, tag = "5")]
        pub function: Vec<Function>,
        #[prost(string, repeated, tag = "6")]
        pub string_table: Vec<String>,
        #[prost(int64, tag = "7")]
        pub drop_frames: i64,
        #[prost(int64, tag = "8")]
        pub keep_frames: i64,
        #[prost(int64, tag = "9")]
        pub time_nanos: i64,
        #[prost(int64, tag = "10")]
        pub duration_nanos: i64,
        #[prost(message, optional, tag = "11")]
        pub period_type: Option<ValueType>,
        #[prost(int64, tag = "12")]
        pub period: i64,
        #[prost(int64, repeated, tag = "13")]
        pub comment: Vec<i64>,
        #[prost(int64, tag = "14")]
        pub default_sample_type: i64,
        #[prost(int64, tag = "15")]
        pub doc_url: i64,
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct ValueType {
        #[prost(int64, tag = "1")]
        pub r#type: i64,
        #[prost(int64, tag = "2")]
        pub unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        #[prost(uint64, repeated, tag = "1")]
        pub location_id: Vec<u64>,
        #[prost(int64, repeated, tag = "2")]
        pub value: Vec<i64>,
        #[prost(message, repeated, tag = "3")]
        pub label: Vec<Label>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        #[prost(int64, tag = "1")]
        pub key: i64,
        #[prost(int64, tag = "2")]
        pub str: i64,
        #[prost(int64, tag = "3")]
        pub num: i64,
        #[prost(int64, tag = "4")]
        pub num_unit: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Mapping {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub memory_start: u64,
        #[prost(uint64, tag = "3")]
        pub memory_limit: u64,
        #[prost(uint64, tag = "4")]
        pub file_offset: u64,
        #[prost(int64, tag = "5")]
        pub filename: i64,
        #[prost(int64, tag = "6")]
        pub build_id: i64,
        #[prost(bool, tag = "7")]
        pub has_functions: bool,
        #[prost(bool, tag = "8")]
        pub has_filenames: bool,
        #[prost(bool, tag = "9")]
        pub has_line_numbers: bool,
        #[prost(bool, tag = "10")]
        pub has_inline_frames: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Location {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(uint64, tag = "2")]
        pub mapping_id: u64,
        #[prost(uint64, tag = "3")]
        pub address: u64,
        #[prost(message, repeated, tag = "4")]
        pub line: Vec<Line>,
        #[prost(bool, tag = "5")]
        pub is_folded: bool,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Line {
        #[prost(uint64, tag = "1")]
        pub function_id: u64,
        #[prost(int64, tag = "2")]
        pub line: i64,
        #[prost(int64, tag = "3")]
        pub column: i64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Function {
        #[prost(uint64, tag = "1")]
        pub id: u64,
        #[prost(int64, tag = "2")]
        pub name: i64,
        #[prost(int64, tag = "3")]
        pub system_name: i64,
        #[prost(int64, tag = "4")]
        pub filename: i64,
        #[prost(int64, tag = "5")]
        pub start_line: i64,
    }
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    ids: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings::default();
        s.id(""); // index 0 must be ""
        s
    }
    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.ids.insert(s.to_string(), i);
        i
    }
}

/// Converts a profile into pprof messages. Ids are dense, 1..=N.
pub fn to_proto(p: &Profile) -> proto::Profile {
    let mut st = Strings::new();
    let vt = |st: &mut Strings, t: &str, u: &str| proto::ValueType {
        r#type: st.id(t),
        unit: st.id(u),
    };
    let sample_type = vec![
        vt(&mut st, "samples", "count"),
        vt(&mut st, "cpu", "nanoseconds"),
    ];
    let period_type = Some(vt(&mut st, "cpu", "nanoseconds"));
    let period = p.period_ns() as i64;
    let (k_pid, k_tid, k_thread, k_comm) = (
        st.id("pid"),
        st.id("tid"),
        st.id("thread_name"),
        st.id("comm"),
    );

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
        .map(|(i, l)| proto::Location {
            id: i as u64 + 1,
            mapping_id: l.mapping.map_or(0, |m| m as u64 + 1),
            address: if l.kind == FrameKind::Lost {
                0
            } else {
                l.address
            },
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
        })
        .collect();
    let sample = p
        .samples
        .iter()
        .map(|s| proto::Sample {
            location_id: s.locations.iter().map(|&l| l as u64 + 1).collect(),
            value: vec![s.count as i64, s.count as i64 * period],
            label: vec![
                proto::Label {
                    key: k_pid,
                    num: s.pid as i64,
                    ..Default::default()
                },
                proto::Label {
                    key: k_tid,
                    num: s.tid as i64,
                    ..Default::default()
                },
                proto::Label {
                    key: k_thread,
                    str: st.id(&s.thread_name),
                    ..Default::default()
                },
                proto::Label {
                    key: k_comm,
                    str: st.id(&s.comm),
                    ..Default::default()
                },
            ],
        })
        .collect();
    let comment = vec![st.id(&format!(
        "ember {}: {}",
        env!("CARGO_PKG_VERSION"),
        p.target
    ))];
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
        string_table: st.table,
    }
}

/// Writes a gzip-compressed pprof profile.
pub fn write(p: &Profile, out: impl Write) -> std::io::Result<()> {
    let bytes = to_proto(p).encode_to_vec();
    let mut gz = GzEncoder::new(out, flate2::Compression::default());
    gz.write_all(&bytes)?;
    gz.finish()?.flush()
}

/// Reads a pprof profile, gzip-compressed or not.
pub fn read(bytes: &[u8]) -> anyhow::Result<proto::Profile> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut raw)?;
        Ok(proto::Profile::decode(&raw[..])?)
    } else {
        Ok(proto::Profile::decode(bytes)?)
    }
}
