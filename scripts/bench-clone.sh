#!/usr/bin/env bash
# VMFork clone benchmark: file vs memfd, with and without VM shells, N
# concurrent clones each; one process per clone; the KVM floor and a cold
# boot of the same guest, in one run. Usage: scripts/bench-clone.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vmfork
python3 scripts/bench_clone.py --vmfork target/release/vmfork --clones "${1:-1000}"
