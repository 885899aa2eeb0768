//! The kernel each build of the BPF program needs, checked statically from
//! the compiled objects (no root, nothing loaded): every helper call, map
//! type, map flag, program type, attach type and global function in each
//! object is looked up in a table of the Linux release that introduced it,
//! and the newest must not exceed the variant's stated minimum (modern:
//! 5.17, compat: 5.10). The README's minimum must be the compat one.
//!
//! The releases are the kernel's own history as tabulated in bcc's
//! `docs/kernel-versions.md` (helpers, maps, program types) and the commits
//! named beside the few entries that table lacks.

use std::collections::BTreeMap;

use libbpf_rs::AsRawLibbpf;
use object::{Object, ObjectSection, SectionFlags};

/// The objects' bytes, 8-byte aligned as an ELF parser wants them.
#[repr(C, align(8))]
struct Aligned<T: ?Sized>(T);
static MODERN_OBJ: &Aligned<[u8]> =
    &Aligned(*include_bytes!(concat!(env!("OUT_DIR"), "/profiler.bpf.o")));
static COMPAT_OBJ: &Aligned<[u8]> = &Aligned(*include_bytes!(concat!(
    env!("OUT_DIR"),
    "/profiler_compat.bpf.o"
)));
const MODERN: &[u8] = &MODERN_OBJ.0;
const COMPAT: &[u8] = &COMPAT_OBJ.0;

/// A Linux release as (major, minor).
type Release = (u32, u32);

fn show(r: Release) -> String {
    format!("{}.{}", r.0, r.1)
}

/// Helper id -> (name, release that added it).
fn helpers() -> BTreeMap<u32, (&'static str, Release)> {
    use libbpf_sys as s;
    [
        (s::BPF_FUNC_map_lookup_elem, "map_lookup_elem", (3, 19)),
        (s::BPF_FUNC_map_update_elem, "map_update_elem", (3, 19)),
        (s::BPF_FUNC_map_delete_elem, "map_delete_elem", (3, 19)),
        (s::BPF_FUNC_ktime_get_ns, "ktime_get_ns", (4, 1)),
        (s::BPF_FUNC_get_prandom_u32, "get_prandom_u32", (4, 1)),
        (
            s::BPF_FUNC_get_smp_processor_id,
            "get_smp_processor_id",
            (4, 1),
        ),
        (
            s::BPF_FUNC_get_current_pid_tgid,
            "get_current_pid_tgid",
            (4, 2),
        ),
        (s::BPF_FUNC_get_current_comm, "get_current_comm", (4, 2)),
        (s::BPF_FUNC_get_current_task, "get_current_task", (4, 8)),
        (s::BPF_FUNC_get_stack, "get_stack", (4, 18)),
        (s::BPF_FUNC_probe_read_kernel, "probe_read_kernel", (5, 5)),
        (s::BPF_FUNC_probe_read_user, "probe_read_user", (5, 5)),
        (
            s::BPF_FUNC_probe_read_kernel_str,
            "probe_read_kernel_str",
            (5, 5),
        ),
        (
            s::BPF_FUNC_probe_read_user_str,
            "probe_read_user_str",
            (5, 5),
        ),
        (s::BPF_FUNC_seq_write, "seq_write", (5, 7)),
        (s::BPF_FUNC_ringbuf_output, "ringbuf_output", (5, 8)),
        (s::BPF_FUNC_ringbuf_reserve, "ringbuf_reserve", (5, 8)),
        (s::BPF_FUNC_ringbuf_submit, "ringbuf_submit", (5, 8)),
        (s::BPF_FUNC_ringbuf_discard, "ringbuf_discard", (5, 8)),
        (
            s::BPF_FUNC_get_current_task_btf,
            "get_current_task_btf",
            (5, 11),
        ),
        (s::BPF_FUNC_task_storage_get, "task_storage_get", (5, 11)),
        (
            s::BPF_FUNC_task_storage_delete,
            "task_storage_delete",
            (5, 11),
        ),
        (s::BPF_FUNC_task_pt_regs, "task_pt_regs", (5, 15)),
        (s::BPF_FUNC_loop, "loop", (5, 17)),
    ]
    .into_iter()
    .map(|(id, name, r)| (id, (name, r)))
    .collect()
}

fn map_type_release(t: libbpf_rs::MapType) -> Option<Release> {
    use libbpf_rs::MapType as M;
    Some(match t {
        M::Hash | M::Array => (3, 19),
        M::PerfEventArray => (4, 3),
        M::PercpuHash | M::PercpuArray | M::StackTrace => (4, 6),
        M::LruHash | M::LruPercpuHash => (4, 10),
        M::ArrayOfMaps | M::HashOfMaps => (4, 12),
        M::RingBuf => (5, 8),
        M::TaskStorage => (5, 11),
        _ => return None,
    })
}

/// Map flags -> release: BPF_F_NO_PREALLOC 4.6, BPF_F_NO_COMMON_LRU 4.10,
/// BPF_F_RDONLY_PROG 5.2 (libbpf sets it on .rodata), BPF_F_MMAPABLE 5.5,
/// BPF_F_INNER_MAP 5.10 (commit 4a8f87e60f6d).
fn flags_release(flags: u32) -> Result<Release, String> {
    use libbpf_sys as s;
    let table = [
        (s::BPF_F_NO_PREALLOC, (4, 6)),
        (s::BPF_F_NO_COMMON_LRU, (4, 10)),
        (s::BPF_F_RDONLY_PROG, (5, 2)),
        (s::BPF_F_MMAPABLE, (5, 5)),
        (s::BPF_F_INNER_MAP, (5, 10)),
    ];
    let mut need = (0, 0);
    let mut left = flags;
    for (f, r) in table {
        if flags & f != 0 {
            need = need.max(r);
            left &= !f;
        }
    }
    if left != 0 {
        return Err(format!("map flags {left:#x} are not in this test's table"));
    }
    Ok(need)
}

/// Everything one object uses, each with the release that introduced it.
fn requirements(obj: &[u8]) -> Vec<(String, Release)> {
    let mut out = Vec::new();
    let table = helpers();

    // Helper calls (BPF_JMP | BPF_CALL with src_reg 0) and kfunc calls
    // (src_reg 2) in every code section.
    let elf = object::File::parse(obj).expect("the BPF object is ELF");
    for sec in elf.sections() {
        let exec = matches!(sec.flags(), SectionFlags::Elf { sh_flags } if sh_flags & 0x4 != 0);
        if !exec {
            continue;
        }
        let data = sec.data().unwrap();
        let mut i = 0;
        while i + 8 <= data.len() {
            let code = data[i];
            let src = data[i + 1] >> 4;
            let imm = i32::from_le_bytes(data[i + 4..i + 8].try_into().unwrap());
            if code == 0x85 && src == 0 {
                match table.get(&(imm as u32)) {
                    Some((name, r)) => out.push((format!("helper bpf_{name}"), *r)),
                    None => panic!(
                        "section {} calls BPF helper #{imm}, which is not in this test's table: add it with the release that introduced it",
                        sec.name().unwrap_or("?")
                    ),
                }
            }
            if code == 0x85 && src == 2 {
                panic!("a kfunc call: ember's variants must not depend on kfuncs");
            }
            // A 64-bit immediate load takes two instruction slots.
            i += if code == 0x18 { 16 } else { 8 };
        }
    }

    let mut builder = libbpf_rs::ObjectBuilder::default();
    let open = builder.open_memory(obj).expect("libbpf opens the object");
    for m in open.maps() {
        let name = m.name().to_string_lossy().into_owned();
        let t = m.map_type();
        let r = map_type_release(t)
            .unwrap_or_else(|| panic!("map {name}: type {t:?} is not in this test's table"));
        out.push((format!("map type {t:?} ({name})"), r));
        let f = flags_release(m.map_flags()).unwrap_or_else(|e| panic!("map {name}: {e}"));
        if m.map_flags() != 0 {
            out.push((format!("map flags {:#x} ({name})", m.map_flags()), f));
        }
        // The inner map template of a map of maps.
        // SAFETY: reading libbpf's description of a map it owns.
        unsafe {
            let inner = libbpf_sys::bpf_map__inner_map(m.as_libbpf_object().as_ptr());
            if !inner.is_null() {
                let flags = libbpf_sys::bpf_map__map_flags(inner);
                let f = flags_release(flags).unwrap_or_else(|e| panic!("inner map of {name}: {e}"));
                out.push((format!("inner map flags {flags:#x} ({name})"), f));
            }
        }
    }
    let mut entries = Vec::new();
    for p in open.progs() {
        let name = p.name().to_string_lossy().into_owned();
        entries.push(name.clone());
        // SAFETY: as above.
        let attach =
            unsafe { libbpf_sys::bpf_program__expected_attach_type(p.as_libbpf_object().as_ptr()) };
        let r = match p.prog_type() {
            libbpf_rs::ProgramType::PerfEvent => (4, 9),
            // tp_btf: BPF_PROG_TYPE_TRACING with BPF_TRACE_RAW_TP.
            libbpf_rs::ProgramType::Tracing if attach == libbpf_sys::BPF_TRACE_RAW_TP => (5, 5),
            // iter/task: BPF_PROG_TYPE_TRACING with BPF_TRACE_ITER.
            libbpf_rs::ProgramType::Tracing if attach == libbpf_sys::BPF_TRACE_ITER => (5, 8),
            other => panic!(
                "program {name}: type {other:?} (attach {attach}) is not in this test's table"
            ),
        };
        out.push((format!("program {name} ({:?})", p.prog_type()), r));
    }

    // Global functions (other than the programs' entry points): 5.6
    // (commit 51c39bb1d5d1) with scalar or context arguments; other
    // pointers from 5.12 (commit e5069b9c23b3).
    // SAFETY: the object's BTF, owned by libbpf; types are read as the BTF
    // format lays them out (btf_type, then its btf_params).
    unsafe {
        let btf = libbpf_sys::bpf_object__btf(open.as_libbpf_object().as_ptr());
        assert!(!btf.is_null(), "the object has BTF");
        for id in 1..libbpf_sys::btf__type_cnt(btf) {
            let t = &*libbpf_sys::btf__type_by_id(btf, id);
            let kind = (t.info >> 24) & 0x1f;
            let linkage = t.info & 0xffff;
            if kind != libbpf_sys::BTF_KIND_FUNC || linkage != libbpf_sys::BTF_FUNC_GLOBAL {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(libbpf_sys::btf__name_by_offset(btf, t.name_off))
                .to_string_lossy()
                .into_owned();
            if entries.contains(&name) {
                continue;
            }
            let proto = &*libbpf_sys::btf__type_by_id(btf, t.__bindgen_anon_1.type_);
            let n = proto.info & 0xffff;
            let params =
                (proto as *const libbpf_sys::btf_type).add(1) as *const libbpf_sys::btf_param;
            let mut r = (5, 6);
            for k in 0..n as usize {
                let mut ty = (*params.add(k)).type_;
                // Through typedefs and qualifiers to the real type.
                loop {
                    let pt = &*libbpf_sys::btf__type_by_id(btf, ty);
                    let pk = (pt.info >> 24) & 0x1f;
                    if matches!(
                        pk,
                        libbpf_sys::BTF_KIND_TYPEDEF
                            | libbpf_sys::BTF_KIND_CONST
                            | libbpf_sys::BTF_KIND_VOLATILE
                            | libbpf_sys::BTF_KIND_RESTRICT
                    ) {
                        ty = pt.__bindgen_anon_1.type_;
                        continue;
                    }
                    if pk == libbpf_sys::BTF_KIND_PTR {
                        r = (5, 12);
                    }
                    break;
                }
            }
            out.push((format!("global function {name}"), r));
        }
    }
    out
}

fn check(obj: &[u8], variant: &str, minimum: Release) -> Release {
    let reqs = requirements(obj);
    assert!(
        reqs.iter().any(|(what, _)| what.starts_with("helper")),
        "no helper calls found in the {variant} object: the scan is broken"
    );
    let mut newest: BTreeMap<Release, Vec<String>> = BTreeMap::new();
    for (what, r) in &reqs {
        newest.entry(*r).or_default().push(what.clone());
    }
    println!(
        "{variant} variant (stated minimum Linux {}):",
        show(minimum)
    );
    for (r, whats) in newest.iter().rev() {
        let mut whats = whats.clone();
        whats.sort();
        whats.dedup();
        println!("  {:>5}  {}", show(*r), whats.join(", "));
    }
    let (&top, whats) = newest.iter().next_back().unwrap();
    assert!(
        top <= minimum,
        "the {variant} variant needs Linux {} ({}) but states {}",
        show(top),
        whats.join(", "),
        show(minimum)
    );
    top
}

#[test]
fn each_variant_uses_nothing_newer_than_its_minimum() {
    let modern = check(MODERN, "modern", (5, 17));
    let compat = check(COMPAT, "compat", (5, 10));
    // Each minimum is what its build really needs, not a loose bound.
    assert_eq!(modern, (5, 17), "the modern variant's minimum is stale");
    assert_eq!(compat, (5, 10), "the compat variant's minimum is stale");

    // The README and the probe's error state the compat minimum.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let claim = format!("Linux {} or newer", show(compat));
    assert!(
        readme.contains(&claim),
        "README.md does not say \"{claim}\""
    );
    for stale in ["Linux 5.8 or newer", "Linux 5.5 or newer"] {
        assert!(!readme.contains(stale), "README.md still says \"{stale}\"");
    }
    let probe =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/sample/probe.rs"))
            .unwrap();
    assert!(
        probe.contains(&claim),
        "the probe's error does not say \"{claim}\""
    );
}

#[test]
fn the_compat_object_has_no_modern_only_helper() {
    let reqs = requirements(COMPAT);
    for banned in [
        "helper bpf_loop",
        "helper bpf_task_pt_regs",
        "helper bpf_get_current_task_btf",
    ] {
        assert!(
            !reqs.iter().any(|(w, _)| w == banned),
            "the compat object calls {banned}"
        );
    }
    // And the modern one does use them (the scan sees what is there).
    let reqs = requirements(MODERN);
    assert!(reqs.iter().any(|(w, _)| w == "helper bpf_loop"));
}
