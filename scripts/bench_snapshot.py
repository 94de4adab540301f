#!/usr/bin/env python3
"""Templates: build time, file sizes, restore latency (vs the KVM floor and a
cold boot of the same guest, in the same run), and diff snapshots as a
function of pages dirtied. Last line: JSON."""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time

from bench_progress import Progress

def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench-snapshot: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout.strip().splitlines()[-1])

def pct(xs, p):
    xs = sorted(xs)
    k = max(1, -(-len(xs) * p // 100))  # nearest rank
    return xs[int(k) - 1]

def disk_bytes(path):
    return os.stat(path).st_blocks * 512

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmfork", required=True)
    ap.add_argument("--restores", type=int, default=100)
    ap.add_argument("--mem", default="128M")
    ap.add_argument("--cmdline", default="quiet=1 touch_mib=48")
    args = ap.parse_args()
    v = args.vmfork
    work = tempfile.mkdtemp(prefix="vmfork-bench-snap-")
    # 5 builds, the restores (with their cold boots and floors), 3 x 3 diffs.
    progress = Progress("bench-snapshot", total=5 + args.restores + 9)
    try:
        # Template build time over 5 builds.
        builds = []
        for i in range(5):
            out = os.path.join(work, f"t{i}")
            builds.append(run_json([v, "template", "build", "--mem", args.mem, "--cmdline", args.cmdline, "--out", out, "--json"]))
            progress.done(f"template build {i + 1}/5")
        tpl = os.path.join(work, "t0")
        state_bytes = os.path.getsize(os.path.join(tpl, "state"))
        mem_apparent = os.path.getsize(os.path.join(tpl, "memory"))
        mem_disk = disk_bytes(os.path.join(tpl, "memory"))
        state_disk = disk_bytes(os.path.join(tpl, "state"))

        # Restores, cold boots and floor samples interleaved.
        restore, cold, floor = [], [], []
        for i in range(args.restores):
            restore.append(run_json([v, "restore", tpl, "--exit-on-ready", "--json", "--quiet"])["restore_us"])
            if i % 5 == 0:
                cold.append(run_json([v, "boot", "--mem", args.mem, "--cmdline", args.cmdline, "--exit-on-ready", "--json", "--quiet"])["ready_us"])
                floor.append(run_json([v, "floor", "--rounds", "5", "--json"])["floor_us"])
            progress.done(f"restore {i + 1}/{args.restores}")

        # Diff snapshots after dirtying 1, 100 and 10,000 pages.
        diffs = {}
        for pages in (1, 100, 10000):
            times, written, on_disk, dirty, scan = [], [], [], [], []
            for rep in range(3):
                sock = os.path.join(work, "api.sock")
                vm = subprocess.Popen([v, "restore", tpl, "--api-sock", sock, "--quiet"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                deadline = time.time() + 30
                while not os.path.exists(sock):
                    if time.time() > deadline or vm.poll() is not None:
                        sys.exit(f"bench-snapshot: restore with --api-sock did not start: {vm.stderr.read()}")
                    time.sleep(0.005)
                subprocess.run([v, "ctl", sock, "dirty-pages", str(pages)], check=True, capture_output=True)
                out = os.path.join(work, f"d{pages}-{rep}")
                r = subprocess.run([v, "ctl", sock, "snapshot", "--diff", "--out", out], capture_output=True, text=True, check=True)
                res = json.loads(r.stdout)
                subprocess.run([v, "ctl", sock, "stop"], check=True, capture_output=True)
                vm.wait()
                times.append(res["snapshot_us"]); written.append(res["memory_written_bytes"])
                dirty.append(res["dirty_pages"]); on_disk.append(disk_bytes(os.path.join(out, "memory")))
                scan.append(res["dirty_scan_us"])
                shutil.rmtree(out)
                progress.done(f"diff snapshot of {pages} pages, {rep + 1}/3")
            diffs[pages] = dict(snapshot_us=statistics.median(times), written=statistics.median(written),
                                on_disk=statistics.median(on_disk), dirty_pages=statistics.median(dirty),
                                scan_us=statistics.median(scan))

        build_ms = statistics.median(b["build_ms"] for b in builds)
        r50, r99 = pct(restore, 50), pct(restore, 99)
        f50, c50 = statistics.median(floor), statistics.median(cold)
        print(f"template: --mem {args.mem} --cmdline {args.cmdline!r}")
        print(f"template build (cold boot + snapshot), median of 5: {build_ms:.1f} ms")
        print(f"state file: {state_bytes} B ({state_disk} B on disk); memory file: {mem_apparent >> 20} MiB apparent, {mem_disk / 2**20:.1f} MiB on disk")
        print(f"restore to first guest ack over {len(restore)} restores: p50 {r50} us, p99 {r99} us")
        print(f"same run: KVM floor p50 {f50} us, cold boot to READY p50 {c50} us ({len(cold)} boots)")
        print(f"ratios: restore p50 / floor {r50 / f50:.2f}, restore p50 / cold boot {r50 / c50:.3f}")
        for pages, d in diffs.items():
            print(f"diff snapshot after dirtying {pages:>5} pages: {d['snapshot_us']:.0f} us "
                  f"(pagemap scan of all RAM {d['scan_us']:.0f} us), "
                  f"{d['dirty_pages']:.0f} dirty pages found, {d['written'] / 1024:.0f} KiB written, {d['on_disk'] / 1024:.0f} KiB on disk")
        print(json.dumps({
            "restore_p50_us": r50, "restore_p99_us": r99, "floor_us": f50, "coldboot_us": c50,
            "build_ms": round(build_ms, 2), "state_bytes": state_bytes, "memory_bytes": mem_apparent,
            "memory_disk_bytes": mem_disk,
            "diff": {str(k): {"snapshot_us": d["snapshot_us"], "dirty_pages": d["dirty_pages"], "scan_us": d["scan_us"],
                              "written_bytes": d["written"]} for k, d in diffs.items()},
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
