#!/usr/bin/env bash
# Runs one fuzz target under AFL++ (cargo afl; docs/fuzzing.md) and keeps
# what it found as regression inputs.
#
#   bash scripts/fuzz-afl.sh TARGET [--minutes N] [--resume] [--no-build]
#
# TARGET is state, manifest, mailbox or http (mailbox and http need
# /dev/kvm). The binaries are the fuzz examples built by fuzz-afl/ with
# AFL++ instrumentation, in ~/.cache/vmfork/afl-target (cargo's
# fingerprints decide what to rebuild). AFL++ starts from the target's
# corpus directory and its dictionary and writes to
# ~/.cache/vmfork/afl-out/TARGET (removed first unless --resume). At the
# end every crash and hang is run once more as a fuzz run runs it and saved
# into the corpus directory as any__<kind>-<hash>.<ext>, where
# `cargo test` replays it; the figures for docs/fuzzing.md are printed last.
set -euo pipefail

usage() {
    echo "usage: $0 state|manifest|mailbox|http [--minutes N] [--resume] [--no-build]" >&2
    exit 2
}

root="$(cd "$(dirname "$0")/.." && pwd)"
target="${1:-}"
shift || usage
minutes=10
resume=0
build=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --minutes) minutes="${2:?--minutes needs a value}"; shift 2 ;;
        --resume) resume=1; shift ;;
        # Runs the binary of the last build (e.g. while another build holds
        # cargo's lock on the target directory).
        --no-build) build=0; shift ;;
        *) usage ;;
    esac
done
[[ "$minutes" =~ ^[0-9]+$ && "$minutes" -gt 0 ]] || usage

# package, binary, corpus directory, file extension, AFL++ timeout (ms).
# The timeouts sit well above each target's own slow-input limit (1 s, and
# 20 s for HTTP) on a loaded host, so a slow input is the target's finding
# and AFL++'s hang is a real stall; the first input in each forked child
# also builds the target (a KVM VM for the guest channel, four cold-booted
# templates and a server for HTTP).
case "$target" in
    state) pkg=vmfork-afl-state bin=fuzz_state corpus=snapshot/fuzz/corpus ext=bin tmout=5000 ;;
    manifest) pkg=vmfork-afl-manifest bin=fuzz_manifest corpus=template/fuzz/corpus/manifest ext=json tmout=5000 ;;
    mailbox) pkg=vmfork-afl-serve bin=fuzz_mailbox corpus=serve/fuzz/corpus/mailbox ext=bin tmout=10000 ;;
    http) pkg=vmfork-afl-serve bin=fuzz_http corpus=serve/fuzz/corpus/http ext=http tmout=60000 ;;
    *) usage ;;
esac

cache="$HOME/.cache/vmfork"
target_dir="$cache/afl-target"
out="$cache/afl-out/$target"
seeds="$cache/afl-in/$target"
dict="$cache/afl-dict/$target.dict"
exe="$target_dir/release/$bin"

if [[ $build -eq 1 ]]; then
    echo "fuzz-afl: building $bin" >&2
    (cd "$root/fuzz-afl" && cargo afl build --release --target-dir "$target_dir" -p "$pkg" --bin "$bin")
fi
[[ -x "$exe" ]] || { echo "fuzz-afl: $exe is not built" >&2; exit 1; }

# AFL++'s input directory: the corpus files of this target (afl-fuzz takes
# any file it finds, and the state corpus shares its directory with
# nothing else today, but that is not promised), non-empty and under its
# 1 MiB input limit.
rm -rf "$seeds"
mkdir -p "$seeds" "$(dirname "$dict")"
find "$root/$corpus" -maxdepth 1 -type f -name "*.$ext" -size +0 -size -1024k \
    -exec cp -t "$seeds" {} +
echo "fuzz-afl: $(find "$seeds" -type f | wc -l) seeds from $corpus" >&2
"$exe" --write-dict "$dict" >&2

# The host is not tuned for AFL++ (CPU frequency scaling on, core dumps
# piped to a handler) and is shared: no CPU pinning, no UI (not a
# terminal), with room for a slow start before the fork server is up.
export AFL_SKIP_CPUFREQ=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1
export AFL_NO_UI=1
export AFL_FORKSRV_INIT_TMOUT=180000
export VMFORK_AFL_HEALTH_LOG="$out/health.log"
if [[ $resume -eq 1 && -d "$out/default" ]]; then
    export AFL_AUTORESUME=1
else
    rm -rf "$out"
fi
mkdir -p "$out"
# AFL++ kills its last child at the end, and every child that times out,
# so the targets' scratch directories are never removed by their owners:
# the HTTP templates go under $out/tmp (TMPDIR), removed below, and the
# manifest's directories in /dev/shm made during this run are removed
# once their process is gone.
scratch="$out/tmp"
mkdir -p "$scratch"
touch "$out/.started"
cleanup_scratch() {
    rm -rf "$scratch"
    local d pid
    for d in $(find /dev/shm -maxdepth 1 -name 'vmfork-fuzz-manifest-*' -newer "$out/.started" 2>/dev/null); do
        pid="${d##*-}"
        kill -0 "$pid" 2>/dev/null || rm -rf "$d"
    done
}
trap cleanup_scratch EXIT

# The state decoder offers no dictionary (its repair step does the work).
dict_args=()
if [[ -s "$dict" ]]; then
    dict_args=(-x "$dict")
fi
seconds=$((minutes * 60))
echo "fuzz-afl: $bin for $minutes min, output in $out" >&2
TMPDIR="$scratch" cargo afl fuzz -i "$seeds" -o "$out" "${dict_args[@]}" -t "$tmout" -m none -V "$seconds" -- "$exe" \
    >"$out/afl-fuzz.log" 2>&1 || {
    echo "fuzz-afl: afl-fuzz failed; the end of $out/afl-fuzz.log:" >&2
    tail -n 30 "$out/afl-fuzz.log" >&2
    exit 1
}

# Crashes and hangs, run once more and saved into the corpus.
findings=()
for kind in crash hang; do
    case $kind in
        crash) dir="$out/default/crashes" ;;
        hang) dir="$out/default/hangs" ;;
    esac
    [[ -d "$dir" ]] || continue
    files=()
    while IFS= read -r -d '' f; do
        files+=("$f")
    done < <(find "$dir" -type f -name 'id:*' -print0 | sort -z)
    if [[ ${#files[@]} -gt 0 ]]; then
        "$exe" --triage "$root/$corpus" "$kind" "${files[@]}"
        findings+=("${files[@]}")
    fi
done

stat() {
    sed -n "s/^$1 *: *//p" "$out/default/fuzzer_stats"
}
echo "fuzz-afl: $bin, $(date -u +%F), $minutes min"
echo "  command:      bash scripts/fuzz-afl.sh $target --minutes $minutes"
echo "  run time:     $(stat run_time) s"
echo "  executions:   $(stat execs_done)"
echo "  exec/s:       $(stat execs_per_sec)"
echo "  corpus:       $(stat corpus_count) (paths found: $(stat corpus_found))"
echo "  edges found:  $(stat edges_found) ($(stat bitmap_cvg))"
echo "  stability:    $(stat stability)"
echo "  crashes:      $(stat saved_crashes)"
echo "  hangs:        $(stat saved_hangs)"
if [[ -s "$out/health.log" ]]; then
    echo "  health:       $(wc -l <"$out/health.log") failed checks, see $out/health.log"
fi
queue=()
while IFS= read -r -d '' f; do
    queue+=("$f")
done < <(find "$out/default/queue" -maxdepth 1 -type f -name 'id:*' -print0 | sort -z)
if [[ ${#queue[@]} -gt 0 ]]; then
    echo "  outcome classes of the queue:"
    "$exe" --classes "${queue[@]}" 2>/dev/null | grep -v "all 2^32" || true
fi
if [[ ${#findings[@]} -gt 0 ]]; then
    echo "  saved into $corpus; run its replay test (docs/fuzzing.md) before committing"
fi
