//! Compiles the BPF sampler (bpf/) with clang and generates its libbpf-rs
//! skeleton. Fails with one sentence naming the missing package, because
//! libbpf-cargo's own message about a missing clang is easy to misread.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const SRC: &str = "bpf/profiler.bpf.c";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    if Command::new(&clang).arg("--version").output().is_err() {
        panic!(
            "\n\nember needs clang to compile its BPF program: run `apt-get install -y clang libelf-dev zlib1g-dev pkg-config` (or ./scripts/setup.sh) and build again.\n\n"
        );
    }
    if Command::new("pkg-config")
        .args(["--exists", "libelf"])
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        panic!(
            "\n\nember needs libelf and pkg-config to build libbpf: run `apt-get install -y clang libelf-dev zlib1g-dev pkg-config` (or ./scripts/setup.sh) and build again.\n\n"
        );
    }
    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok(other) => panic!("ember's BPF program has not been ported to {other} yet"),
        Err(_) => "x86",
    };
    // Two builds of one source: the sampler for Linux 5.17 and newer, and
    // the compat variant for 5.10-5.16 (see the top of bpf/profiler.bpf.c).
    // The objects stay in OUT_DIR, where tests/bpf_features.rs reads them.
    for (name, extra) in [
        ("profiler", None),
        ("profiler_compat", Some("-DEMBER_COMPAT")),
    ] {
        let mut args = vec![
            format!("-D__TARGET_ARCH_{arch}"),
            "-Ibpf".to_string(),
            "-O2".to_string(),
            "-g".to_string(),
        ];
        args.extend(extra.map(str::to_string));
        libbpf_cargo::SkeletonBuilder::new()
            .source(SRC)
            .obj(out.join(format!("{name}.bpf.o")))
            .clang(&clang)
            .clang_args(args)
            .build_and_generate(out.join(format!("{name}.skel.rs")))
            .unwrap_or_else(|e| {
                panic!("compiling bpf/profiler.bpf.c ({name}) failed (see clang's messages above): {e:#}")
            });
    }
    println!("cargo:rerun-if-changed=bpf/");
}
