#!/usr/bin/env python3
"""FaaS load test: `vmfork serve` on loopback driven by wrk at concurrency
1, 8 and 64, for echo and for sha256 of a 4 KiB body, all in one run:
- fresh: a fresh clone per request, in a recycled VM reset in place (the
  default, --recycle in-place);
- remap: the same with the recycled VM's memory dropped (--recycle remap);
- new-vm: a VM created and closed per request (--recycle off);
- warm: the default plus 32 warm shells per function (--warm 32);
- cold: a cold boot per request (--cold-boot: the same guest, function and
  HTTP path).
Last line: JSON."""
import argparse, json, os, re, shutil, subprocess, sys, tempfile, time

from bench_progress import Progress

def build(v, out, function):
    cmd = [v, "template", "build", "--mem", "32M", "--function", function, "--cmdline", "quiet=1 timer_hz=0 touch_mib=1", "--out", out]
    subprocess.run(cmd, check=True, capture_output=True)

def start(v, templates, extra):
    args = [v, "serve", "--listen", "127.0.0.1:0"] + sum((["--template", f"{n}={d}"] for n, d in templates), []) + extra
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://(\S+)", line)
    if not m:
        sys.exit(f"bench-faas: serve did not start: {line!r}")
    return p, m.group(1)

def to_ms(value, unit):
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

def wrk(addr, function, body_file, conns, seconds):
    script = os.path.join(os.path.dirname(body_file), f"{function}.lua")
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nlocal b = io.open("{body_file}", "rb"); wrk.body = b:read("*all"); b:close()\n')
    out = subprocess.run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{seconds}s", "--latency",
                          "-s", script, f"http://{addr}/v1/functions/{function}/invoke"],
                         capture_output=True, text=True, check=True).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    def ms(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        return to_ms(m.group(1), m.group(2))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]), "rps": rps, "errors": int(non2xx.group(1)) if non2xx else 0}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmfork", required=True)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    v = args.vmfork
    work = tempfile.mkdtemp(prefix="vmfork-bench-faas-")
    # 5 modes x 2 functions x 3 concurrencies, one wrk run each; every row
    # takes --seconds, so each gets its line.
    progress = Progress("bench-faas", total=5 * 2 * 3, every=0)
    try:
        templates = [("echo", os.path.join(work, "echo")), ("sha256", os.path.join(work, "sha256"))]
        for name, d in templates:
            build(v, d, name)
        bodies = {"echo": os.path.join(work, "echo.body"), "sha256": os.path.join(work, "sha256.body")}
        with open(bodies["echo"], "wb") as f:
            f.write(b"hello vmfork")
        with open(bodies["sha256"], "wb") as f:
            f.write(os.urandom(4096))
        results = {}
        modes = (("fresh", []), ("remap", ["--recycle", "remap"]), ("new-vm", ["--recycle", "off"]),
                 ("warm", ["--warm", "32"]), ("cold", ["--cold-boot"]))
        for mode, extra in modes:
            server, addr = start(v, templates, ["--max-concurrency", "8", "--queue", "256"] + extra)
            try:
                time.sleep(0.5)
                for function in ("echo", "sha256"):
                    for conns in (1, 8, 64):
                        results[(mode, function, conns)] = wrk(addr, function, bodies[function], conns, args.seconds)
                        progress.done(f"{mode} {function} c={conns}")
            finally:
                server.terminate()
                server.wait()
        print(f"wrk {args.seconds} s per row; serve --max-concurrency 8; body: echo 12 B, sha256 4 KiB")
        print(f"{'mode':6} {'function':8} {'conns':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'non-2xx':>8}")
        for (mode, function, conns), r in results.items():
            print(f"{mode:6} {function:8} {conns:>5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['rps']:>9.1f} {r['errors']:>8}")
        f8, r8, n8, w8, c8 = (results[(m, "echo", 8)] for m in ("fresh", "remap", "new-vm", "warm", "cold"))
        print(f"echo at 8 connections: fresh clone p50 {f8['p50_ms'] / c8['p50_ms']:.3f}x cold boot, "
              f"{f8['rps'] / c8['rps']:.1f}x its requests/s; --warm p50 {w8['p50_ms'] / c8['p50_ms']:.3f}x cold boot; "
              f"requests/s vs a new VM per request {f8['rps'] / n8['rps']:.2f}x (remap {r8['rps'] / n8['rps']:.2f}x)")
        print(json.dumps({"p50_ms": f8["p50_ms"], "p99_ms": f8["p99_ms"], "rps": f8["rps"],
                          "remap_p50_ms": r8["p50_ms"], "remap_rps": r8["rps"],
                          "new_vm_p50_ms": n8["p50_ms"], "new_vm_p99_ms": n8["p99_ms"], "new_vm_rps": n8["rps"],
                          "warm_p50_ms": w8["p50_ms"], "warm_p99_ms": w8["p99_ms"], "warm_rps": w8["rps"],
                          "cold_p50_ms": c8["p50_ms"], "cold_p99_ms": c8["p99_ms"], "cold_rps": c8["rps"],
                          "sha256_p50_ms": results[("fresh", "sha256", 8)]["p50_ms"],
                          "sha256_rps": results[("fresh", "sha256", 8)]["rps"]}))
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
