#!/usr/bin/env bash
# Cold boot benchmark: vmfork vs QEMU microvm on the same guest ELF, plus the
# KVM floor, interleaved in one run. Usage: scripts/bench-boot.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
command -v qemu-system-x86_64 >/dev/null || bash scripts/setup-host.sh
cargo build --release -q -p vmfork
python3 scripts/bench_boot.py --vmfork target/release/vmfork --rounds "$rounds"
