//! pprof bytes → [`proto::Profile`] ([`read`], bounded in size and in
//! decoded memory) → [`Profile`] ([`to_profile`], [`read_profile`]).
//!
//! [`to_profile`] is where a profile read back from pprof gets its frame
//! kinds: each location's kind is its mapping's, [`FrameKind::of_mapping_file`]
//! of the mapping's file name (the pseudo-files ember's builder writes), and
//! [`FrameKind::User`] for a location without a mapping. Nothing else (no
//! function name) is looked at. Windows written before kinds had
//! pseudo-mappings read back with markers and JIT frames as user code.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use prost::Message;

use super::{proto, OFF_CPU_TYPE};
use crate::profile::{FrameKind, Function, Line, Location, Mapping, Profile, Sample};

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

/// Reads a pprof profile (gzip-compressed or not) into a [`Profile`], within
/// the bounds of [`read`].
pub fn read_profile(bytes: &[u8]) -> anyhow::Result<Profile> {
    Ok(to_profile(&read(bytes)?))
}

/// A table's ids → indices: ember writes dense ids 1..=N, other writers may
/// not. The first of duplicate ids wins.
enum Ids {
    Dense(usize),
    Sparse(HashMap<u64, u32>),
}

impl Ids {
    fn new(ids: impl ExactSizeIterator<Item = u64> + Clone) -> Ids {
        let n = ids.len();
        if ids.clone().enumerate().all(|(i, id)| id == i as u64 + 1) {
            return Ids::Dense(n);
        }
        let mut m = HashMap::with_capacity(n);
        for (i, id) in ids.enumerate() {
            if id != 0 {
                m.entry(id).or_insert(i as u32);
            }
        }
        Ids::Sparse(m)
    }

    fn get(&self, id: u64) -> Option<u32> {
        match self {
            Ids::Dense(n) => (id >= 1 && id <= *n as u64).then(|| (id - 1) as u32),
            Ids::Sparse(m) => m.get(&id).copied(),
        }
    }
}

/// Converts pprof messages into a [`Profile`]. Any input converts: string
/// indices out of range read as "", references to missing ids are dropped.
/// Kinds come from mappings (see [the module docs](self)); sample counts are
/// the first value; `pid`, `tid`, `comm` and `thread_name` come from sample
/// labels, the target and labels from ember's comments.
pub fn to_profile(p: &proto::Profile) -> Profile {
    let empty: Arc<str> = Arc::from("");
    let strings: Vec<Arc<str>> = p
        .string_table
        .iter()
        .map(|s| Arc::from(s.as_str()))
        .collect();
    let s = |i: i64| -> Arc<str> {
        usize::try_from(i)
            .ok()
            .and_then(|i| strings.get(i))
            .unwrap_or(&empty)
            .clone()
    };
    let text = |i: i64| -> &str {
        usize::try_from(i)
            .ok()
            .and_then(|i| p.string_table.get(i))
            .map_or("", String::as_str)
    };

    let mappings: Vec<Mapping> = p
        .mapping
        .iter()
        .map(|m| Mapping {
            start: m.memory_start,
            limit: m.memory_limit,
            offset: m.file_offset,
            file: s(m.filename),
            build_id: text(m.build_id).to_string(),
            has_functions: m.has_functions,
            has_filenames: m.has_filenames,
            has_line_numbers: m.has_line_numbers,
            has_inline_frames: m.has_inline_frames,
        })
        .collect();
    // The one place kinds are derived.
    let kinds: Vec<FrameKind> = mappings
        .iter()
        .map(|m| FrameKind::of_mapping_file(&m.file))
        .collect();
    let functions: Vec<Function> = p
        .function
        .iter()
        .map(|f| Function {
            name: s(f.name),
            system_name: s(f.system_name),
            filename: s(f.filename),
        })
        .collect();
    let map_ids = Ids::new(p.mapping.iter().map(|m| m.id));
    let fn_ids = Ids::new(p.function.iter().map(|f| f.id));
    let locations: Vec<Location> = p
        .location
        .iter()
        .map(|l| {
            let mapping = map_ids.get(l.mapping_id);
            Location {
                mapping,
                address: l.address,
                lines: l
                    .line
                    .iter()
                    .filter_map(|ln| {
                        Some(Line {
                            function: fn_ids.get(ln.function_id)?,
                            line: u32::try_from(ln.line).unwrap_or(0),
                        })
                    })
                    .collect(),
                kind: mapping.map_or(FrameKind::User, |m| kinds[m as usize]),
            }
        })
        .collect();

    let loc_ids = Ids::new(p.location.iter().map(|l| l.id));
    let key_of = |name: &str| {
        p.string_table
            .iter()
            .position(|x| x == name)
            .map(|i| i as i64)
    };
    let (k_pid, k_tid, k_thread, k_comm) = (
        key_of("pid"),
        key_of("tid"),
        key_of("thread_name"),
        key_of("comm"),
    );
    // The off-CPU value, when the profile has that sample type.
    let off_cpu_index = p.sample_type.iter().position(|t| {
        p.string_table
            .get(t.r#type.max(0) as usize)
            .map(String::as_str)
            == Some(OFF_CPU_TYPE)
    });
    let samples = p
        .sample
        .iter()
        .map(|smp| {
            let label = |k: Option<i64>| smp.label.iter().find(|l| Some(l.key) == k);
            let num = |k| label(k).map_or(0, |l| l.num as u32);
            let name = |k| label(k).map_or_else(|| empty.clone(), |l| s(l.str));
            Sample {
                locations: smp
                    .location_id
                    .iter()
                    .filter_map(|&id| loc_ids.get(id))
                    .collect(),
                count: smp.value.first().map_or(0, |&v| v.max(0) as u64),
                off_cpu: off_cpu_index
                    .and_then(|i| smp.value.get(i))
                    .map_or(0, |&v| v.max(0) as u64),
                pid: num(k_pid),
                tid: num(k_tid),
                comm: name(k_comm),
                thread_name: name(k_thread),
            }
        })
        .collect();

    let comments = p.comment.iter().map(|&i| text(i));
    let target = comments
        .clone()
        .next()
        .and_then(|c| c.strip_prefix("ember "))
        .and_then(|c| c.split_once(": "))
        .map_or_else(String::new, |(_, t)| t.to_string());
    let labels: BTreeMap<String, String> = comments
        .filter_map(|c| c.strip_prefix("label:")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let nanos = |n: i64| Duration::from_nanos(n.max(0) as u64);
    Profile {
        start: UNIX_EPOCH + nanos(p.time_nanos),
        duration: nanos(p.duration_nanos),
        frequency: if p.period > 0 {
            (1_000_000_000 / p.period as u64).max(1)
        } else {
            0
        },
        target,
        labels,
        off_cpu: off_cpu_index.is_some(),
        mappings,
        functions,
        locations,
        samples,
    }
}
