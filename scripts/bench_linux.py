#!/usr/bin/env python3
"""Linux guest benchmark: cold boot to the agent's ready point against
clones of a template taken there, side by side in one run, plus the
private memory per idle clone and N clones alive at once.

Needs hardware virtualization (the SVM rig on our PVM hosts):
    bash scripts/test-svm.sh --cmd 'python3 scripts/bench_linux.py'
Figures taken in the rig are rig figures: compare the ratios, not the
absolute times.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def artifact(tool, kind, key):
    out = subprocess.run([tool, kind, "-q"], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        k, _, v = line.partition("=")
        if k == key:
            return v
    sys.exit(f"bench_linux: {tool} {kind} printed no {key}=")


def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench_linux: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmfork", default="target/release/vmfork")
    ap.add_argument("--boots", type=int, default=3, help="cold boots to take the median of")
    ap.add_argument("--clones", type=int, default=100, help="clones alive at once")
    ap.add_argument("--mem", default="256M")
    args = ap.parse_args()
    tool = os.path.join(os.path.dirname(args.vmfork), "vmfork-guest-artifacts")
    kernel = artifact(tool, "linux", "vmlinux")
    rootfs = artifact(tool, "rootfs", "rootfs")
    vm = ["--kernel", kernel, "--rootfs", rootfs, "--mem", args.mem, "--timeout", "300"]
    work = tempfile.mkdtemp(prefix="vmfork-bench-linux.")
    try:
        boots = []
        for _ in range(args.boots):
            j = run_json([args.vmfork, "boot", *vm, "--exit-on-ready", "--json"])
            boots.append(j["ready_us"])
        tpl = os.path.join(work, "tpl")
        built = run_json([args.vmfork, "template", "build", *vm, "--out", tpl, "--json"])
        clones = run_json([args.vmfork, "clone", tpl, "-n", str(args.clones), "--json"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    boot = statistics.median(boots)
    clone = clones["clone_p50_us"]
    print(f"linux cold boot to ready: median {boot / 1e3:.1f} ms of {args.boots} ({', '.join(f'{b / 1e3:.0f}' for b in boots)} ms)")
    print(f"linux template build: {built['build_ms']:.0f} ms, {built['memory_written_bytes'] >> 20} MiB written")
    print(f"linux clone to ready: p50 {clone} us, p99 {clones['clone_p99_us']} us over {clones['clones']} clones alive at once ({clones['backend']})")
    print(f"ratio clone p50 / cold boot median: {clone / boot:.4f}")
    print(f"private memory per idle clone: {clones['private_kib_per_clone']} KiB; host memory per clone: {clones['host_kib_per_clone']} KiB")


if __name__ == "__main__":
    main()
