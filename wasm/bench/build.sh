#!/usr/bin/env bash
# Builds the CPU-bound benchmark module: wasm/bench/build.sh OUT.wasm
# Needs Debian's clang, lld and wasi-libc:
#   apt-get install -y clang lld wasi-libc libclang-rt-14-dev-wasm32
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUT.wasm" >&2; exit 2; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
clang --target=wasm32-wasi --sysroot=/usr -O2 -o "$1" "$here/sha256.c"
