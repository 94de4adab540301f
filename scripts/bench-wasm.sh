#!/usr/bin/env bash
# Wasm functions benchmark: vmfork serve with a Wasm echo module (a fresh
# clone per request) vs the embedded guest's built-in echo vs the same
# module in plain Wasmtime on the host (bench/wasm-peer), and a sha256
# module on vmfork vs on the peer, under wrk on loopback, in one run.
# Usage: scripts/bench-wasm.sh [SECONDS] [--peer-only]
# (--peer-only: the host peer alone, no vmfork rows and no ratios.)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null && command -v clang >/dev/null || bash scripts/setup-host.sh
seconds=${1:-5}
shift $(( $# > 0 ? 1 : 0 ))
# The peer is its own cargo project (outside the workspace), built into a
# target directory outside the checkout.
peer_target="${XDG_CACHE_HOME:-$HOME/.cache}/vmfork/bench-target"
cargo build --release -q -p vmfork
cargo build --release -q --manifest-path bench/wasm-peer/Cargo.toml --target-dir "$peer_target"
python3 scripts/bench_wasm.py --vmfork target/release/vmfork --peer "$peer_target/release/wasm-peer" \
    --seconds "$seconds" "$@"
