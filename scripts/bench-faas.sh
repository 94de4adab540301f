#!/usr/bin/env bash
# FaaS benchmark: vmfork serve under wrk on loopback (a fresh clone per
# request in recycled VMs, reset in place or remapped, vs a new VM per
# request, vs --warm; echo and sha256 of 4 KiB; concurrency 1/8/64) and a
# cold boot per request in the same run. Usage: scripts/bench-faas.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || bash scripts/setup-host.sh
cargo build --release -q -p vmfork
python3 scripts/bench_faas.py --vmfork target/release/vmfork --seconds "${1:-5}"
