#!/usr/bin/env python3
"""VMFork clones: memory backends with and without pre-created VM shells,
one process per clone vs threads in one process, the KVM floor and a cold
boot of the same guest, all in one run; and a template of the guest's
defaults (no --cmdline) against the tuned one, with and without shells,
alternating. Last line: JSON (--ratio-only: just the defaults-vs-tuned
part, with its keys only)."""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile

from bench_progress import Progress

def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench-clone: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return json.loads(p.stdout.strip().splitlines()[-1])

def defaults_vs_tuned(v, mem, tuned_tpl, clones, rounds):
    """A template built with the guest's defaults against `tuned_tpl`,
    memfd backend, with and without shells, alternating `rounds` times so
    that both see the same host noise. Medians of each run's p50."""
    work = tempfile.mkdtemp(prefix="vmfork-bench-defaults-")
    try:
        default_tpl = os.path.join(work, "d")
        run_json([v, "template", "build", "--mem", mem, "--out", default_tpl, "--json"])
        p50 = {(kind, shells): [] for kind in ("default", "tuned") for shells in (False, True)}
        for _ in range(rounds):
            for shells in (False, True):
                for kind, tpl in (("default", default_tpl), ("tuned", tuned_tpl)):
                    cmd = [v, "clone", tpl, "-n", str(clones), "--json"] + (["--shells"] if shells else [])
                    p50[(kind, shells)].append(run_json(cmd)["clone_p50_us"])
        med = {k: statistics.median(x) for k, x in p50.items()}
        out = {
            "default_clone_p50_us": med[("default", False)], "tuned_clone_p50_us": med[("tuned", False)],
            "default_shells_clone_p50_us": med[("default", True)], "tuned_shells_clone_p50_us": med[("tuned", True)],
            "default_vs_tuned": round(med[("default", False)] / med[("tuned", False)], 3),
            "default_vs_tuned_shells": round(med[("default", True)] / med[("tuned", True)], 3),
            "ratio_rounds": rounds, "ratio_clones": clones,
        }
        for shells in (False, True):
            print(f"defaults vs tuned, memfd, shells={shells}: p50 {med[('default', shells)]:.0f} vs "
                  f"{med[('tuned', shells)]:.0f} us = {med[('default', shells)] / med[('tuned', shells)]:.2f}x "
                  f"(medians of {rounds} alternating runs of {clones} clones: default {p50[('default', shells)]}, tuned {p50[('tuned', shells)]})")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmfork", required=True)
    ap.add_argument("--clones", type=int, default=1000)
    ap.add_argument("--mem", default="64M")
    ap.add_argument("--cmdline", default="quiet=1 touch_mib=8 timer_hz=0",
                    help="the tuned template's command line")
    ap.add_argument("--ratio-clones", type=int, default=200)
    ap.add_argument("--ratio-rounds", type=int, default=3)
    ap.add_argument("--ratio-only", action="store_true",
                    help="only compare a defaults template with the tuned one")
    args = ap.parse_args()
    v = args.vmfork
    work = tempfile.mkdtemp(prefix="vmfork-bench-clone-")
    # The template, 8 backend rows, 4 worker-process rows, 100 restores,
    # 20 cold boots and the floor.
    progress = Progress("bench-clone", total=1 + 8 + 4 + 100 + 20 + 1)
    try:
        tpl = os.path.join(work, "t")
        run_json([v, "template", "build", "--mem", args.mem, "--cmdline", args.cmdline, "--out", tpl, "--json"])
        progress.done("template")
        ratio = defaults_vs_tuned(v, args.mem, tpl, args.ratio_clones, args.ratio_rounds)
        if args.ratio_only:
            print(json.dumps(ratio))
            return
        results = {}
        for backend in ("file", "memfd", "uffd", "uffd+prefetch"):
            for shells in (False, True):
                name, extra = backend, []
                if backend == "uffd+prefetch":
                    name, extra = "uffd", ["--prefetch"]
                    if not os.path.exists(os.path.join(tpl, "working-set")):
                        run_json([v, "clone", tpl, "-n", "1", "--backend", "uffd", "--prefetch", "--json"])
                cmd = [v, "clone", tpl, "-n", str(args.clones), "--backend", name, "--floor", "--json"] + extra
                if shells:
                    cmd.append("--shells")
                results[(backend, shells)] = run_json(cmd)
                progress.done(f"{backend} shells={shells}")
        # The same clones spread over worker processes sharing one memfd.
        procs = {}
        for p in (2, 4):
            for shells in (False, True):
                cmd = [v, "clone", tpl, "-n", str(args.clones), "--processes", str(p), "--floor", "--json"]
                if shells:
                    cmd.append("--shells")
                procs[(p, shells)] = run_json(cmd)
                progress.done(f"{p} worker processes shells={shells}")
        # One process per clone: `vmfork restore` (file backend), timed by
        # its own clock from process start to the first acknowledgement.
        per_process, cold = [], []
        for i in range(100):
            per_process.append(run_json([v, "restore", tpl, "--exit-on-ready", "--json", "--quiet"])["restore_us"])
            progress.done(f"restore {i + 1}/100")
        for i in range(20):
            cold.append(run_json([v, "boot", "--mem", args.mem, "--cmdline", args.cmdline, "--exit-on-ready", "--json", "--quiet"])["ready_us"])
            progress.done(f"cold boot {i + 1}/20")
        floor = run_json([v, "floor", "--rounds", "200", "--json"])["floor_us"]
        progress.done("floor")

        print(f"template: --mem {args.mem} --cmdline {args.cmdline!r}; {args.clones} concurrent clones per row, threads in one process")
        print(f"{'backend':14} {'shells':6} {'p50 us':>8} {'p99 us':>8} {'total ms':>9} {'priv KiB':>9} {'host KiB':>9} {'faults':>7} {'uffd':>5} {'p50/floor':>9}")
        for (backend, shells), r in results.items():
            print(f"{backend:14} {str(shells):6} {r['clone_p50_us']:>8} {r['clone_p99_us']:>8} {r['total_ms']:>9.1f} "
                  f"{r['private_kib_per_clone']:>9} {r['host_kib_per_clone']:>9} {r['faults_per_clone']:>7} {r['uffd_faults_per_clone']:>5} "
                  f"{r['clone_p50_us'] / r['floor_us']:>9.2f}   (floor {r['floor_us']} us in that run; shell pool {r['shell_pool_ms']:.0f} ms; teardown {r['teardown_ms']:.0f} ms; fds {r['fds_before']}->{r['fds_after']})")
        for (p, shells), r in procs.items():
            print(f"memfd, {p} worker processes, shells={shells}: p50 {r['clone_p50_us']} us, p99 {r['clone_p99_us']} us, "
                  f"total {r['total_ms']:.1f} ms, {r['private_kib_per_clone']} KiB private, {r['host_kib_per_clone']} KiB host per clone "
                  f"(floor {r['floor_us']} us; worker fd leaks {r['worker_fd_leaks']})")
        pp50 = statistics.median(per_process)
        print(f"one process per clone (vmfork restore, file backend): p50 {pp50:.0f} us over {len(per_process)}")
        print(f"KVM floor p50 {floor} us; cold boot to READY p50 {statistics.median(cold):.0f} us")
        d = results[("memfd", False)]
        s = results[("memfd", True)]
        print(json.dumps({
            "clone_p50_us": d["clone_p50_us"], "clone_p99_us": d["clone_p99_us"], "floor_us": floor,
            "private_kib_per_clone": d["private_kib_per_clone"], "host_kib_per_clone": d["host_kib_per_clone"],
            "total_ms": d["total_ms"], "shells_clone_p50_us": s["clone_p50_us"], "shells_total_ms": s["total_ms"],
            "per_process_p50_us": pp50,
            "procs4_total_ms": procs[(4, False)]["total_ms"], "procs4_shells_total_ms": procs[(4, True)]["total_ms"], "coldboot_us": statistics.median(cold), "clones": args.clones,
            **ratio,
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
