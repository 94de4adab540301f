#!/usr/bin/env python3
"""A/B of two vmfork binaries: runs bench_clone.py and bench_faas.py on the
old and the new binary in turn (old, new, old, new, ...), PAIRS times, and
prints for each headline figure the median over the old runs, over the new
runs, and the median of the pairwise new/old ratios (pairing cancels the
host's drift). Progress goes to stderr, one line per run.

Usage: scripts/bench_ab.py --old OLD --new NEW [--pairs 5] [--clones 1000]
                           [--seconds 5] [--only clone|faas]"""
import argparse, json, os, statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
CLONE_KEYS = ("clone_p50_us", "shells_clone_p50_us", "total_ms", "shells_total_ms",
              "private_kib_per_clone", "per_process_p50_us", "coldboot_us", "floor_us")
FAAS_KEYS = ("p50_ms", "p99_ms", "rps", "warm_p50_ms", "sha256_p50_ms", "cold_p50_ms")


def run(bench, binary, args):
    cmd = [sys.executable, os.path.join(HERE, bench), "--vmfork", binary] + args
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench-ab: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-500:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--clones", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--only", choices=("clone", "faas"))
    a = ap.parse_args()
    benches = []
    if a.only in (None, "clone"):
        benches.append(("clone", "bench_clone.py", ["--clones", str(a.clones)], CLONE_KEYS))
    if a.only in (None, "faas"):
        benches.append(("faas", "bench_faas.py", ["--seconds", str(a.seconds)], FAAS_KEYS))
    results = {(name, side): [] for name, *_ in benches for side in ("old", "new")}
    started = time.monotonic()
    for pair in range(1, a.pairs + 1):
        for name, script, args, _ in benches:
            for side, binary in (("old", a.old), ("new", a.new)):
                results[(name, side)].append(run(script, binary, args))
                print(f"bench-ab: pair {pair}/{a.pairs} {name} {side} done "
                      f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    print(f"{a.pairs} alternating pairs; old = {a.old}, new = {a.new}")
    print(f"{'bench':6} {'figure':22} {'old median':>11} {'new median':>11} {'new/old (paired median)':>24}")
    summary = {}
    for name, _, _, keys in benches:
        for key in keys:
            old = [r[key] for r in results[(name, "old")]]
            new = [r[key] for r in results[(name, "new")]]
            ratio = statistics.median(n / o for n, o in zip(new, old) if o)
            summary[f"{name}.{key}"] = ratio
            print(f"{name:6} {key:22} {statistics.median(old):>11.1f} {statistics.median(new):>11.1f} {ratio:>24.3f}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
