#!/usr/bin/env bash
# Soak test: serve traffic (good, timeouts, oversize, crashes), clone churn
# on every backend and through a template holder, uffd page servers and
# the holder killed at random moments, template builds into a full tmpfs;
# then checks that nothing leaked and no wrong template was accepted.
# Needs root (tmpfs mounts) and /dev/kvm. Usage:
#   scripts/soak.sh [--minutes M] [--seed S] [--vmfork-flag=--no-seccomp]
# (default 10 minutes; the printed seed gives the same mix of choices again,
# though thread timing makes no two runs identical).
# Exit status 0 only if nothing leaked, no unexpected error occurred and no
# wrong template was accepted. Last line of output: JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vmfork
exec python3 scripts/soak.py --vmfork "${VMFORK_BIN:-target/release/vmfork}" "$@"
