#!/usr/bin/env bash
# Soak test: serve traffic (good, timeouts, oversize, crashes) beside
# abusive clients (FIN floods, slowloris, oversize Content-Length and
# chunked bodies, many idle connections), clone churn on every backend,
# through a template holder and in cgroups of their own, uffd page servers
# and the holder killed at random moments, template builds into a full
# tmpfs; then judges the good requests' success rate (>= 99 %), serve's
# live clones against --max-concurrency, serve's RSS and thread growth
# against a warm-up baseline, and leaks (processes, mounts, cgroups, fds),
# and that no wrong template was accepted (scripts/soak.py says how).
# Needs root (tmpfs mounts, cgroups) and /dev/kvm. Usage:
#   scripts/soak.sh [--minutes M] [--seed S] [--vmfork-flag=--no-seccomp]
# (default 10 minutes; the printed seed gives the same mix of choices again,
# though thread timing makes no two runs identical).
# Exit status 0 only if every judgement holds. Last line of output: JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vmfork
exec python3 scripts/soak.py --vmfork "${VMFORK_BIN:-target/release/vmfork}" "$@"
