#!/usr/bin/env bash
# The project's test command (README, CI): installs what the tests need,
# builds the cached Linux guest, then runs every unit and integration test.
# The integration tests boot real VMs on /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build-linux-guest.sh
cargo build --release --workspace --all-targets
cargo test --release --workspace --no-fail-fast -- --test-threads=2
