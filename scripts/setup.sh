#!/bin/sh
# Installs what building and testing ember needs on Debian/Ubuntu, and only
# what is missing: clang and libelf/zlib headers for the BPF build, Go's
# pprof as an independent decoder for tests, Node for the JIT test, and perf
# and bpftrace (and inferno's CLIs) for the benchmark, binutils (objcopy,
# strip) and a debuginfod server for the debug-file tests, py-spy for the
# Python tests, tmux and headless Chromium for the live-view tests (ember
# top's keys, the agent's page), QEMU, static busybox and cpio for the
# kernel matrix (scripts/kernel-matrix). Safe to run again.
set -eu

need=""
have_cmd() { command -v "$1" >/dev/null 2>&1; }
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "ok installed"; }

have_cmd clang || need="$need clang"
have_cmd pkg-config || need="$need pkg-config"
have_pkg libelf-dev || need="$need libelf-dev"
have_pkg zlib1g-dev || need="$need zlib1g-dev"
have_cmd go || need="$need golang-go"
have_cmd node || need="$need nodejs"
have_cmd perf || need="$need linux-perf"
have_cmd bpftrace || need="$need bpftrace"
have_cmd setpriv || need="$need util-linux"
have_cmd objcopy || need="$need binutils"
have_cmd debuginfod || need="$need debuginfod"
have_cmd xz || need="$need xz-utils"
have_cmd systemd-analyze || need="$need systemd"
have_cmd tmux || need="$need tmux"
have_cmd chromium || need="$need chromium"
have_cmd qemu-system-x86_64 || need="$need qemu-system-x86"
have_pkg busybox-static || need="$need busybox-static"
have_cmd cpio || need="$need cpio"

if [ -n "$need" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "ember setup: missing packages:$need; run this script as root (or: apt-get install -y$need)" >&2
        exit 1
    fi
    echo "ember setup: installing$need" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $need >/dev/null
fi

# The deploy tests parse the DaemonSet with PyYAML.
if ! python3 -c "import yaml" 2>/dev/null; then
    python3 -m pip install -q pyyaml >/dev/null 2>&1 || {
        echo "ember setup: cannot install PyYAML; run: python3 -m pip install pyyaml" >&2
        exit 1
    }
fi

# The Python tests compare ember's Python frames with py-spy's.
if ! have_cmd py-spy; then
    python3 -m pip install -q py-spy >/dev/null 2>&1 ||
        python3 -m pip install -q --break-system-packages py-spy >/dev/null 2>&1 || {
        echo "ember setup: cannot install py-spy; run: python3 -m pip install py-spy" >&2
        exit 1
    }
fi

if ! have_cmd cargo; then
    echo "ember setup: cargo is missing; install Rust (https://rustup.rs) and run this again" >&2
    exit 1
fi

# The benchmark compares ember's userspace path with perf script piped
# through inferno's CLIs; they are built once into target/tools.
tools="$(dirname "$0")/../target/tools"
if ! have_cmd inferno-flamegraph && [ ! -x "$tools/bin/inferno-flamegraph" ]; then
    echo "ember setup: building inferno's CLIs for the benchmark (once, into target/tools)" >&2
    cargo install inferno --version 0.12.8 --locked --quiet --root "$tools" || {
        echo "ember setup: cannot build inferno's CLIs; benches/run will try again" >&2
    }
fi
