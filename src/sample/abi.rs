//! abi: the contract between the BPF sampler (bpf/ember.h) and ember's Rust
//! code, in one place.
//!
//! libbpf-cargo generates a Rust type (`skel::types`) for every struct and
//! enum in the BPF object's BTF; bpf/profiler.bpf.c makes sure each shared
//! type is there (through a map definition or its `ember_abi` anchor).
//! Every value that crosses into or out of a BPF map or the ring buffer has
//! its Rust type here: either the generated type itself, or, for
//! [`SampleKey`] (a hash-map key in userspace, so it needs `Hash` and
//! `Eq`), a hand-written view whose size, alignment and field offsets are
//! asserted against the generated type at compile time. Constants (flags,
//! limits, event kinds, counter indexes) come from the generated enums.
//! So a layout change in bpf/ember.h fails the build, never corrupts data.
//!
//! The sampler's maps are read and written only through the typed helpers
//! below, and each one's key and value sizes (and the sizes of the arrays
//! userspace allocates in) are checked against these types when the
//! sampler loads ([`check_map`]). (The unwind tables' own inner arrays hold
//! packed u64 rows, which src/unwind/table.rs encodes.)

use std::mem::{align_of, offset_of, size_of};
use std::os::fd::{AsFd, AsRawFd};

use anyhow::{ensure, Result};
use libbpf_rs::{MapCore, MapFlags};

use super::skel::types;

pub(crate) use types::ember_event_kind as EventKind;
pub(crate) use types::ember_stat as Stat;

/// `struct stack_trace`: one captured stack, innermost frame first; the
/// stack map's value.
pub type StackTrace = types::stack_trace;
/// `struct unwind_mapping`: one executable mapping of a process, for the
/// table unwinder; the `unwind_mappings` array's value.
pub(crate) type UnwindMapping = types::unwind_mapping;
/// `struct proc_unwind`: where a process's mappings are in
/// `unwind_mappings`; the `proc_unwind` map's value.
pub(crate) type ProcUnwind = types::proc_unwind;
/// `struct py_layout`: where one CPython version keeps what the BPF walk
/// reads; the `py_layouts` array's value.
pub(crate) type PyLayout = types::py_layout;
/// `struct py_proc`: a CPython process's runtime; the `py_procs` map's value.
pub(crate) type PyProc = types::py_proc;
/// `struct offcpu_state`: a thread's off-CPU state; the `offcpu_thread`
/// map's value.
pub(crate) type OffCpuState = types::offcpu_state;
/// `struct offcpu_open`: a wait still going on at the end, as the
/// `offcpu_open_waits` iterator writes it.
pub(crate) type OffCpuOpen = types::offcpu_open;
/// `struct offcpu_memo`: a place a thread left the CPU from, with its key.
pub(crate) type OffCpuMemo = types::offcpu_memo;
/// `struct cpu_state`: the off-CPU clock and the programs' costs, per CPU;
/// the `cpu_state` map's value.
pub(crate) type CpuState = types::cpu_state;
/// `struct prog_cost`: a program's self-measured cost.
pub(crate) type ProgCost = types::prog_cost;
/// `struct ember_proc_event`: the ring buffer's message.
pub(crate) type ProcEvent = types::ember_proc_event;

/// Frames per stored stack chunk (`EMBER_MAX_DEPTH`), and the most a
/// stack walked with frame pointers (`bpf_get_stack`) has.
pub const MAX_DEPTH: usize = types::ember_limit::EMBER_MAX_DEPTH.0 as usize;
/// Most frames of a user stack walked with unwind tables
/// (`EMBER_MAX_USER_DEPTH`), stored as a chain of chunks.
pub const MAX_USER_DEPTH: usize = types::ember_limit::EMBER_MAX_USER_DEPTH.0 as usize;
/// Chunks of the deepest user stack (`EMBER_MAX_CHUNKS`).
pub const MAX_CHUNKS: usize = types::ember_limit::EMBER_MAX_CHUNKS.0 as usize;
const _: () = assert!(MAX_CHUNKS * MAX_DEPTH >= MAX_USER_DEPTH);
/// Bytes of a process or thread name, NUL padded (`EMBER_COMM_LEN`).
pub const COMM_LEN: usize = types::ember_limit::EMBER_COMM_LEN.0 as usize;
/// Mappings registered per process (`EMBER_MAX_MAPPINGS`).
pub const MAX_MAPPINGS: usize = types::ember_limit::EMBER_MAX_MAPPINGS.0 as usize;
/// Entries of the `unwind_mappings` array (`EMBER_MAPPING_SLOTS`).
pub const MAPPING_SLOTS: u32 = types::ember_limit::EMBER_MAPPING_SLOTS.0;
/// Entries of the `unwind_tables` array (`EMBER_MAX_TABLES`).
pub const MAX_TABLES: u32 = types::ember_limit::EMBER_MAX_TABLES.0;
/// Size of `struct stack_trace`, the stack map's value.
pub const STACK_TRACE_SIZE: usize = size_of::<StackTrace>();
/// Entries in the per-CPU stats array (`STAT_MAX`).
pub const STAT_COUNT: usize = Stat::STAT_MAX.0 as usize;

/// `sample_key.flags`: the user stack could not be read or stored.
pub const SAMPLE_USER_LOST: u32 = types::sample_flag::SAMPLE_USER_LOST.0;
/// `sample_key.flags`: the kernel stack could not be stored.
pub const SAMPLE_KERNEL_LOST: u32 = types::sample_flag::SAMPLE_KERNEL_LOST.0;
/// `sample_key.flags`: the lost stack did not fit the stack map.
pub const SAMPLE_MAP_FULL: u32 = types::sample_flag::SAMPLE_MAP_FULL.0;
/// `sample_key.flags`: the user stack walk stopped before the outermost frame.
pub const SAMPLE_TRUNCATED: u32 = types::sample_flag::SAMPLE_TRUNCATED.0;
/// `sample_key.flags`: the Python frame walk stopped before the outermost frame.
pub const SAMPLE_PY_TRUNCATED: u32 = types::sample_flag::SAMPLE_PY_TRUNCATED.0;
/// Python frames walked per sample (`EMBER_MAX_PY_DEPTH`).
pub const MAX_PY_DEPTH: usize = types::ember_limit::EMBER_MAX_PY_DEPTH.0 as usize;
const _: () = assert!(2 * MAX_PY_DEPTH <= MAX_CHUNKS * MAX_DEPTH);
/// Entries of the `py_layouts` array (`EMBER_PY_LAYOUTS`).
pub const PY_LAYOUTS: u32 = types::ember_limit::EMBER_PY_LAYOUTS.0;
/// Bytes of a Python frame the walk reads (`EMBER_PY_FRAME_READ`).
pub const PY_FRAME_READ: u16 = types::ember_limit::EMBER_PY_FRAME_READ.0 as u16;
/// `py_layout.kind`: 3.8-3.10 frame objects (`PY_KIND_FRAME_OBJECT`).
pub const PY_KIND_FRAME_OBJECT: u8 = types::py_kind::PY_KIND_FRAME_OBJECT.0 as u8;
/// `py_layout.kind`: 3.11+ interpreter frames (`PY_KIND_INTERP_FRAME`).
pub const PY_KIND_INTERP_FRAME: u8 = types::py_kind::PY_KIND_INTERP_FRAME.0 as u8;
/// A Python frame's flag: the outermost frame of one native eval call.
pub const PY_FRAME_ENTRY: u32 = types::py_frame_flag::PY_FRAME_ENTRY.0;

/// `filter` map value: samples of this process are recorded.
pub(crate) const FILTER_PROFILE: u8 = types::filter_flag::FILTER_PROFILE.0 as u8;
/// `filter` map value: processes this one forks are added.
pub(crate) const FILTER_FOLLOW: u8 = types::filter_flag::FILTER_FOLLOW.0 as u8;

const _: () = {
    // The filter map's value is a __u8.
    assert!(types::filter_flag::FILTER_PROFILE.0 <= u8::MAX as u32);
    assert!(types::filter_flag::FILTER_FOLLOW.0 <= u8::MAX as u32);
    // The limits are the lengths of the arrays they size.
    assert!(array_len(|t: &StackTrace| &t.ips) == MAX_DEPTH);
    assert!(array_len(|k: &types::sample_key| &k.comm) == COMM_LEN);
    assert!(array_len(|k: &types::sample_key| &k.thread_comm) == COMM_LEN);
};

/// `struct sample_key` (bpf/ember.h): one aggregation bucket, the count
/// map's key. Same layout as the generated `types::sample_key` (asserted
/// below), with byte names and the traits a userspace hash key needs.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct SampleKey {
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Hash of the user stack in the stack map; 0 when there is none.
    pub user_stack: u64,
    /// Hash of the kernel stack in the stack map; 0 when there is none.
    pub kernel_stack: u64,
    /// Hash of the Python frames in the stack map (two words per frame,
    /// see [`PyLayout`]); 0 when there are none.
    pub py_stack: u64,
    /// `SAMPLE_*` flags.
    pub flags: u32,
    /// Explicit padding, always zero.
    pub pad: u32,
    /// Process (group leader) name, NUL padded.
    pub comm: [u8; COMM_LEN],
    /// Thread name, NUL padded.
    pub thread_comm: [u8; COMM_LEN],
}

impl From<types::sample_key> for SampleKey {
    fn from(k: types::sample_key) -> SampleKey {
        // No `..`: a field added to the C struct fails to compile here.
        let types::sample_key {
            tgid,
            tid,
            user_stack,
            kernel_stack,
            py_stack,
            flags,
            _pad,
            comm,
            thread_comm,
        } = k;
        SampleKey {
            tgid,
            tid,
            user_stack,
            kernel_stack,
            py_stack,
            flags,
            pad: _pad,
            comm: comm.map(|c| c as u8),
            thread_comm: thread_comm.map(|c| c as u8),
        }
    }
}

impl From<SampleKey> for types::sample_key {
    fn from(k: SampleKey) -> types::sample_key {
        types::sample_key {
            tgid: k.tgid,
            tid: k.tid,
            user_stack: k.user_stack,
            kernel_stack: k.kernel_stack,
            py_stack: k.py_stack,
            flags: k.flags,
            _pad: k.pad,
            comm: k.comm.map(|c| c as i8),
            thread_comm: k.thread_comm.map(|c| c as i8),
        }
    }
}

/// A stack as the stack map stores it: `frames` (innermost first, at most
/// [`MAX_DEPTH`]) and zeros after them.
pub fn stack_trace(frames: &[u64]) -> StackTrace {
    let mut t = StackTrace::default();
    let n = frames.len().min(MAX_DEPTH);
    t.len = n as u32;
    t.ips[..n].copy_from_slice(&frames[..n]);
    t
}

/// The frames a stack map value holds (its length clamped to the array).
pub fn frames(t: &StackTrace) -> &[u64] {
    &t.ips[..(t.len as usize).min(MAX_DEPTH)]
}

/// The length of an array field (`|t: &T| &t.field`), in constant context.
const fn array_len<T, E, const N: usize>(_field: fn(&T) -> &[E; N]) -> usize {
    N
}

/// The size of a field (`|t: &T| &t.field`), in constant context.
const fn field_size<T, F>(_field: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// Asserts at compile time that the named fields, in order, tile the
/// struct from its first byte to its last: no implicit padding (so its
/// bytes are all initialised) and no field left out.
macro_rules! assert_tiled {
    ($t:ty { $($f:ident),+ $(,)? }) => {
        const _: () = {
            let mut end = 0usize;
            $(
                assert!(
                    offset_of!($t, $f) == end,
                    concat!(stringify!($t), ".", stringify!($f), ": implicit padding before it, or a field missing from the list")
                );
                end += field_size(|v: &$t| &v.$f);
            )+
            assert!(end == size_of::<$t>(), concat!(stringify!($t), ": trailing padding, or a field missing from the list"));
        };
    };
}

/// Asserts at compile time that a hand-written view has the generated
/// type's size, alignment, and each field's offset and size.
macro_rules! assert_same_layout {
    ($ours:ty = $theirs:ty { $($f:ident = $g:ident),+ $(,)? }) => {
        const _: () = {
            assert!(size_of::<$ours>() == size_of::<$theirs>(), concat!(stringify!($ours), " and ", stringify!($theirs), " differ in size"));
            assert!(align_of::<$ours>() == align_of::<$theirs>(), concat!(stringify!($ours), " and ", stringify!($theirs), " differ in alignment"));
            $(
                assert!(
                    offset_of!($ours, $f) == offset_of!($theirs, $g),
                    concat!(stringify!($ours), ".", stringify!($f), " is not where ", stringify!($theirs), ".", stringify!($g), " is")
                );
                assert!(
                    field_size(|v: &$ours| &v.$f) == field_size(|v: &$theirs| &v.$g),
                    concat!(stringify!($ours), ".", stringify!($f), " and ", stringify!($theirs), ".", stringify!($g), " differ in size")
                );
            )+
        };
    };
}

assert_tiled!(types::sample_key {
    tgid,
    tid,
    user_stack,
    kernel_stack,
    py_stack,
    flags,
    _pad,
    comm,
    thread_comm
});
assert_same_layout!(SampleKey = types::sample_key {
    tgid = tgid,
    tid = tid,
    user_stack = user_stack,
    kernel_stack = kernel_stack,
    py_stack = py_stack,
    flags = flags,
    pad = _pad,
    comm = comm,
    thread_comm = thread_comm,
});
assert_tiled!(StackTrace {
    len,
    _pad,
    next,
    ips
});
assert_tiled!(UnwindMapping {
    start,
    end,
    bias,
    table,
    pages
});
assert_tiled!(ProcUnwind {
    first,
    count,
    stale,
    _pad
});
assert_tiled!(ProcEvent { tgid, kind });
assert_tiled!(ProgCost { runs, timed, ns });
assert_tiled!(CpuState {
    rq_at,
    offset,
    t0,
    t1,
    sample,
    sw
});
assert_tiled!(OffCpuState {
    since,
    weight,
    cur,
    py,
    _pad,
    py_quiet,
    memo
});
assert_tiled!(OffCpuOpen {
    since,
    weight,
    _pad,
    key
});
assert_tiled!(OffCpuMemo {
    ip,
    sp,
    bp,
    nr,
    how,
    gen,
    _pad,
    until,
    key
});
assert_tiled!(PyProc {
    interp_head,
    layout,
    _pad
});
assert_tiled!(PyLayout {
    interp_next,
    interp_threads,
    tstate_next,
    tstate_thread_id,
    tstate_frame,
    cframe_frame,
    frame_previous,
    frame_code,
    frame_instr,
    frame_owner,
    frame_is_entry,
    frame_read,
    kind,
    _pad
});

/// Plain data shared with the kernel byte for byte.
///
/// # Safety
/// Implementors have no implicit padding (every byte of a value is
/// initialised) and every bit pattern is a valid value: the kernel writes
/// them and their bytes are handed to it.
pub unsafe trait Plain: Copy + Default + 'static {}

// SAFETY: integers; the structs are tiled by integer fields and integer
// arrays (asserted above).
unsafe impl Plain for u8 {}
unsafe impl Plain for u32 {}
unsafe impl Plain for u64 {}
unsafe impl Plain for SampleKey {}
unsafe impl Plain for StackTrace {}
unsafe impl Plain for UnwindMapping {}
unsafe impl Plain for ProcUnwind {}
unsafe impl Plain for ProcEvent {}
unsafe impl Plain for PyLayout {}
unsafe impl Plain for PyProc {}
unsafe impl Plain for OffCpuState {}
unsafe impl Plain for OffCpuOpen {}
// SAFETY: as above; u64 fields only.
unsafe impl Plain for CpuState {}
unsafe impl Plain for OffCpuMemo {}

/// A value's bytes, as the kernel stores them.
pub fn bytes_of<T: Plain>(v: &T) -> &[u8] {
    // SAFETY: `T: Plain` has no uninitialised bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast(), size_of::<T>()) }
}

/// A slice's bytes, as the kernel stores them.
pub fn bytes_of_slice<T: Plain>(v: &[T]) -> &[u8] {
    // SAFETY: `T: Plain` has no uninitialised bytes; the length is the
    // slice's own.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

/// A value read from the start of `bytes` (a ring-buffer message), or
/// `None` when there are too few.
pub(crate) fn read<T: Plain>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>())
        // SAFETY: enough bytes, any bit pattern is a `T`, and the read
        // does not assume alignment.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Fails unless the map's key and value sizes are those of `K` and `V`:
/// a map definition in bpf/ that changed its key or value type.
pub(crate) fn check_map<K: Plain, V: Plain>(name: &str, map: &impl MapCore) -> Result<()> {
    ensure!(
        map.key_size() as usize == size_of::<K>() && map.value_size() as usize == size_of::<V>(),
        "BPF map {name} has {}-byte keys and {}-byte values, ember expects {} and {}: the BPF object does not match this build",
        map.key_size(),
        map.value_size(),
        size_of::<K>(),
        size_of::<V>()
    );
    Ok(())
}

/// Writes one element.
pub(crate) fn update<K: Plain, V: Plain>(
    map: &impl MapCore,
    key: &K,
    value: &V,
    flags: MapFlags,
) -> libbpf_rs::Result<()> {
    map.update(bytes_of(key), bytes_of(value), flags)
}

/// Deletes one element.
pub(crate) fn delete<K: Plain>(map: &impl MapCore, key: &K) -> libbpf_rs::Result<()> {
    map.delete(bytes_of(key))
}

/// Reads one element of a per-CPU map of `u64` and sums it over the CPUs;
/// `per_cpu` is scratch space, sized here.
pub(crate) fn sum_percpu<K: Plain>(
    map: &impl MapCore,
    key: &K,
    per_cpu: &mut Vec<u64>,
) -> Result<u64> {
    let cpus = libbpf_rs::num_possible_cpus()?;
    // Per-CPU values are 8-byte aligned and padded: one u64 per CPU.
    per_cpu.clear();
    per_cpu.resize(cpus, 0);
    // SAFETY: the key is a `K`, the map's key type (checked at load); the
    // buffer holds one 8-byte value per possible CPU, as the kernel writes.
    let r = unsafe {
        libbpf_sys::bpf_map_lookup_elem(
            map.as_fd().as_raw_fd(),
            (key as *const K).cast(),
            per_cpu.as_mut_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(per_cpu.iter().sum())
}

/// Writes `keys.len()` elements in one system call; true if all were
/// written.
pub(crate) fn update_batch<K: Plain, V: Plain>(map: &impl AsFd, keys: &[K], values: &[V]) -> bool {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    let n = keys.len() as u32;
    let mut count = n;
    // SAFETY: keys and values hold `n` elements of the map's key and value
    // types; count is in/out.
    let r = unsafe {
        libbpf_sys::bpf_map_update_batch(
            map.as_fd().as_raw_fd(),
            keys.as_ptr().cast(),
            values.as_ptr().cast(),
            &mut count,
            &opts,
        )
    };
    r == 0 && count == n
}

/// Reads and deletes every entry of a hash map with batch operations,
/// calling `each` per entry. `keys` and `values` are reusable buffers
/// (grown when one hash bucket holds more entries than they fit): no
/// allocation per entry.
pub(crate) fn drain_batch<K: Plain, V: Plain>(
    map: &impl AsFd,
    batch: usize,
    keys: &mut Vec<K>,
    values: &mut Vec<V>,
    mut each: impl FnMut(&K, &V),
) -> std::io::Result<()> {
    let fd = map.as_fd().as_raw_fd();
    let mut cap = keys.len().min(values.len()).max(batch).max(1);
    let opts = libbpf_sys::bpf_map_batch_opts {
        sz: size_of::<libbpf_sys::bpf_map_batch_opts>() as _,
        ..Default::default()
    };
    let mut token = 0u64;
    let mut first = true;
    loop {
        if keys.len() < cap {
            keys.resize(cap, K::default());
        }
        if values.len() < cap {
            values.resize(cap, V::default());
        }
        let mut count = cap as u32;
        let mut next = 0u64;
        // SAFETY: the buffers hold `cap` keys and values of the map's
        // types; the batch tokens are u64-sized (hash maps use a u32
        // bucket index).
        let r = unsafe {
            libbpf_sys::bpf_map_lookup_and_delete_batch(
                fd,
                if first {
                    std::ptr::null_mut()
                } else {
                    (&mut token as *mut u64).cast()
                },
                (&mut next as *mut u64).cast(),
                keys.as_mut_ptr().cast(),
                values.as_mut_ptr().cast(),
                &mut count,
                &opts,
            )
        };
        if r == -libc::ENOSPC {
            // One bucket holds more entries than fit: grow and retry it.
            cap *= 2;
            continue;
        }
        if r < 0 && r != -libc::ENOENT {
            return Err(std::io::Error::from_raw_os_error(-r));
        }
        let n = (count as usize).min(cap);
        for (k, v) in keys[..n].iter().zip(&values[..n]) {
            each(k, v);
        }
        if r == -libc::ENOENT {
            return Ok(());
        }
        token = next;
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SampleKey {
        let mut comm = [0u8; COMM_LEN];
        comm[..5].copy_from_slice(b"ember");
        // A byte above 127: a C `char` is signed here.
        comm[5] = 0xe9;
        let mut thread_comm = [0u8; COMM_LEN];
        thread_comm[..7].copy_from_slice(b"worker1");
        SampleKey {
            tgid: 0x0102_0304,
            tid: 0x0506_0708,
            user_stack: 0x1112_1314_1516_1718,
            kernel_stack: 0x2122_2324_2526_2728,
            py_stack: 0x3132_3334_3536_3738,
            flags: SAMPLE_USER_LOST | SAMPLE_TRUNCATED,
            pad: 0,
            comm,
            thread_comm,
        }
    }

    #[test]
    fn sample_key_matches_the_generated_type() {
        assert_eq!(size_of::<SampleKey>(), size_of::<types::sample_key>());
        assert_eq!(align_of::<SampleKey>(), align_of::<types::sample_key>());
        let pairs = [
            (
                offset_of!(SampleKey, tgid),
                offset_of!(types::sample_key, tgid),
            ),
            (
                offset_of!(SampleKey, tid),
                offset_of!(types::sample_key, tid),
            ),
            (
                offset_of!(SampleKey, user_stack),
                offset_of!(types::sample_key, user_stack),
            ),
            (
                offset_of!(SampleKey, kernel_stack),
                offset_of!(types::sample_key, kernel_stack),
            ),
            (
                offset_of!(SampleKey, py_stack),
                offset_of!(types::sample_key, py_stack),
            ),
            (
                offset_of!(SampleKey, flags),
                offset_of!(types::sample_key, flags),
            ),
            (
                offset_of!(SampleKey, pad),
                offset_of!(types::sample_key, _pad),
            ),
            (
                offset_of!(SampleKey, comm),
                offset_of!(types::sample_key, comm),
            ),
            (
                offset_of!(SampleKey, thread_comm),
                offset_of!(types::sample_key, thread_comm),
            ),
        ];
        for (ours, theirs) in pairs {
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn sample_key_round_trips_through_the_generated_type() {
        let k = key();
        let generated: types::sample_key = k.into();
        assert_eq!(generated.tgid, k.tgid);
        assert_eq!(generated.comm[5], 0xe9u8 as i8);
        // The same bytes either way: what the kernel wrote is what we read.
        let raw = bytes_of(&k).to_vec();
        // SAFETY: the generated type has the same size (asserted above).
        let theirs: types::sample_key =
            unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<types::sample_key>()) };
        assert_eq!(SampleKey::from(theirs), k);
        assert_eq!(SampleKey::from(generated), k);
        assert_eq!(read::<SampleKey>(&raw), Some(k));
        assert_eq!(read::<SampleKey>(&raw[1..]), None);
    }

    #[test]
    fn stack_traces_hold_at_most_the_depth_limit() {
        let t = stack_trace(&[1, 2, 3]);
        assert_eq!(frames(&t), &[1, 2, 3]);
        assert_eq!(bytes_of(&t).len(), STACK_TRACE_SIZE);
        assert_eq!(STACK_TRACE_SIZE, 16 + 8 * MAX_DEPTH);
        let deep: Vec<u64> = (0..MAX_DEPTH as u64 + 10).collect();
        assert_eq!(frames(&stack_trace(&deep)).len(), MAX_DEPTH);
        // A corrupt length never reads past the array.
        let mut bad = stack_trace(&[7]);
        bad.len = u32::MAX;
        assert_eq!(frames(&bad).len(), MAX_DEPTH);
    }

    #[test]
    fn shared_values_have_the_sizes_ember_h_gives_them() {
        // What bpf/ember.h spells out, for a reader of this file: the
        // generated types are the authority, these only document them.
        assert_eq!(size_of::<SampleKey>(), 72);
        assert_eq!(size_of::<PyLayout>(), 32);
        assert_eq!(size_of::<PyProc>(), 16);
        assert_eq!(size_of::<UnwindMapping>(), 32);
        assert_eq!(size_of::<ProcUnwind>(), 16);
        assert_eq!(size_of::<ProcEvent>(), 8);
        let m = UnwindMapping {
            start: 0x1000,
            end: 0x2000,
            bias: 0x400,
            table: 3,
            pages: 1,
        };
        let raw = bytes_of_slice(std::slice::from_ref(&m));
        assert_eq!(&raw[24..28], bytes_of(&3u32));
        let mut msg = bytes_of(&1u32).to_vec();
        msg.extend_from_slice(bytes_of(&2u32));
        msg.push(9);
        let e: ProcEvent = read(&msg).unwrap();
        assert_eq!((e.tgid, e.kind), (1, EventKind::EMBER_EVENT_MAPS.0));
    }
}
