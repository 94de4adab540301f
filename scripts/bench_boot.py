#!/usr/bin/env python3
"""Cold boot to READY: vmfork vs QEMU microvm vs the KVM floor, interleaved.

Both VMMs boot the same guest ELF (vmfork's embedded guest, exported), and
both are timed the same way from outside: from spawning the process to the
moment "vmfork-guest: READY" appears on the guest's serial console. vmfork's
own ready_us (process start to the guest's READY port write) is reported
too. The floor is `vmfork floor`: a fresh VM + vCPU run to its first HLT.
"""
import argparse, json, os, statistics, subprocess, sys, time

from bench_progress import Progress

READY = b"vmfork-guest: READY"

def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0

def time_to_ready(cmd, timeout=60.0, read_to_end=False):
    """Spawn cmd, return (seconds until READY on stdout, rss_kib at READY, all stdout).

    With read_to_end the process is left to exit by itself (vmfork
    --exit-on-ready prints its JSON report after READY); otherwise it is
    killed once READY has been seen."""
    start = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    out = b""
    ready_at, rss = None, 0
    fd = p.stdout.fileno()
    os.set_blocking(fd, True)
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
        if ready_at is None and READY in out:
            ready_at = time.perf_counter() - start
            rss = rss_kib(p.pid)
            if not read_to_end:
                break
        if time.perf_counter() - start > timeout:
            break
    if p.poll() is None:
        p.kill()
    rest, _ = p.communicate()
    out += rest or b""
    if ready_at is None:
        sys.exit(f"bench-boot: {' '.join(cmd[:2])} never printed READY:\n{out.decode(errors='replace')[-2000:]}")
    return ready_at, rss, out

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmfork", required=True)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--mem", default="128M")
    args = ap.parse_args()

    guest = "/tmp/vmfork-bench-guest.elf"
    subprocess.run([args.vmfork, "export-guest", guest], check=True)

    def commands(cmdline):
        vmfork_cmd = [args.vmfork, "boot", "--mem", args.mem, "--exit-on-ready", "--json", "--cmdline", cmdline]
        qemu_cmd = [args.qemu, "-M", "microvm,x-option-roms=off,rtc=off,acpi=off,pit=on,pic=on,isa-serial=on",
                    "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", args.mem, "-smp", "1",
                    "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                    "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", guest, "-append", cmdline]
        return vmfork_cmd, qemu_cmd

    # "default": the guest's own application init (touch 8 MiB, 1 M work
    # iterations, three console lines). "minimal": no init work and only the
    # READY line, so what remains is the VMM and the boot path.
    configs = {"default": "", "minimal": "quiet=1 touch_mib=0 work=0"}
    samples = {name: {"vmfork": [], "vmfork_internal": [], "vmfork_rss": [], "qemu": [], "qemu_rss": []}
               for name in configs}
    floor = []
    progress = Progress("bench-boot", total=args.rounds)
    progress.note("warming up")
    for name, cmdline in configs.items():
        v, q = commands(cmdline)
        # Warm-up so page cache and first-use effects do not land in round 1.
        time_to_ready(v, read_to_end=True); time_to_ready(q)
    for i in range(args.rounds):
        for name, cmdline in configs.items():
            v, q = commands(cmdline)
            s = samples[name]
            t, _, out = time_to_ready(v, read_to_end=True)
            report = json.loads(out.decode(errors="replace").strip().splitlines()[-1])
            s["vmfork"].append(t)
            s["vmfork_internal"].append(report["ready_us"] / 1e6)
            s["vmfork_rss"].append(report["vmm_rss_kib"])
            t, rss, _ = time_to_ready(q)
            s["qemu"].append(t); s["qemu_rss"].append(rss)
        f = subprocess.run([args.vmfork, "floor", "--rounds", "5", "--json"], capture_output=True, check=True)
        floor.append(json.loads(f.stdout)["floor_us"] / 1e6)
        progress.done(f"round {i + 1}")

    med = statistics.median
    us = lambda x: round(x * 1e6)
    fl = med(floor)
    print(f"rounds: {args.rounds} (interleaved), guest: vmfork's embedded guest ELF, mem {args.mem}")
    print(f"KVM floor (VM+vCPU to first HLT)        p50 {us(fl):>8} us")
    summary = {}
    for name, cmdline in configs.items():
        s = samples[name]
        v, vi, q = med(s["vmfork"]), med(s["vmfork_internal"]), med(s["qemu"])
        print(f"[{name}] guest cmdline {cmdline!r}")
        print(f"  vmfork spawn->READY on serial        p50 {us(v):>8} us  (min {us(min(s['vmfork']))}, max {us(max(s['vmfork']))})")
        print(f"  vmfork ready_us (its own clock)      p50 {us(vi):>8} us")
        print(f"  QEMU   spawn->READY on serial        p50 {us(q):>8} us  (min {us(min(s['qemu']))}, max {us(max(s['qemu']))})")
        print(f"  ratio vmfork/QEMU {v / q:.3f}   ratio vmfork ready_us/floor {vi / fl:.2f}")
        print(f"  VMM RSS at READY: vmfork {med(s['vmfork_rss']):.0f} KiB, QEMU {med(s['qemu_rss']):.0f} KiB")
        summary[name] = dict(vmfork=us(v), vmfork_internal=us(vi), qemu=us(q), ratio=round(v / q, 4),
                             ratio_floor=round(vi / fl, 3), rss=med(s["vmfork_rss"]), qemu_rss=med(s["qemu_rss"]))
    d, m = summary["default"], summary["minimal"]
    print(json.dumps({
        "vmfork_ready_us": d["vmfork"], "qemu_ready_us": d["qemu"], "floor_us": us(fl),
        "ratio_vs_qemu": d["ratio"], "vmm_rss_kib": d["rss"], "qemu_rss_kib": d["qemu_rss"],
        "vmfork_internal_ready_us": d["vmfork_internal"], "ratio_vs_floor": d["ratio_floor"],
        "minimal_vmfork_ready_us": m["vmfork"], "minimal_qemu_ready_us": m["qemu"],
        "minimal_ratio_vs_qemu": m["ratio"], "minimal_vmfork_internal_ready_us": m["vmfork_internal"],
        "rounds": args.rounds,
    }))

if __name__ == "__main__":
    main()
