#!/usr/bin/env bash
# Lazy paging: MISSING faults + UFFDIO_COPY vs MINOR faults + UFFDIO_CONTINUE
# over the sealed memfd, with plain MAP_PRIVATE faults as the baseline
# (clone/examples/uffd_modes.rs). Usage: scripts/bench-uffd-modes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vmfork-clone --example uffd_modes
target/release/examples/uffd_modes
