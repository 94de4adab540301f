#!/usr/bin/env bash
# Template benchmark: build time, sizes, restore latency p50/p99 against the
# KVM floor and a cold boot (same run), diff snapshots vs pages dirtied.
# Usage: scripts/bench-snapshot.sh [RESTORES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vmfork
python3 scripts/bench_snapshot.py --vmfork target/release/vmfork --restores "${1:-100}"
