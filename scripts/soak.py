#!/usr/bin/env python3
"""Soak test (scripts/soak.sh): for a bounded time, on loopback, everything
at once: `vmfork serve` under a mix of good requests, timeouts, oversize
bodies and crashing functions; clones created and destroyed continuously
(memfd, file, uffd, uffd --prefetch, with and without shells, and through
a template holder); uffd page servers killed at random moments (the
VMFORK_FAULT_INJECT test hook) and the holder SIGKILLed at random moments;
template builds into a full 8 MiB tmpfs. After every clone operation a
good template is restored and must answer a ping with the checksum it had
at the start: anything else is a wrong template, a critical error.

Reports operations, errors by kind (expected or not), serve's peak and
final RSS and its fds, live clones, leaked processes, mounts and cgroups,
and wrong templates. Exits non-zero on any leak, unexpected error or wrong
template. Last line: JSON."""
import argparse, collections, hashlib, http.client, json, os, random, re, shutil, signal, subprocess
import sys, tempfile, threading, time

from bench_progress import Progress

PING_CMDLINE = "touch_mib=1 timer_hz=0"
FUNC_CMDLINE = "quiet=1 timer_hz=0 touch_mib=1"
FUNCTIONS = ("echo", "json-upper", "crash", "spin")
MAX_BODY = 64 * 1024
HANG = 120  # seconds after which any vmfork command counts as hung
FDS_PER_POOLED_VM = 3  # a pooled VM holds its VM, vCPU and serial irqfd fds


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = collections.Counter()
        self.expected = collections.Counter()
        self.unexpected = collections.Counter()
        self.details = []  # the first unexpected errors, for the report
        self.wrong_templates = []

    def op(self, kind):
        with self.lock:
            self.ops[kind] += 1

    def error(self, kind, expected, detail=""):
        with self.lock:
            (self.expected if expected else self.unexpected)[kind] += 1
            if not expected and len(self.details) < 20:
                self.details.append(f"{kind}: {detail}"[:400])

    def wrong(self, detail):
        with self.lock:
            self.wrong_templates.append(detail[:400])


def run(cmd, env=None, timeout=HANG):
    """(status, stdout, stderr); status "hang" if it outlived `timeout`."""
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return "hang", out, err


def one_line_error(err, needle=""):
    lines = [l for l in err.splitlines() if l.strip() and "seccomp filters disabled" not in l]
    return (len(lines) == 1 and lines[0].startswith("vmfork: ") and "panicked" not in err
            and needle.lower() in lines[0].lower())


def field(line, key):
    m = re.search(rf"\b{key}=(\S+)", line)
    return m.group(1) if m else None


def pongs(out):
    return [l for l in out.splitlines() if "vmfork-guest: pong" in l]


def upper_json(v):
    up = lambda s: "".join(c.upper() if "a" <= c <= "z" else c for c in s)
    if isinstance(v, str):
        return up(v)
    if isinstance(v, list):
        return [upper_json(x) for x in v]
    if isinstance(v, dict):
        return {up(k): upper_json(x) for k, x in v.items()}
    return v


def proc_status(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def handles_sigterm(pid):
    """Whether the process blocks or catches SIGTERM by now."""
    bit = 1 << (signal.SIGTERM - 1)
    try:
        with open(f"/proc/{pid}/status") as f:
            masks = [int(l.split()[1], 16) for l in f if l.startswith(("SigBlk:", "SigCgt:"))]
    except (OSError, ValueError, IndexError):
        return False
    return any(m & bit for m in masks)


def fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def cgroup_dirs():
    found = set()
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        if root.count("/") > 6:
            dirs[:] = []
        found.update(os.path.join(root, d) for d in dirs if "vmfork" in d)
    return found


class Soak:
    def __init__(self, vmfork, flags, minutes, seed):
        self.rng = random.Random(seed)
        self.stats = Stats()
        self.stop = threading.Event()
        self.work = tempfile.mkdtemp(prefix="vmfork-soak-")
        # A private copy: the shared target/ may be rebuilt during the run,
        # and every process of one soak must be the same build.
        binary = os.path.join(self.work, "vmfork")
        shutil.copy2(vmfork, binary)
        self.vm = [binary] + flags
        self.started = time.monotonic()
        self.deadline = self.started + minutes * 60
        self.templates = {}
        self.digests = {}
        self.ping_ref = None
        self.holder = None
        self.holder_lock = threading.Lock()
        self.sock = os.path.join(self.work, "holder.sock")
        self.serve = None
        self.rss = []

    # ---- templates and the continuity check ----

    def build(self, name, cmdline, function=None):
        out = os.path.join(self.work, name)
        cmd = self.vm + ["template", "build", "--mem", "32M", "--cmdline", cmdline, "--out", out]
        if function:
            cmd += ["--function", function]
        status, _, err = run(cmd)
        if status != 0:
            sys.exit(f"soak: building {name} failed ({status}): {err.strip()}")
        self.templates[name] = out
        self.digests[name] = self.digest(out)

    @staticmethod
    def digest(d):
        h = hashlib.sha256()
        for f in ("template.json", "state", "memory"):
            with open(os.path.join(d, f), "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    def restore_pong(self, d):
        status, out, err = run(self.vm + ["restore", d, "--exit-on-ready", "--json", "--timeout", "30"])
        lines = pongs(out)
        return status, (lines[0] if lines else None), err

    def check_pong(self, line, where):
        """A pong must carry the template's boot nonce and checksum."""
        ref = self.ping_ref
        got = (field(line, "boot_nonce"), field(line, "checksum"))
        if got != (ref["boot_nonce"], ref["checksum"]):
            self.stats.wrong(f"{where}: {line.strip()} (expected {ref})")
            return False
        return True

    def verify_continuity(self, where):
        self.stats.op("continuity_check")
        status, line, err = self.restore_pong(self.templates["ping"])
        if status != 0 or line is None:
            self.stats.error("good_template_refused", False, f"after {where}: {status} {err.strip()}")
        elif self.check_pong(line, f"restore after {where}") and field(line, "n") != self.ping_ref["n"]:
            self.stats.wrong(f"restore after {where}: n={field(line, 'n')}, expected {self.ping_ref['n']}")

    def verify_digests(self):
        for name, d in self.templates.items():
            if self.digest(d) != self.digests[name]:
                self.stats.wrong(f"template {name} changed on disk")
        self.stats.op("digest_check")

    # ---- serve ----

    def start_serve(self):
        cmd = self.vm + ["serve", "--listen", "127.0.0.1:0", "--timeout", "1s", "--max-body",
               str(MAX_BODY), "--warm", "2", "--max-concurrency", "4", "--queue", "8"]
        for f in FUNCTIONS:
            cmd += ["--template", f"{f}={self.templates[f]}"]
        self.serve_err = open(os.path.join(self.work, "serve.stderr"), "w")
        self.serve = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self.serve_err, text=True)
        m = re.search(r"http://(\S+)", self.serve.stdout.readline())
        if not m:
            sys.exit("soak: serve did not start")
        self.addr = m.group(1)

    def http(self, method, path, body=None, timeout=30):
        host, port = self.addr.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def metric(self, name):
        _, text = self.http("GET", "/metrics")
        m = re.search(rb"^" + name.encode() + rb" (\d+)", text, re.M)
        return int(m.group(1)) if m else -1

    def live_clones(self):
        return self.metric("vmfork_live_clones")

    def serve_fds(self):
        """serve's open fds, less those the VMs pooled for reuse hold (the
        VM, its vCPU, the serial irqfd): the pool grows up to 2x
        --max-concurrency under load, and is bounded; a leak is not. The
        /metrics connection asked for the pool size is given a moment to
        close first."""
        pooled = FDS_PER_POOLED_VM * max(0, self.metric("vmfork_pooled_vms"))
        time.sleep(0.2)
        return fd_count(self.serve.pid) - pooled

    def one_request(self):
        rng = self.rng
        kind = rng.choices(["echo", "json", "json_bad", "oversize", "crash", "spin", "unknown"],
                           [55, 12, 6, 8, 8, 6, 5])[0]
        body, expect, check = os.urandom(rng.randint(0, 4096)), 200, None
        fn = {"json": "json-upper", "json_bad": "json-upper", "oversize": "echo"}.get(kind, kind)
        if kind == "echo":
            check = lambda b, sent=body: b == sent
        elif kind == "json":
            doc = {"k": "soak éa", "n": [1, "x y"], "r": os.urandom(8).hex()}
            body = json.dumps(doc, ensure_ascii=False).encode()
            check = lambda b, want=upper_json(doc): json.loads(b) == want
        elif kind == "json_bad":
            body, expect = b"{not json", 422
        elif kind == "oversize":
            body, expect = b"x" * (MAX_BODY + rng.randint(1, 100_000)), 413
        elif kind == "crash":
            expect = 502
        elif kind == "spin":
            expect = 504
        elif kind == "unknown":
            fn, expect = "no-such-function", 404
        self.stats.op(f"http_{kind}")
        try:
            status, answer = self.http("POST", f"/v1/functions/{fn}/invoke", body)
        except (ConnectionError, OSError) as e:
            # A server may answer 413 and close before the whole body is sent.
            self.stats.error(f"http_{kind}_connection", kind == "oversize", repr(e))
            return
        if status == 503:
            self.stats.error("http_overloaded_503", True)
        elif status != expect:
            self.stats.error(f"http_{kind}_status_{status}", False, answer[:200])
        elif check and not check(answer):
            self.stats.wrong(f"serve {fn}: wrong answer {answer[:100]!r}")
        elif expect != 200:
            self.stats.error(f"http_{kind}_{status}", True)

    def traffic(self):
        while not self.stop.is_set():
            self.one_request()

    def burst(self):
        """More spinning requests than --max-concurrency 4 plus --queue 8:
        some must be turned away with 503, none may hang."""
        self.stats.op("http_burst")
        answers = []  # list.append is atomic; a Counter update is not

        def spin():
            try:
                answers.append(self.http("POST", "/v1/functions/spin/invoke", b"x")[0])
            except OSError as e:
                self.stats.error("http_burst_connection", False, repr(e))
        threads = [threading.Thread(target=spin) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for status, n in collections.Counter(answers).items():
            expected = status in (503, 504)
            self.stats.error(f"http_burst_{status}", expected, f"{n} answers")

    def sampler(self):
        while not self.stop.is_set():
            self.rss.append(proc_status(self.serve.pid, "VmRSS:"))
            time.sleep(0.5)

    # ---- clones and the holder ----

    def clone_op(self):
        rng = self.rng
        n = rng.randint(1, 6)
        holder = rng.random() < 0.3
        backend = rng.choice(["memfd", "uffd"] if holder else ["memfd", "file", "uffd", "uffd"])
        cmd = self.vm + ["clone"] + (["--holder", self.sock] if holder else [self.templates["ping"]])
        cmd += ["-n", str(n), "--backend", backend, "--console", "--json"]
        if backend == "uffd" and rng.random() < 0.3:
            cmd.append("--prefetch")
        if rng.random() < 0.5:
            cmd.append("--shells")
        env, allowed, kind = None, {0}, f"clone_{backend}" + ("_holder" if holder else "")
        if backend == "uffd" and rng.random() < 0.35:
            # The page server of one clone (or all) dies, or stalls.
            how = rng.choices(["exit", "panic", "stall"], [45, 45, 10])[0]
            spec = f"uffd-handler-{how}-after={rng.randint(0, 8)}"
            if rng.random() < 0.7:
                spec += f",clone={rng.randint(1, n)}"
            env = dict(os.environ, VMFORK_FAULT_INJECT=spec)
            allowed = {0, 14 if how == "stall" else 20}
            kind += f"_inject_{how}"
        if holder:
            allowed.add(17)  # the holder is dead or restarting: a clear error
        self.stats.op(kind)
        status, out, err = run(cmd, env=env)
        for line in pongs(out):
            if field(line, "host_time_ms") is None:
                # Cut off mid-line: a clone stopped while printing, which
                # only a failed run may show.
                self.stats.error("clone_partial_pong_line", status != 0, line)
            else:
                self.check_pong(line, kind)
        if status not in allowed:
            self.stats.error(f"{kind}_status_{status}", False, err.strip())
        elif status != 0:
            needle = {14: "did not acknowledge", 17: "template holder", 20: "page server died"}[status]
            if one_line_error(err, needle):
                self.stats.error(f"clone_exit_{status}", True)
            else:
                self.stats.error(f"{kind}_unclear_error", False, err)
        else:
            try:
                summary = json.loads(out.splitlines()[-1])
            except (ValueError, IndexError):
                summary = {}
            if summary.get("fds_before") != summary.get("fds_after"):
                self.stats.error("clone_fd_leak", False, str(summary)[:200])
            if len([l for l in pongs(out) if field(l, "host_time_ms")]) != n:
                self.stats.error("clone_missing_pongs", False, out[-300:])
        self.verify_continuity(kind)

    def churn(self):
        while not self.stop.is_set():
            self.clone_op()

    def start_holder(self):
        with self.holder_lock:
            self.holder = subprocess.Popen(
                self.vm + ["template", "serve", self.templates["ping"], "--sock", self.sock],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            self.stats.op("holder_start")

    def stop_holder(self, sig):
        with self.holder_lock:
            h, self.holder = self.holder, None
        if h is None:
            return
        if sig == signal.SIGTERM:
            # A SIGTERM that lands before the holder's first instructions
            # have taken over the stop signals kills it the default way
            # (status -15), as it would any program: wait until it has.
            deadline = time.monotonic() + 10
            while not handles_sigterm(h.pid) and h.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
        h.send_signal(sig)
        try:
            _, err = h.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            h.kill()
            _, err = h.communicate()
            self.stats.error("holder_hung_on_signal", False, err)
            return
        if sig == signal.SIGKILL:
            self.stats.op("holder_sigkill")
        elif h.returncode != 0 or os.path.exists(self.sock):
            self.stats.error("holder_term_unclean", False, f"{h.returncode} {err.strip()}")
        else:
            self.stats.op("holder_sigterm")

    def holder_killer(self):
        self.start_holder()
        while not self.stop.wait(self.rng.uniform(1, 6)):
            self.stop_holder(signal.SIGKILL if self.rng.random() < 0.85 else signal.SIGTERM)
            self.stop.wait(self.rng.uniform(0, 1.5))
            self.start_holder()
        self.stop_holder(signal.SIGTERM)

    # ---- a template build into a full tmpfs ----

    def tmpfs_op(self):
        mnt = os.path.join(self.work, "tmpfs")
        os.makedirs(mnt, exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8M", "tmpfs", mnt]).returncode != 0:
            self.stats.error("tmpfs_mount_failed", False, "mount needs root")
            return
        self.stats.op("tmpfs_build")
        try:
            touch = self.rng.choice([6, 7, 8, 16, 32])
            out = os.path.join(mnt, "t")
            status, _, err = run(self.vm + ["template", "build", "--mem", "64M", "--cmdline",
                                  f"touch_mib={touch} timer_hz=0", "--out", out])
            if status == 0:
                # It fitted: then it must be a good template.
                rs, line, rerr = self.restore_pong(out)
                if rs != 0 or line is None:
                    self.stats.error("tmpfs_built_template_refused", False, rerr)
                self.stats.op("tmpfs_build_fitted")
            elif one_line_error(err, "space"):
                self.stats.error("tmpfs_build_enospc", True)
                # Whatever it left must be refused by restore and clone.
                for entry in set(os.listdir(mnt)) | {"t"}:
                    path = os.path.join(mnt, entry)
                    self.stats.op("tmpfs_leftover_checked")
                    rs, _, _ = run(self.vm + ["restore", path, "--exit-on-ready", "--timeout", "10"])
                    cs, _, _ = run(self.vm + ["clone", path, "-n", "1"])
                    if rs == 0 or cs == 0:
                        self.stats.wrong(f"partial template {entry} accepted (restore {rs}, clone {cs})")
            else:
                self.stats.error(f"tmpfs_build_status_{status}", False, err.strip())
        finally:
            if subprocess.run(["umount", mnt]).returncode != 0:
                self.stats.error("tmpfs_umount_failed", False, mnt)

    def periodic(self):
        next_tmpfs, next_burst = time.monotonic() + 5, time.monotonic() + 15
        while not self.stop.wait(1):
            if time.monotonic() >= next_burst:
                self.burst()
                next_burst = time.monotonic() + 20
            if time.monotonic() >= next_tmpfs:
                self.tmpfs_op()
                self.verify_continuity("tmpfs build")
                self.verify_digests()
                next_tmpfs = time.monotonic() + 45

    # ---- the whole run ----

    def main(self):
        cgroups_before = cgroup_dirs()
        self.build("ping", PING_CMDLINE)
        for f in FUNCTIONS:
            self.build(f, FUNC_CMDLINE, f)
        status, line, err = self.restore_pong(self.templates["ping"])
        if status != 0 or line is None:
            sys.exit(f"soak: the ping template does not restore: {err.strip()}")
        self.ping_ref = {k: field(line, k) for k in ("boot_nonce", "checksum", "n")}
        self.start_serve()
        time.sleep(2)  # warm shells filled
        fds_before = self.serve_fds()
        threads = [threading.Thread(target=t, daemon=True) for t in
                   (self.traffic, self.traffic, self.sampler, self.churn, self.holder_killer, self.periodic)]
        for t in threads:
            t.start()
        progress = Progress("soak", every=30)
        total_s = self.deadline - time.monotonic()
        while time.monotonic() < self.deadline:
            time.sleep(1)
            with self.stats.lock:
                ops, bad = sum(self.stats.ops.values()), sum(self.stats.unexpected.values())
            left = max(0, self.deadline - time.monotonic())
            progress.tick(f"{(total_s - left) / 60:.1f} of {total_s / 60:.1f} min: {ops} operations, "
                          f"{bad} unexpected errors, {len(self.stats.wrong_templates)} wrong templates")
        self.stop.set()
        for t in threads:
            t.join(timeout=HANG + 60)
            if t.is_alive():
                self.stats.error("soak_thread_hung", False, t.name)
        # Drain: every clone of every request closed, warm shells refilled.
        deadline = time.monotonic() + 20
        live = -1
        while time.monotonic() < deadline:
            try:
                live = self.live_clones()
            except OSError as e:
                self.stats.error("serve_metrics_unreachable", False, repr(e))
                break
            if live == 0 and self.serve_fds() <= fds_before:
                break
            time.sleep(0.5)
        fds_after = self.serve_fds()
        rss_final = proc_status(self.serve.pid, "VmRSS:")
        rss_hwm = proc_status(self.serve.pid, "VmHWM:")
        self.serve.send_signal(signal.SIGTERM)
        try:
            serve_status = self.serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.serve.kill()
            serve_status = "hang"
        if serve_status != 0:
            self.stats.error("serve_exit_unclean", False, str(serve_status))
        self.verify_continuity("the end")
        self.verify_digests()
        for name, d in self.templates.items():
            if name != "ping":
                st, _, err = run(self.vm + ["restore", d, "--exit-on-ready", "--timeout", "30"])
                if st != 0:
                    self.stats.error("good_template_refused", False, f"{name}: {err.strip()}")
        time.sleep(1)
        leaked_procs = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.work.encode() in f.read():
                        leaked_procs.append(int(pid))
            except OSError:
                pass
        with open("/proc/mounts") as f:
            leaked_mounts = [l.split()[1] for l in f if self.work in l]
        leaked_cgroups = sorted(cgroup_dirs() - cgroups_before)
        s = self.stats
        leaks = {"processes": leaked_procs, "mounts": leaked_mounts, "cgroups": leaked_cgroups,
                 "serve_fds": max(0, fds_after - fds_before), "serve_live_clones": live}
        leaked = any(leaks.values())
        ok = not leaked and not s.unexpected and not s.wrong_templates
        minutes = (time.monotonic() - self.started) / 60
        print(f"soak: {minutes:.1f} min, {sum(s.ops.values())} operations")
        for k, n in sorted(s.ops.items()):
            print(f"  op {k:40} {n:>7}")
        for k, n in sorted(s.expected.items()):
            print(f"  expected error {k:28} {n:>7}")
        for k, n in sorted(s.unexpected.items()):
            print(f"  UNEXPECTED error {k:26} {n:>7}")
        for d in s.details:
            print(f"    {d}")
        for w in s.wrong_templates:
            print(f"  WRONG TEMPLATE: {w}")
        print(f"  serve RSS: peak {max(self.rss + [rss_hwm]) // 1024} MiB (VmHWM), "
              f"final {rss_final // 1024} MiB; fds {fds_before} before, {fds_after} after; "
              f"live clones at the end {live}")
        print(f"  leaks: {json.dumps(leaks)}")
        print("soak: " + ("PASS" if ok else "FAIL"))
        print(json.dumps({
            "ok": ok, "minutes": round(minutes, 2), "operations": sum(s.ops.values()),
            "ops": dict(s.ops), "expected_errors": dict(s.expected),
            "unexpected_errors": dict(s.unexpected), "wrong_templates": len(s.wrong_templates),
            "serve_rss_peak_kib": max(self.rss + [rss_hwm]), "serve_rss_final_kib": rss_final,
            "serve_fds_before": fds_before, "serve_fds_after": fds_after,
            "live_clones_end": live, "leaks": leaks}))
        return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vmfork", required=True)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--vmfork-flag", action="append", default=[],
                    help="a global flag for every vmfork command (e.g. --no-seccomp)")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"soak: {args.minutes} min, seed {seed}")
    soak = Soak(os.path.abspath(args.vmfork), args.vmfork_flag, args.minutes, seed)
    try:
        code = soak.main()
    finally:
        for p in (soak.serve, soak.holder):
            if p and p.poll() is None:
                p.kill()
        mnt = os.path.join(soak.work, "tmpfs")
        subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", soak.work])
    sys.exit(code)


if __name__ == "__main__":
    main()
