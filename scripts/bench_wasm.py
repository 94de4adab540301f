#!/usr/bin/env python3
"""Wasm functions under load: `vmfork serve` on loopback driven by wrk, in
one run, the servers alternating:
- wasm-echo: vmfork serve with a Wasm echo module (tests/wasm/echo.c),
  a fresh clone per request;
- builtin-echo: the built-in echo function of vmfork's embedded guest;
- peer-echo: the same Wasm echo module in plain Wasmtime on the host
  (bench/wasm-peer: a new instance per request, same HTTP stack);
- sha256 (tests/wasm/sha256.c: SHA-256 of 1 MiB made in the module) on
  vmfork and on the peer, at 1 and at 8 connections.
Echo runs at 8 connections. Every response is checked before measuring.
Prints each row, the ratios and their goals, and a last JSON line."""
import argparse, json, os, re, shutil, signal, subprocess, sys, tempfile, time, urllib.error, urllib.request

from bench_progress import Progress

ECHO_BODY = b"hello vmfork"
# SHA-256 of the 1 MiB tests/wasm/sha256.c generates: byte i is the top
# byte of i * 2654435761 mod 2^32.
SHA256_DIGEST = b"ca6073392ee71dbd1a2d356c3caa233f8f828ae17f8f8ba8570ee3491be128ab\n"
GOALS = {"wasm_vs_builtin_p50": ("<=", 1.3), "wasm_vs_builtin_rps": (">=", 0.8),
         "sha256_c1_p50_vmfork_vs_peer": ("<=", 1.5)}


def fail(msg):
    raise SystemExit(f"bench-wasm: {msg}")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        fail(f"{' '.join(cmd)} exited with {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


def start(name, cmd, log, servers):
    """Starts a server whose first stdout line names its address; adds it
    to `servers` first, for the caller to stop whatever happens."""
    with open(log, "w") as err:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
    servers.append(p)
    line = p.stdout.readline()
    m = re.search(r"listening on http://(\S+)", line)
    if not m:
        stop(p)
        with open(log) as f:
            fail(f"{name} did not start: {line!r}\n{f.read()[-2000:]}")
    return p, m.group(1)


def stop(p):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def post(addr, function, body):
    req = urllib.request.Request(f"http://{addr}/v1/functions/{function}/invoke", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, str(e).encode()


def check(what, addr, function, body, want, tries=5):
    """`tries` requests, each answered 200 with `want`; they warm up, too."""
    for _ in range(tries):
        status, got = post(addr, function, body)
        if status != 200 or got != want:
            fail(f"{what}: POST /v1/functions/{function}/invoke answered {status} {got[:300]!r}, "
                 f"expected 200 {want!r}")


def to_ms(value, unit):
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk(addr, function, body_file, conns, seconds):
    script = body_file + ".lua"
    with open(script, "w") as f:
        f.write(f'wrk.method = "POST"\nlocal b = io.open("{body_file}", "rb"); wrk.body = b:read("*all"); b:close()\n')
    out = run(["wrk", "-t", str(min(conns, 2)), "-c", str(conns), "-d", f"{seconds}s", "--latency",
               "-s", script, f"http://{addr}/v1/functions/{function}/invoke"])
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    def ms(s):
        m = re.match(r"([\d.]+)(us|ms|s)", s)
        return to_ms(m.group(1), m.group(2))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"p50_ms": ms(lat["50"]), "p99_ms": ms(lat["99"]), "rps": rps,
            "errors": (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, errors.groups())) if errors else 0)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmfork", required=True)
    ap.add_argument("--peer", required=True)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--peer-only", action="store_true",
                    help="measure the host peer alone (no ratios)")
    args = ap.parse_args()
    # A TERM (or a Ctrl-C) unwinds through the finally below, which stops
    # every server started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    work = tempfile.mkdtemp(prefix="vmfork-bench-wasm-")
    servers = []
    try:
        wasm = {}
        for name in ("echo", "sha256"):
            wasm[name] = os.path.join(work, f"{name}.wasm")
            run(["clang", "--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-o", wasm[name],
                 os.path.join(root, "tests", "wasm", f"{name}.c")])
        bodies = {"echo": os.path.join(work, "echo.body"), "sha256": os.path.join(work, "sha256.body")}
        with open(bodies["echo"], "wb") as f:
            f.write(ECHO_BODY)
        open(bodies["sha256"], "wb").close()

        peer_cmd = [args.peer, "--listen", "127.0.0.1:0",
                    "--module", f"echo={wasm['echo']}", "--module", f"sha256={wasm['sha256']}"]
        _, peer_addr = start("wasm-peer", peer_cmd, os.path.join(work, "peer.log"), servers)
        check("peer echo", peer_addr, "echo", ECHO_BODY, ECHO_BODY)
        check("peer sha256", peer_addr, "sha256", b"", SHA256_DIGEST)

        # (label, address, function, body, connections), in the order run:
        # each vmfork row next to its peer.
        rows = [("peer-echo", peer_addr, "echo", "echo", 8), ("peer-sha256", peer_addr, "sha256", "sha256", 1),
                ("peer-sha256", peer_addr, "sha256", "sha256", 8)]
        if not args.peer_only:
            templates = {"wasm-echo": os.path.join(work, "t-wasm-echo"), "wasm-sha256": os.path.join(work, "t-wasm-sha256"),
                         "echo": os.path.join(work, "t-echo")}
            run([args.vmfork, "template", "build", "--wasm", wasm["echo"], "--mem", "64M", "--out", templates["wasm-echo"]])
            run([args.vmfork, "template", "build", "--wasm", wasm["sha256"], "--mem", "64M", "--out", templates["wasm-sha256"]])
            run([args.vmfork, "template", "build", "--function", "echo", "--mem", "32M",
                 "--cmdline", "quiet=1 timer_hz=0 touch_mib=1", "--out", templates["echo"]])
            serve_cmd = [args.vmfork, "serve", "--listen", "127.0.0.1:0", "--max-concurrency", "8", "--queue", "256"]
            serve_cmd += sum((["--template", f"{n}={d}"] for n, d in templates.items()), [])
            _, addr = start("vmfork serve", serve_cmd, os.path.join(work, "serve.log"), servers)
            check("vmfork built-in echo", addr, "echo", ECHO_BODY, ECHO_BODY)
            check("vmfork Wasm echo", addr, "wasm-echo", ECHO_BODY, ECHO_BODY)
            check("vmfork Wasm sha256", addr, "wasm-sha256", b"", SHA256_DIGEST)
            rows = [("wasm-echo", addr, "wasm-echo", "echo", 8), ("builtin-echo", addr, "echo", "echo", 8), rows[0],
                    ("wasm-sha256", addr, "wasm-sha256", "sha256", 1), rows[1],
                    ("wasm-sha256", addr, "wasm-sha256", "sha256", 8), rows[2]]
        time.sleep(0.5)
        progress = Progress("bench-wasm", total=len(rows), every=0)
        results = {}
        for label, a, function, body, conns in rows:
            results[(label, conns)] = wrk(a, function, bodies[body], conns, args.seconds)
            progress.done(f"{label} c={conns}")
    finally:
        for p in servers:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)

    serve_note = "" if args.peer_only else "vmfork serve --max-concurrency 8; "
    print(f"wrk {args.seconds} s per row on loopback; {serve_note}"
          f"echo body {len(ECHO_BODY)} B; sha256 of 1 MiB made in the module, empty body")
    print(f"{'row':13} {'conns':>5} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>9} {'errors':>7}")
    for (label, conns), r in results.items():
        print(f"{label:13} {conns:>5} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['rps']:>9.1f} {r['errors']:>7}")
    out = {f"{label.replace('-', '_')}_c{conns}_{k}": v for (label, conns), r in results.items() for k, v in r.items()}
    if not args.peer_only:
        w, b, p = results[("wasm-echo", 8)], results[("builtin-echo", 8)], results[("peer-echo", 8)]
        s1, ps1 = results[("wasm-sha256", 1)], results[("peer-sha256", 1)]
        s8, ps8 = results[("wasm-sha256", 8)], results[("peer-sha256", 8)]
        ratios = {
            "wasm_vs_builtin_p50": w["p50_ms"] / b["p50_ms"],
            "wasm_vs_builtin_rps": w["rps"] / b["rps"],
            "sha256_c1_p50_vmfork_vs_peer": s1["p50_ms"] / ps1["p50_ms"],
            "sha256_c8_rps_vmfork_vs_peer": s8["rps"] / ps8["rps"],
            "echo_c8_rps_vmfork_vs_peer": w["rps"] / p["rps"],
            "echo_c8_p50_vmfork_vs_peer": w["p50_ms"] / p["p50_ms"],
        }
        names = {
            "wasm_vs_builtin_p50": "Wasm echo p50 / built-in echo p50 (8 conns)",
            "wasm_vs_builtin_rps": "Wasm echo req/s / built-in echo req/s (8 conns)",
            "sha256_c1_p50_vmfork_vs_peer": "sha256 p50 vmfork / peer (1 conn)",
            "sha256_c8_rps_vmfork_vs_peer": "sha256 req/s vmfork / peer (8 conns)",
            "echo_c8_rps_vmfork_vs_peer": "Wasm echo req/s vmfork / peer (8 conns)",
            "echo_c8_p50_vmfork_vs_peer": "Wasm echo p50 vmfork / peer (8 conns)",
        }
        for key, value in ratios.items():
            goal = GOALS.get(key)
            if goal:
                op, bound = goal
                met = value <= bound if op == "<=" else value >= bound
                verdict = f"goal {op} {bound}: {'met' if met else 'NOT met'}"
            else:
                verdict = "no goal"
            print(f"{names[key]:48} {value:7.3f}  ({verdict})")
        out.update(ratios)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
