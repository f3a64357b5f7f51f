#!/usr/bin/env bash
# Build the example workloads: workloads/src/NAME.c -> workloads/NAME.wasm,
# each a wasm32-wasi reactor (exports _initialize, no _start).
#
#   workloads/build.sh               build every workload
#   workloads/build.sh counter trap  build only these
#   workloads/build.sh --check       build into a temporary directory and fail
#                                    if a committed .wasm differs from it
#
# Idempotent and deterministic: the same toolchain gives byte-identical
# modules, and a .wasm is only replaced when its bytes change. Installs the
# Debian 12 toolchain with apt-get when a piece of it is missing.
#
# Compiling and linking are separate steps on purpose: given an -O flag at
# link time, Debian's clang-14 driver runs `wasm-opt` when binaryen happens to
# be installed, which strips the `name` section and makes the output depend on
# what else is on the machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

CC=clang-14
PACKAGES=(clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32)
CFLAGS=(--target=wasm32-wasi -O2 -std=c11 -Wall -Wextra -Werror)
LDFLAGS=(--target=wasm32-wasi -mexec-model=reactor -Wl,--strip-debug)

ensure_toolchain() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return
    if ! command -v apt-get >/dev/null; then
        echo "build.sh: missing ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
    local sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    echo "build.sh: installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >&2
}

check=0
names=()
for arg in "$@"; do
    case "$arg" in
        --check) check=1 ;;
        -h|--help) sed -n '2,17p' "$here/build.sh"; exit 0 ;;
        -*) echo "build.sh: unknown option $arg" >&2; exit 2 ;;
        *) names+=("$arg") ;;
    esac
done
if ((${#names[@]} == 0)); then
    for src in src/*.c; do names+=("$(basename "$src" .c)"); done
fi

ensure_toolchain

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

status=0
for name in "${names[@]}"; do
    src="src/$name.c"
    [[ -f $src ]] || { echo "build.sh: no such workload: $name ($src)" >&2; exit 2; }
    "$CC" "${CFLAGS[@]}" -c "$src" -o "$tmp/$name.o"
    "$CC" "${LDFLAGS[@]}" "$tmp/$name.o" -o "$tmp/$name.wasm"
    if ((check)); then
        if cmp -s "$tmp/$name.wasm" "$name.wasm"; then
            echo "ok       $name.wasm"
        else
            echo "DIFFERS  $name.wasm (run workloads/build.sh and commit)"
            status=1
        fi
    elif cmp -s "$tmp/$name.wasm" "$name.wasm"; then
        echo "same     $name.wasm"
    else
        mv "$tmp/$name.wasm" "$name.wasm"
        echo "built    $name.wasm ($(wc -c <"$name.wasm") bytes)"
    fi
done
exit $status
