#!/usr/bin/env python3
"""Linux guest benchmark: cold boot to the agent's ready point against
clones of a template taken there, side by side in one run, plus the
private memory per idle clone and N clones alive at once.

Needs hardware virtualization (the SVM rig on our PVM hosts):
    bash scripts/test-svm.sh --cmd 'python3 scripts/bench_linux.py'
    bash scripts/test-svm.sh --cmd 'python3 scripts/bench_linux.py --distro --vcpus 2 --mem 512M --clones 20'
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
    last = p.stdout.strip().splitlines()[-1:] or [""]
    try:
        return json.loads(last[0])
    except json.JSONDecodeError:
        sys.exit(f"bench_linux: {' '.join(cmd)} did not end with a JSON line: {last[0][:200]!r}")


DISTRO_CMDLINE = "console=ttyS0 panic=-1 root=/dev/pmem0 rootfstype=ext4 ro rootflags=dax init=/init"


def distro_kernel():
    """Debian's kernel and initrd from scripts/distro-kernel.sh (cached by it)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distro-kernel.sh")
    d = subprocess.run(["bash", script], check=True, capture_output=True, text=True).stdout.strip()
    return os.path.join(d, "vmlinuz"), os.path.join(d, "initrd.img")


def measure(vmfork, vm, boots, n, work, name):
    """Cold boots to ready, one template, n clones alive at once."""
    times = []
    for _ in range(boots):
        j = run_json([vmfork, "boot", *vm, "--exit-on-ready", "--json"])
        times.append(j["ready_us"])
    tpl = os.path.join(work, name)
    built = run_json([vmfork, "template", "build", *vm, "--out", tpl, "--json"])
    clones = run_json([vmfork, "clone", tpl, "-n", str(n), "--json"])
    shutil.rmtree(tpl, ignore_errors=True)
    return times, built, clones


def report(name, boots, built, clones):
    boot = statistics.median(boots)
    clone = clones["clone_p50_us"]
    print(f"{name}: cold boot to ready: median {boot / 1e3:.1f} ms of {len(boots)} ({', '.join(f'{b / 1e3:.0f}' for b in boots)} ms)")
    print(f"{name}: template build: {built['build_ms']:.0f} ms, {built['memory_written_bytes'] >> 20} MiB written")
    print(f"{name}: clone to ready: p50 {clone} us, p99 {clones['clone_p99_us']} us over {clones['clones']} clones alive at once ({clones['backend']})")
    print(f"{name}: ratio clone p50 / cold boot median: {clone / boot:.4f}")
    print(f"{name}: private memory per idle clone: {clones['private_kib_per_clone']} KiB; host memory per clone: {clones['host_kib_per_clone']} KiB")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmfork", default="target/release/vmfork")
    ap.add_argument("--boots", type=int, default=3, help="cold boots to take the median of")
    ap.add_argument("--clones", type=int, default=100, help="clones alive at once")
    ap.add_argument("--mem", default="256M")
    ap.add_argument("--vcpus", default="1")
    ap.add_argument("--distro", action="store_true",
                    help="also Debian's kernel with its initrd (scripts/distro-kernel.sh), "
                         "same memory and vCPUs, measured after ours in the same run")
    args = ap.parse_args()
    tool = os.path.join(os.path.dirname(args.vmfork), "vmfork-guest-artifacts")
    kernel = artifact(tool, "linux", "vmlinux")
    rootfs = artifact(tool, "rootfs", "rootfs")
    common = ["--rootfs", rootfs, "--mem", args.mem, "--vcpus", args.vcpus, "--timeout", "400"]
    guests = [("ours", ["--kernel", kernel, *common])]
    if args.distro:
        vmlinuz, initrd = distro_kernel()
        guests.append(("debian", ["--kernel", vmlinuz, "--initrd", initrd, "--cmdline", DISTRO_CMDLINE, *common]))
    work = tempfile.mkdtemp(prefix="vmfork-bench-linux.")
    try:
        results = [(name, *measure(args.vmfork, vm, args.boots, args.clones, work, name)) for name, vm in guests]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for r in results:
        report(*r)


if __name__ == "__main__":
    main()
