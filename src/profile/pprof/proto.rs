//! The messages of `perftools.profiles` (profile.proto), field for field,
//! written by hand as prost messages so the build needs no `protoc` (and not
//! the `pprof` crate's in-process sampler). Ids are 1-based (0 means none),
//! and every `i64` naming a string is an index into
//! [`Profile::string_table`], whose entry 0 is always "".

/// A whole profile.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Profile {
    /// What each sample value counts, in order.
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    /// The samples.
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    /// Memory mappings locations refer to.
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    /// Code addresses samples refer to.
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    /// Functions lines refer to.
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    /// Every string of the profile; entry 0 is "".
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    /// Regex (string index) of frames to drop, with their callees.
    #[prost(int64, tag = "7")]
    pub drop_frames: i64,
    /// Regex (string index) of frames to keep despite `drop_frames`.
    #[prost(int64, tag = "8")]
    pub keep_frames: i64,
    /// When collection started, in nanoseconds since the epoch.
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    /// How long collection ran, in nanoseconds.
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    /// What one sampling period counts.
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    /// The sampling period, in `period_type` units.
    #[prost(int64, tag = "12")]
    pub period: i64,
    /// Free-form comments (string indices).
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    /// The sample type shown by default (string index of its type).
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
    /// Documentation URL (string index).
    #[prost(int64, tag = "15")]
    pub doc_url: i64,
}

/// A value's type and unit.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct ValueType {
    /// Type, such as "cpu" (string index).
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    /// Unit, such as "nanoseconds" (string index).
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

/// One sample: a stack, its values and labels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    /// Location ids, leaf first.
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    /// One value per [`Profile::sample_type`].
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    /// Labels of the sample.
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

/// A sample label: a string or a number under a key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    /// Key (string index).
    #[prost(int64, tag = "1")]
    pub key: i64,
    /// String value (string index), 0 for a numeric label.
    #[prost(int64, tag = "2")]
    pub str: i64,
    /// Numeric value.
    #[prost(int64, tag = "3")]
    pub num: i64,
    /// Unit of `num` (string index), or 0.
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

/// A memory mapping of code.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Mapping {
    /// Id, 1-based.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// First address.
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    /// One past the last address.
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    /// File offset of `memory_start`.
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    /// File name (string index).
    #[prost(int64, tag = "5")]
    pub filename: i64,
    /// Build ID (string index).
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    /// Every location here has function names.
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    /// Every location here has file names.
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    /// Every location here has line numbers.
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
    /// Locations here have their inline frames.
    #[prost(bool, tag = "10")]
    pub has_inline_frames: bool,
}

/// A code address and the function frames at it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Location {
    /// Id, 1-based.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Mapping id, or 0.
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    /// Address.
    #[prost(uint64, tag = "3")]
    pub address: u64,
    /// Function frames, innermost (inlined) first.
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
    /// Several symbols were folded into this location.
    #[prost(bool, tag = "5")]
    pub is_folded: bool,
}

/// One function frame of a location.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Line {
    /// Function id.
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    /// Source line, 0 when unknown.
    #[prost(int64, tag = "2")]
    pub line: i64,
    /// Source column, 0 when unknown.
    #[prost(int64, tag = "3")]
    pub column: i64,
}

/// A function.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Function {
    /// Id, 1-based.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Demangled name (string index).
    #[prost(int64, tag = "2")]
    pub name: i64,
    /// Name as in the symbol table (string index).
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    /// Source file (string index).
    #[prost(int64, tag = "4")]
    pub filename: i64,
    /// First line of the function, 0 when unknown.
    #[prost(int64, tag = "5")]
    pub start_line: i64,
}
