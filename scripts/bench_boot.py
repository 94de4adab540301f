#!/usr/bin/env python3
"""Cold boot to READY: vmfork vs QEMU microvm vs the KVM floor, interleaved.

Both VMMs boot the same guest ELF (vmfork's embedded guest, exported), and
both are timed the same way from outside: from spawning the process to the
moment "vmfork-guest: READY" appears on the guest's serial console. vmfork's
own ready_us (process start to the guest's READY port write) is reported
too. The floor is `vmfork floor`: a fresh VM + vCPU run to its first HLT.
"""
import argparse, json, os, statistics, subprocess, sys, time

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

def time_to_ready(cmd, timeout=60.0):
    """Spawn cmd, return (seconds until READY on stdout, rss_kib at READY, all stdout)."""
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
    vmfork_cmd = [args.vmfork, "boot", "--mem", args.mem, "--exit-on-ready", "--json"]
    qemu_cmd = [args.qemu, "-M", "microvm,x-option-roms=off,rtc=off,acpi=off,pit=on,pic=on,isa-serial=on",
                "-enable-kvm", "-cpu", "host,-arch-capabilities", "-m", args.mem, "-smp", "1",
                "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
                "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", guest]

    ext_vmfork, int_vmfork, rss_vmfork, ext_qemu, rss_qemu, floor = [], [], [], [], [], []
    # One warm-up of each so page cache and first-use effects do not land in round 1.
    time_to_ready(vmfork_cmd); time_to_ready(qemu_cmd)
    for r in range(args.rounds):
        t, _, out = time_to_ready(vmfork_cmd)
        ext_vmfork.append(t)
        last = out.decode(errors="replace").strip().splitlines()[-1]
        report = json.loads(last)
        int_vmfork.append(report["ready_us"] / 1e6)
        rss_vmfork.append(report["vmm_rss_kib"])
        t, rss, _ = time_to_ready(qemu_cmd)
        ext_qemu.append(t); rss_qemu.append(rss)
        f = subprocess.run([args.vmfork, "floor", "--rounds", "5", "--json"], capture_output=True, check=True)
        floor.append(json.loads(f.stdout)["floor_us"] / 1e6)

    med = lambda xs: statistics.median(xs)
    us = lambda s: round(s * 1e6)
    vm_ext, q_ext, vm_int, fl = med(ext_vmfork), med(ext_qemu), med(int_vmfork), med(floor)
    print(f"rounds: {args.rounds} (interleaved), guest: vmfork's embedded guest ELF, mem {args.mem}")
    print(f"vmfork  spawn->READY on serial  p50 {us(vm_ext):>8} us  (min {us(min(ext_vmfork))}, max {us(max(ext_vmfork))})")
    print(f"vmfork  ready_us (own clock)    p50 {us(vm_int):>8} us")
    print(f"QEMU    spawn->READY on serial  p50 {us(q_ext):>8} us  (min {us(min(ext_qemu))}, max {us(max(ext_qemu))})")
    print(f"KVM floor (VM+vCPU to HLT)      p50 {us(fl):>8} us")
    print(f"ratio vmfork/QEMU (spawn->READY): {vm_ext / q_ext:.3f}")
    print(f"ratio vmfork/floor (ready_us / floor): {vm_int / fl:.2f}")
    print(f"VMM RSS at READY: vmfork {med(rss_vmfork)} KiB, QEMU {med(rss_qemu)} KiB")
    print(json.dumps({
        "vmfork_ready_us": us(vm_ext), "vmfork_internal_ready_us": us(vm_int),
        "qemu_ready_us": us(q_ext), "floor_us": us(fl),
        "ratio_vs_qemu": round(vm_ext / q_ext, 4), "ratio_vs_floor": round(vm_int / fl, 3),
        "vmm_rss_kib": med(rss_vmfork), "qemu_rss_kib": med(rss_qemu), "rounds": args.rounds,
    }))

if __name__ == "__main__":
    main()
