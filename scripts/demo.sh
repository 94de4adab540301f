#!/usr/bin/env bash
# The main job on the embedded default guest: cold boot to READY, build a
# template at the ready point, and restore it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p vmfork
vmfork=target/release/vmfork
demo_dir="$(mktemp -d)"
trap 'rm -rf "$demo_dir"' EXIT

echo "== cold boot of the embedded guest to its ready point"
"$vmfork" boot --exit-on-ready --json
echo
echo "== template build"
"$vmfork" template build --out "$demo_dir/tpl" --json
echo
echo "== restore (the guest continues from the snapshot and acknowledges)"
"$vmfork" restore "$demo_dir/tpl" --exit-on-ready --json
