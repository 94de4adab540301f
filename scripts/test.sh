#!/usr/bin/env bash
# The project's test command (README, CI): installs what the tests need,
# builds the cached Linux guest, then runs every unit and integration test.
# The integration tests boot real VMs on /dev/kvm. Then the tests that need
# hardware virtualization (Linux guests, and a subset covering every other
# capability) run again inside the SVM rig (scripts/test-svm.sh;
# VMFORK_SKIP_SVM=1 skips it and says so).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-host.sh
bash scripts/build-linux-guest.sh
cargo build --release --workspace --all-targets
cargo test --release --workspace --no-fail-fast -- --test-threads=2
bash scripts/test-svm.sh
