#!/usr/bin/env python3
"""Lambda functions, three ways side by side in one run (issue 18):

1. clone per request: `vmfork serve` on a `template build --lambda`
   template, each request a fresh clone of the initialised function;
2. cold boot plus init plus the invocation: the build's `ready_us` (cold
   boot until the function waits in its first `next`; the snapshot write
   excluded) plus the invocation's own time in the guest (serve's
   `x-vmfork-run-us`), per build;
3. a process on the host: the same static `bootstrap` started fresh per
   request against a Runtime API emulated here, from spawn to response.

Plus the private memory per resumed Linux clone of the template (`vmfork
clone --json`). The function is tests/lambda-fn (scripts/build-lambda-fn.sh,
or $VMFORK_LAMBDA_FN). Needs hardware virtualization (the SVM rig here):
    bash scripts/test-svm.sh --cmd 'python3 scripts/bench_lambda.py'
Rig figures: compare the ratios within one run, not absolute times.
"""

import argparse
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
EVENT = b'{"op":"echo"}'


def die(why):
    sys.exit(f"bench_lambda: {why}")


def run(cmd, **kw):
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        die(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    return p.stdout


def last_json(out):
    lines = out.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        die(f"no JSON line at the end of {out[-200:]!r}")


def artifact(tool, kind, key):
    for line in run([tool, kind, "-q"]).splitlines():
        k, _, v = line.partition("=")
        if k == key:
            return v
    die(f"{tool} {kind} printed no {key}=")


def bootstrap():
    if os.environ.get("VMFORK_LAMBDA_FN"):
        return os.environ["VMFORK_LAMBDA_FN"]
    return run(["bash", os.path.join(HERE, "build-lambda-fn.sh")]).strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(proc):
    # Synchronised on the server's own first line, not on a sleep.
    line = proc.stdout.readline()
    if "http://" not in line:
        die(f"serve did not start: {line!r}")


def invoke(url):
    req = urllib.request.Request(url, data=EVENT, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        body = r.read()
        run_us = int(r.headers.get("x-vmfork-run-us", "0"))
    elapsed = time.perf_counter() - start
    if b'"invocations":1' not in body:
        die(f"unexpected answer {body[:200]!r}")
    return elapsed * 1e6, run_us


class OneInvocation(http.server.BaseHTTPRequestHandler):
    """A Runtime API for one invocation of a host process."""

    protocol_version = "HTTP/1.1"
    done = None

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.endswith("/invocation/next"):
            self.send_error(404)
            return
        if self.server.handed:
            # Its second `next`: the run is over; never answered.
            self.server.done.wait()
            return
        self.server.handed = True
        self.send_response(200)
        for name, value in [
            ("Lambda-Runtime-Aws-Request-Id", "host-1"),
            ("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 60000)),
            ("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:local:000000000000:function:bench"),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(EVENT))),
        ]:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(EVENT)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.server.answer = body
        self.server.done.set()


class QuietServer(http.server.ThreadingHTTPServer):
    # The process is killed with its second `next` pending: that reset is
    # expected, not worth a traceback.
    def handle_error(self, request, client_address):
        pass


def host_process(fn, env):
    """Spawn to response of one fresh process of the function."""
    server = QuietServer(("127.0.0.1", 0), OneInvocation)
    server.handed, server.answer, server.done = False, None, threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}")
    start = time.perf_counter()
    proc = subprocess.Popen([fn], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not server.done.wait(60):
        die("the host process never answered")
    elapsed = time.perf_counter() - start
    proc.kill()
    proc.wait()
    server.shutdown()
    server.server_close()
    if b'"invocations":1' not in (server.answer or b""):
        die(f"unexpected host answer {server.answer!r}")
    return elapsed * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--builds", type=int, default=3)
    ap.add_argument("--clones", type=int, default=20)
    ap.add_argument("--mem", default="256M")
    args = ap.parse_args()

    root = os.path.abspath(os.path.join(HERE, ".."))
    vmfork = os.path.join(root, "target/release/vmfork")
    tool = os.path.join(root, "target/release/vmfork-guest-artifacts")
    kernel = artifact(tool, "linux", "vmlinux")
    fn = bootstrap()
    work = tempfile.mkdtemp(prefix="bench-lambda-")
    try:
        tree = os.path.join(work, "tree/var/task")
        os.makedirs(tree)
        shutil.copy(fn, os.path.join(tree, "bootstrap"))
        img = os.path.join(work, "root.ext4")
        run([vmfork, "rootfs", "build", os.path.join(work, "tree"), "--out", img, "--quiet"])
        vm = ["--kernel", kernel, "--rootfs", img, "--mem", args.mem, "--timeout", "300"]
        lam = ["--lambda", "/var/task/bootstrap", "--function-name", "bench", "--init-timeout", "120s"]

        ready = []
        for i in range(args.builds):
            out = os.path.join(work, f"tpl{i}")
            j = last_json(run([vmfork, "template", "build", *vm, *lam, "--quiet", "--json", "--out", out]))
            ready.append(j["ready_us"])
        tpl = os.path.join(work, "tpl0")

        port = free_port()
        serve = subprocess.Popen(
            [vmfork, "serve", "--listen", f"127.0.0.1:{port}", "--template", f"bench={tpl}", "--timeout", "60s"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            wait_listening(serve)
            url = f"http://127.0.0.1:{port}/v1/functions/bench/invoke"
            invoke(url)  # the first request maps the template; not counted
            clone, runs = [], []
            for _ in range(args.requests):
                total, run_us = invoke(url)
                clone.append(total)
                runs.append(run_us)
        finally:
            serve.terminate()
            serve.wait()

        env = {
            "PATH": "/usr/bin:/bin",
            "AWS_LAMBDA_FUNCTION_NAME": "bench",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        }
        host = [host_process(fn, env) for _ in range(args.requests)]

        clones = last_json(run([vmfork, "clone", tpl, "-n", str(args.clones), "--json"]))
        private = clones.get("private_kib_per_clone")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    p50 = statistics.median
    cold = [r + p50(runs) for r in ready]
    result = {
        "requests": args.requests,
        "clone_per_request_p50_us": round(p50(clone)),
        "clone_per_request_p99_us": round(sorted(clone)[int(0.99 * (len(clone) - 1))]),
        "invocation_run_p50_us": round(p50(runs)),
        "cold_boot_init_ready_us": ready,
        "cold_boot_init_invoke_median_us": round(p50(cold)),
        "host_process_p50_us": round(p50(host)),
        "clone_over_cold": round(p50(clone) / p50(cold), 4),
        "clone_over_host_process": round(p50(clone) / p50(host), 2),
        "private_kib_per_clone": private,
    }
    print(f"clone per request p50 {result['clone_per_request_p50_us']} us; "
          f"cold boot + init + invoke {result['cold_boot_init_invoke_median_us']} us; "
          f"host process p50 {result['host_process_p50_us']} us; "
          f"clone/cold {result['clone_over_cold']}; clone/host {result['clone_over_host_process']}; "
          f"private {private} KiB per clone")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
