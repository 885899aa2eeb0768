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
            value: {
                // Saturating: a merged profile's counts come from files.
                let n = i64::try_from(s.count).unwrap_or(i64::MAX);
                vec![n, n.saturating_mul(period)]
            },
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
    let mut comment = vec![st.id(&format!(
        "ember {}: {}",
        env!("CARGO_PKG_VERSION"),
        p.target
    ))];
    // Target labels ride along as comments, so a stored window is
    // self-describing.
    comment.extend(
        p.labels
            .iter()
            .map(|(k, v)| st.id(&format!("label:{k}={v}"))),
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
        string_table: st.table,
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

/// Largest pprof ember decodes, after decompression. ember's own windows
/// are far smaller; the bound keeps a gzip bomb from taking the host's
/// memory.
pub const MAX_DECODED_BYTES: usize = 128 << 20;

/// Largest memory the decoded messages may take, estimated before decoding
/// (see [`decoded_size`]): protobuf lets 2 bytes declare a whole message,
/// so a small input can otherwise become a large allocation.
pub const MAX_DECODED_MEMORY: u64 = 512 << 20;

/// Reads a pprof profile, gzip-compressed or not. Inputs past
/// [`MAX_DECODED_BYTES`] (uncompressed) or [`MAX_DECODED_MEMORY`] (decoded)
/// are errors; nothing is allocated for them beyond the bound.
pub fn read(bytes: &[u8]) -> anyhow::Result<proto::Profile> {
    let mut raw = Vec::new();
    let data: &[u8] = if bytes.starts_with(&[0x1f, 0x8b]) {
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                flate2::read::GzDecoder::new(bytes),
                MAX_DECODED_BYTES as u64 + 1,
            ),
            &mut raw,
        )?;
        &raw
    } else {
        bytes
    };
    if data.len() > MAX_DECODED_BYTES {
        anyhow::bail!(
            "the profile is larger than {} MiB uncompressed",
            MAX_DECODED_BYTES >> 20
        );
    }
    match decoded_size(data) {
        None => anyhow::bail!("not a pprof profile (malformed protobuf)"),
        Some(n) if n > MAX_DECODED_MEMORY => anyhow::bail!(
            "the profile would take more than {} MiB decoded",
            MAX_DECODED_MEMORY >> 20
        ),
        Some(_) => Ok(proto::Profile::decode(data)?),
    }
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Which message a byte range holds, for [`decoded_size`].
#[derive(Clone, Copy, PartialEq)]
enum Msg {
    Profile,
    Sample,
    Location,
}

/// An upper estimate of the memory `proto::Profile::decode` allocates for
/// `buf` (element structs, strings, repeated numbers; vectors may hold up to
/// twice that while growing), walking the wire format without allocating;
/// `None` if the wire format is malformed. Other messages' fields are
/// fixed-size and allocate nothing.
pub fn decoded_size(buf: &[u8]) -> Option<u64> {
    scan(buf, Msg::Profile)
}

fn scan(mut buf: &[u8], msg: Msg) -> Option<u64> {
    use std::mem::size_of;
    let mut total: u64 = 0;
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (field, wire) = (key >> 3, key & 7);
        let cost: u64 = match wire {
            0 => {
                varint(&mut buf)?;
                // An unpacked repeated number is one more element.
                match (msg, field) {
                    (Msg::Profile, 13) | (Msg::Sample, 1 | 2) => 8,
                    _ => 0,
                }
            }
            1 => {
                buf = buf.get(8..)?;
                0
            }
            5 => {
                buf = buf.get(4..)?;
                0
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let body = buf.get(..len)?;
                buf = &buf[len..];
                let len = len as u64;
                let sized = |n: usize| n as u64;
                match (msg, field) {
                    (Msg::Profile, 1) => sized(size_of::<proto::ValueType>()),
                    (Msg::Profile, 2) => {
                        sized(size_of::<proto::Sample>()) + scan(body, Msg::Sample)?
                    }
                    (Msg::Profile, 3) => sized(size_of::<proto::Mapping>()),
                    (Msg::Profile, 4) => {
                        sized(size_of::<proto::Location>()) + scan(body, Msg::Location)?
                    }
                    (Msg::Profile, 5) => sized(size_of::<proto::Function>()),
                    (Msg::Profile, 6) => sized(size_of::<String>()) + len,
                    // Packed numbers: at least one byte each.
                    (Msg::Profile, 13) | (Msg::Sample, 1 | 2) => 8 * len,
                    (Msg::Sample, 3) => sized(size_of::<proto::Label>()),
                    (Msg::Location, 4) => sized(size_of::<proto::Line>()),
                    _ => 0,
                }
            }
            _ => return None,
        };
        total = total.saturating_add(cost);
    }
    Some(total)
}

/// Splits a profile into parts of at most `max_samples` samples and (if
/// possible) `max_bytes` encoded bytes each, every part carrying only the
/// mappings, locations, functions and strings its samples use, with dense
/// ids. Servers reject profiles over their limits; this keeps every part
/// acceptable instead of losing the whole window.
pub fn split(p: &proto::Profile, max_samples: usize, max_bytes: usize) -> Vec<proto::Profile> {
    if p.sample.len() <= max_samples && p.encoded_len() <= max_bytes {
        return vec![p.clone()];
    }
    let mut per = max_samples.min(p.sample.len()).max(1);
    loop {
        let parts: Vec<proto::Profile> = p.sample.chunks(per).map(|c| subset(p, c)).collect();
        if per == 1 || parts.iter().all(|q| q.encoded_len() <= max_bytes) {
            return parts;
        }
        per = per.div_ceil(2);
    }
}

/// A profile holding `samples` of `p` and only what they reference.
fn subset(p: &proto::Profile, samples: &[proto::Sample]) -> proto::Profile {
    let mut strings = Strings::new();
    let mut str_of = |i: i64| {
        strings.id(p
            .string_table
            .get(i as usize)
            .map(String::as_str)
            .unwrap_or(""))
    };
    let mut loc_map: HashMap<u64, u64> = HashMap::new();
    let mut fn_map: HashMap<u64, u64> = HashMap::new();
    let mut map_map: HashMap<u64, u64> = HashMap::new();
    let mut out = proto::Profile {
        sample_type: p
            .sample_type
            .iter()
            .map(|v| proto::ValueType {
                r#type: str_of(v.r#type),
                unit: str_of(v.unit),
            })
            .collect(),
        period_type: p.period_type.map(|v| proto::ValueType {
            r#type: str_of(v.r#type),
            unit: str_of(v.unit),
        }),
        period: p.period,
        time_nanos: p.time_nanos,
        duration_nanos: p.duration_nanos,
        comment: p.comment.iter().map(|&c| str_of(c)).collect(),
        default_sample_type: if p.default_sample_type != 0 {
            str_of(p.default_sample_type)
        } else {
            0
        },
        ..Default::default()
    };
    for smp in samples {
        let mut ids = Vec::with_capacity(smp.location_id.len());
        for &lid in &smp.location_id {
            let Some(loc) = p.location.get((lid as usize).wrapping_sub(1)) else {
                continue;
            };
            let new = match loc_map.get(&lid) {
                Some(&n) => n,
                None => {
                    let mapping_id = match p.mapping.get((loc.mapping_id as usize).wrapping_sub(1))
                    {
                        None => 0,
                        Some(m) => match map_map.get(&loc.mapping_id) {
                            Some(&n) => n,
                            None => {
                                let n = out.mapping.len() as u64 + 1;
                                out.mapping.push(proto::Mapping {
                                    id: n,
                                    filename: str_of(m.filename),
                                    build_id: str_of(m.build_id),
                                    ..m.clone()
                                });
                                map_map.insert(loc.mapping_id, n);
                                n
                            }
                        },
                    };
                    let mut lines = Vec::with_capacity(loc.line.len());
                    for ln in &loc.line {
                        let Some(f) = p.function.get((ln.function_id as usize).wrapping_sub(1))
                        else {
                            continue;
                        };
                        let fid = match fn_map.get(&ln.function_id) {
                            Some(&n) => n,
                            None => {
                                let n = out.function.len() as u64 + 1;
                                out.function.push(proto::Function {
                                    id: n,
                                    name: str_of(f.name),
                                    system_name: str_of(f.system_name),
                                    filename: str_of(f.filename),
                                    start_line: f.start_line,
                                });
                                fn_map.insert(ln.function_id, n);
                                n
                            }
                        };
                        lines.push(proto::Line {
                            function_id: fid,
                            ..*ln
                        });
                    }
                    let n = out.location.len() as u64 + 1;
                    out.location.push(proto::Location {
                        id: n,
                        mapping_id,
                        address: loc.address,
                        line: lines,
                        is_folded: loc.is_folded,
                    });
                    loc_map.insert(lid, n);
                    n
                }
            };
            ids.push(new);
        }
        let label = smp
            .label
            .iter()
            .map(|l| proto::Label {
                key: str_of(l.key),
                str: if l.str != 0 { str_of(l.str) } else { 0 },
                num: l.num,
                num_unit: if l.num_unit != 0 {
                    str_of(l.num_unit)
                } else {
                    0
                },
            })
            .collect();
        out.sample.push(proto::Sample {
            location_id: ids,
            value: smp.value.clone(),
            label,
        });
    }
    out.string_table = strings.table;
    out
}

/// Gzips encoded bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::with_capacity(bytes.len() / 4 + 64), COMPRESSION);
    gz.write_all(bytes).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_profile(n: usize) -> proto::Profile {
        let mut st = Strings::new();
        let mut p = proto::Profile {
            sample_type: vec![proto::ValueType {
                r#type: st.id("samples"),
                unit: st.id("count"),
            }],
            time_nanos: 1,
            ..Default::default()
        };
        for i in 0..n as u64 {
            p.function.push(proto::Function {
                id: i + 1,
                name: st.id(&format!("f{i}")),
                ..Default::default()
            });
            p.location.push(proto::Location {
                id: i + 1,
                line: vec![proto::Line {
                    function_id: i + 1,
                    line: 1,
                    column: 0,
                }],
                ..Default::default()
            });
            p.sample.push(proto::Sample {
                location_id: vec![i + 1],
                value: vec![1],
                label: vec![],
            });
        }
        p.string_table = st.table;
        p
    }

    #[test]
    fn split_keeps_every_sample_and_only_what_it_needs() {
        let p = sample_profile(10);
        let parts = split(&p, 3, usize::MAX);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts.iter().map(|q| q.sample.len()).sum::<usize>(), 10);
        for q in &parts {
            assert_eq!(q.string_table[0], "");
            assert_eq!(q.location.len(), q.sample.len());
            for (i, l) in q.location.iter().enumerate() {
                assert_eq!(l.id, i as u64 + 1);
            }
            let names: Vec<&str> = q
                .function
                .iter()
                .map(|f| q.string_table[f.name as usize].as_str())
                .collect();
            assert_eq!(names.len(), q.sample.len(), "{names:?}");
        }
        let small = split(&p, 100, 200);
        assert!(small.len() > 1 && small.iter().all(|q| q.encoded_len() <= 200));
    }
}
