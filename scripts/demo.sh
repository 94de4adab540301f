#!/usr/bin/env bash
# The main job on the embedded default guest, in short lines: cold boot to
# the ready point, a template, 100 clones against the KVM floor measured in
# the same run, a function served over HTTP with a fresh clone per request,
# a WebAssembly function (C, compiled by clang) deployed to that server and
# invoked, and cleanup. Usage: scripts/demo.sh [--json]   (--json: the raw
# reports)
set -euo pipefail
cd "$(dirname "$0")/.."
raw=0
case "${1:-}" in
    --json) raw=1 ;;
    "") ;;
    *) echo "usage: scripts/demo.sh [--json]" >&2; exit 2 ;;
esac
command -v curl >/dev/null && command -v clang >/dev/null || bash scripts/setup-host.sh
cargo build --release -q -p vmfork
vmfork=target/release/vmfork
work="$(mktemp -d "${TMPDIR:-/tmp}/vmfork-demo.XXXXXX")"
server=""
cleanup() {
    [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# Prints one field of the JSON object on the last line of $1 (a file).
field() { python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])[sys.argv[2]])' "$1" "$2"; }
# `report FILE FORMAT FIELDS...`: FORMAT filled with the fields, or the raw JSON.
report() {
    local file=$1 format=$2
    shift 2
    if [ "$raw" = 1 ]; then tail -n 1 "$file"; return; fi
    local values=()
    for f in "$@"; do values+=("$(field "$file" "$f")"); done
    # shellcheck disable=SC2059
    printf "$format\n" "${values[@]}"
}
ms() { python3 -c 'import sys; print(f"{float(sys.argv[1]) / 1000:.1f}")' "$1"; }

"$vmfork" --version
"$vmfork" boot --exit-on-ready --json --quiet >"$work/boot.json"
if [ "$raw" = 1 ]; then
    tail -n 1 "$work/boot.json"
else
    echo "cold boot:  embedded guest to its ready point in $(ms "$(field "$work/boot.json" ready_us)") ms (VMM RSS $(field "$work/boot.json" vmm_rss_kib) KiB)"
fi

"$vmfork" template build --out "$work/tpl" --json --quiet >"$work/tpl.json"
report "$work/tpl.json" "template:   saved at the ready point in %.0f ms: %s B of state, %s B of memory written" \
    build_ms state_bytes memory_written_bytes

"$vmfork" clone "$work/tpl" -n 100 --floor --json >"$work/clone.json"
report "$work/clone.json" "clones:     %s live clones, p50 %s us, p99 %s us; KVM floor %s us in the same run (p50 %.2fx the floor); %s KiB private memory per clone" \
    clones clone_p50_us clone_p99_us floor_us ratio_vs_floor private_kib_per_clone
# VM shells: the VMs and vCPUs made ahead, so a clone only maps and resumes.
"$vmfork" clone "$work/tpl" -n 100 --shells --floor --json >"$work/shells.json"
report "$work/shells.json" "            the same in VMs made ahead (--shells): p50 %s us, p99 %s us; floor %s us (p50 %.2fx the floor)" \
    clone_p50_us clone_p99_us floor_us ratio_vs_floor

"$vmfork" template build --function echo --out "$work/echo" --json --quiet >"$work/echo.json"
"$vmfork" serve --template echo="$work/echo" --listen 127.0.0.1:0 >"$work/serve.out" 2>"$work/serve.err" &
server=$!
# serve prints its address on its first line once it listens.
for _ in $(seq 1 500); do
    grep -q "http://" "$work/serve.out" 2>/dev/null && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
    sleep 0.01
done
addr=$(grep -o "http://[^ ]*" "$work/serve.out" | head -n 1)
answer=$(curl -sS --data-binary "hello from the demo" "$addr/v1/functions/echo/invoke")
times=()
for _ in $(seq 1 20); do
    times+=("$(curl -sS -o /dev/null -w '%{time_total}' --data-binary "hello" "$addr/v1/functions/echo/invoke")")
done
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])) * 1000:.2f}")' "$@"; }
echo "serve:      curl -d 'hello from the demo' $addr/v1/functions/echo/invoke -> $answer"
echo "            a fresh clone per request: median $(median "${times[@]}") ms over 20 requests, curl included"

# A user's own function: the README's C example, compiled to WASI and
# deployed to the running server (loopback needs no admin token).
cat >"$work/hello.c" <<'EOF'
#include <stdio.h>
int main(void) {
    char line[256];
    printf("Content-Type: text/plain\n\n");
    while (fgets(line, sizeof line, stdin)) printf("you said: %s", line);
    return 0;
}
EOF
clang --target=wasm32-wasi --sysroot=/usr -O2 -o "$work/hello.wasm" "$work/hello.c"
deployed=$(curl -sS -o "$work/deploy.json" -w '%{http_code} %{time_total}' -X PUT \
    --data-binary @"$work/hello.wasm" "$addr/v1/functions/hello?timeout=2s")
[ "${deployed%% *}" = 201 ] || { cat "$work/deploy.json" >&2; exit 1; }
answer=$(curl -sS --data-binary "hi" "$addr/v1/functions/hello/invoke")
times=()
for _ in $(seq 1 20); do
    times+=("$(curl -sS -o /dev/null -w '%{time_total}' --data-binary "hi" "$addr/v1/functions/hello/invoke")")
done
if [ "$raw" = 1 ]; then
    cat "$work/deploy.json"; echo
else
    deploy_ms=$(python3 -c 'import sys; print(f"{float(sys.argv[1]) * 1000:.0f}")' "${deployed#* }")
    echo "deploy:     curl -X PUT --data-binary @hello.wasm $addr/v1/functions/hello -> 201 in $deploy_ms ms (compiled, initialized, snapshotted)"
    echo "            curl -d hi $addr/v1/functions/hello/invoke -> $answer"
    echo "            a fresh clone per request: median $(median "${times[@]}") ms over 20 requests, curl included"
fi
kill "$server"
wait "$server" 2>/dev/null || true
server=""
echo "cleanup:    server stopped, $work removed"
