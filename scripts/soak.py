#!/usr/bin/env python3
"""Soak test (scripts/soak.sh): for a bounded time, on loopback, everything
at once: `vmfork serve` under a mix of good requests, timeouts, oversize
bodies and crashing functions, and beside them abusive clients (FIN
floods, slowloris, oversize Content-Length and chunked bodies, many idle
connections); clones created and destroyed continuously (memfd, file,
uffd, uffd --prefetch, with and without shells, through a template holder,
half of them in a cgroup of their own); uffd page servers killed at random
moments (the VMFORK_FAULT_INJECT test hook) and the holder SIGKILLed at
random moments; template builds into a full 8 MiB tmpfs. After every
clone operation a good template is restored and must answer a ping with
the checksum it had at the start: anything else is a wrong template, a
critical error.

Judged (each failure makes the exit status 1):
- good requests (echo and json-upper, answers checked byte for byte)
  succeed at least MIN_GOOD_SUCCESS of the time; those answered 503 while
  an overload burst (deliberately more than --max-concurrency + --queue)
  was in progress are shed by design, counted apart and left out;
- serve's live clones (the /metrics gauge, sampled twice a second) never
  exceed --max-concurrency;
- serve's RSS and thread count at the end, after draining, are within
  RSS_MARGIN_KIB and THREAD_MARGIN of the highest values of the warm-up
  (the first WARMUP_FRACTION of the run, under the same full mix);
- slowloris and idle connections are closed by serve within its header
  and idle timeouts (plus CUT_SLACK_S); a half-closed request is answered;
- nothing leaks: processes, mounts, serve fds and live clones, and
  cgroups (each clone cgroup is removed after its run, as its manager
  would; one still holding a process cannot be removed and stays, a leak);
- no unexpected error and no wrong template.

Reports operations, faults injected and abusive clients tried by kind,
errors by kind (expected or not), the good requests' success rate, serve's
peak and final RSS and threads, live clones, fds and leaks. Last line:
JSON."""
import argparse, collections, hashlib, http.client, json, os, random, re, select, shutil, signal
import socket, subprocess, sys, tempfile, threading, time

from bench_progress import Progress

PING_CMDLINE = "touch_mib=1 timer_hz=0"
FUNC_CMDLINE = "quiet=1 timer_hz=0 touch_mib=1"
FUNCTIONS = ("echo", "json-upper", "crash", "spin")
MAX_BODY = 64 * 1024
HANG = 120  # seconds after which any vmfork command counts as hung
FDS_PER_POOLED_VM = 3  # a pooled VM holds its VM, vCPU and serial irqfd fds
WARM = 2
MAX_CONCURRENCY = 4
QUEUE = 8
MAX_CONNECTIONS = 256  # the idle and slowloris clients below get near it
HEADER_TIMEOUT_S = 5
IDLE_TIMEOUT_S = 10
BODY_TIMEOUT_S = 10
CUT_SLACK_S = 15  # how late serve may close a connection past its timeout

# Judgements.
MIN_GOOD_SUCCESS = 0.99
WARMUP_FRACTION = 0.25  # of the run (at most WARMUP_MAX_S) for the baselines
WARMUP_MAX_S = 60
# One clone's VM leaked per request would be >= 16 KiB of private memory
# and 3 fds each, thousands of requests: far more than allocator caches.
RSS_MARGIN_KIB = 32 * 1024
# tokio's blocking threads are capped (2 x --max-concurrency + functions
# + 1) and the runner and reaper threads are fixed: a leak of one thread
# per request or connection would be thousands.
THREAD_MARGIN = 8
THREADS_SETTLE_S = 15  # tokio's blocking threads idle out after 10 s

# The abusive clients.
SLOWLORIS_CONNECTIONS = 40
IDLE_CONNECTIONS = 200
FIN_FLOOD_BATCH = 3  # small: the flood must not shed the good traffic itself
# Unpaced, one thread of it ran ~1,100 requests a second here and took the
# 2-core host's CPU from everything else; paced, it is ~100 a second.
FIN_FLOOD_PAUSE_S = 0.03

# Clone operations run in a cgroup of their own this often (vmfork clone
# --cgroup), below CGROUP_PARENT; the soak removes each after its run.
CLONE_CGROUP_SHARE = 0.5
CGROUP_PARENT = f"vmfork-soak-{os.getpid()}"

# serve runs in its own group too: start_serve() passes --cgroup
# CGROUP_PARENT/serve, and main() removes it after serve exits, so the leak
# check covers it.
SERVE_CGROUP = True


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ops = collections.Counter()
        self.expected = collections.Counter()
        self.unexpected = collections.Counter()
        self.details = []  # the first unexpected errors, for the report
        self.wrong_templates = []
        self.faults = collections.Counter()  # faults injected, by kind
        self.abuse = collections.Counter()  # abusive clients tried, by kind
        self.abuse_outcomes = collections.Counter()
        self.good = collections.Counter()  # tried, ok, failed, shed_in_burst
        self.good_503 = []  # (sent, answered) of good requests shed with 503

    def fault(self, kind):
        with self.lock:
            self.faults[kind] += 1

    def abused(self, kind, outcome=None):
        with self.lock:
            if outcome is None:
                self.abuse[kind] += 1
            else:
                self.abuse_outcomes[f"{kind}: {outcome}"] += 1

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


def cgroup_dirs_named(name):
    """The directories of cgroup `name` (below a hierarchy root) in every
    hierarchy mounted under /sys/fs/cgroup (v2, or the v1 controllers)."""
    roots = ["/sys/fs/cgroup"] + [os.path.join("/sys/fs/cgroup", d) for d in os.listdir("/sys/fs/cgroup")]
    return [os.path.join(r, name) for r in roots if os.path.isdir(os.path.join(r, name))]


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
        self.samples = []  # (time, serve RSS KiB, serve threads)
        self.live_samples, self.live_peak = 0, -1
        self.burst_windows = []
        self.cgroup_serial = 0

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
               str(MAX_BODY), "--warm", str(WARM), "--max-concurrency", str(MAX_CONCURRENCY),
               "--queue", str(QUEUE), "--max-connections", str(MAX_CONNECTIONS),
               "--header-timeout", f"{HEADER_TIMEOUT_S}s", "--idle-timeout", f"{IDLE_TIMEOUT_S}s",
               "--body-timeout", f"{BODY_TIMEOUT_S}s"]
        for f in FUNCTIONS:
            cmd += ["--template", f"{f}={self.templates[f]}"]
        if SERVE_CGROUP:
            cmd += ["--cgroup", f"{CGROUP_PARENT}/serve"]
        self.serve_err = open(os.path.join(self.work, "serve.stderr"), "w")
        self.serve = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=self.serve_err, text=True)
        m = re.search(r"http://(\S+)", self.serve.stdout.readline())
        if not m:
            sys.exit("soak: serve did not start")
        self.addr = m.group(1)

    def http(self, method, path, body=None, timeout=30, headers=None):
        """(status, body); `headers`, a dict, gets the answer's headers."""
        host, port = self.addr.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            c.request(method, path, body=body)
            r = c.getresponse()
            if headers is not None:
                headers.update((k.lower(), v) for k, v in r.getheaders())
            return r.status, r.read()
        finally:
            c.close()

    def metric(self, name):
        _, text = self.http("GET", "/metrics", timeout=10)
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
        if kind in ("json_bad", "oversize", "crash", "spin", "unknown"):
            self.stats.fault(f"request_{kind}")
        good = expect == 200
        sent = time.monotonic()
        headers = {}
        try:
            status, answer = self.http("POST", f"/v1/functions/{fn}/invoke", body, headers=headers)
        except (ConnectionError, OSError) as e:
            # A server may answer 413 and close before the whole body is sent.
            self.stats.error(f"http_{kind}_connection", kind == "oversize", repr(e))
            if good:
                self.good_result("failed")
            return
        if status == 503:
            if good:
                with self.stats.lock:
                    self.stats.good_503.append((sent, time.monotonic()))
            retry = headers.get("retry-after")
            if retry != "1":
                self.stats.error("http_503_without_retry_after_1", False, f"Retry-After: {retry}")
            self.stats.error("http_overloaded_503", True)
            # Back off as the answer asks, as a well-behaved client does
            # (the abusive ones do not): otherwise this thread would spin
            # on instant 503s during a burst and inflate the count shed.
            self.stop.wait(1)
        elif status != expect:
            self.stats.error(f"http_{kind}_status_{status}", False, answer[:200])
            if good:
                self.good_result("failed")
        elif check and not check(answer):
            self.stats.wrong(f"serve {fn}: wrong answer {answer[:100]!r}")
            self.good_result("failed")
        elif expect != 200:
            self.stats.error(f"http_{kind}_{status}", True)
        else:
            self.good_result("ok")

    def good_result(self, outcome):
        with self.stats.lock:
            self.stats.good["tried"] += 1
            self.stats.good[outcome] += 1

    def traffic(self):
        while not self.stop.is_set():
            self.one_request()

    def burst(self):
        """More spinning requests than --max-concurrency 4 plus --queue 8:
        some must be turned away with 503, none may hang."""
        self.stats.op("http_burst")
        self.stats.fault("overload_burst_of_16")
        answers = []  # list.append is atomic; a Counter update is not
        start = time.monotonic()

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
        with self.stats.lock:
            self.burst_windows.append((start, time.monotonic()))
        for status, n in collections.Counter(answers).items():
            expected = status in (503, 504)
            self.stats.error(f"http_burst_{status}", expected, f"{n} answers")

    def sampler(self):
        """serve's RSS and threads, and its live clones against
        --max-concurrency, twice a second."""
        while not self.stop.wait(0.5):
            now = time.monotonic()
            rss, threads = proc_status(self.serve.pid, "VmRSS:"), proc_status(self.serve.pid, "Threads:")
            self.samples.append((now, rss, threads))
            self.rss.append(rss)
            try:
                live = self.live_clones()
            except OSError as e:
                self.stats.error("serve_metrics_unreachable", False, repr(e))
                continue
            self.live_samples += 1
            self.live_peak = max(self.live_peak, live)
            if live > MAX_CONCURRENCY:
                self.stats.error("live_clones_over_max_concurrency", False,
                                 f"{live} > {MAX_CONCURRENCY}")

    # ---- abusive clients ----

    def connect(self, timeout=10):
        host, port = self.addr.rsplit(":", 1)
        return socket.create_connection((host, int(port)), timeout=timeout)

    @staticmethod
    def read_status(sock):
        """The status of the answer on `sock` (None if it closed without
        one), reading until the server closes."""
        raw = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                raw += chunk
        except OSError:
            pass
        m = re.match(rb"HTTP/1\.1 (\d{3})", raw)
        return int(m.group(1)) if m else None

    def fin_flood(self):
        """Requests sent and then half-closed (shutdown(SHUT_WR)), a few at
        a time, in a loop: half are read (serve must still answer: 200, or
        503 when full), half hung up at once (their VMs must still count
        against --max-concurrency until stopped)."""
        request = (b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: soak\r\n"
                   b"Content-Length: 5\r\n\r\nhello")
        while not self.stop.wait(FIN_FLOOD_PAUSE_S):
            socks = []
            for _ in range(FIN_FLOOD_BATCH):
                try:
                    s = self.connect()
                    s.sendall(request)
                    s.shutdown(socket.SHUT_WR)
                    socks.append(s)
                    self.stats.abused("fin_flood")
                except OSError as e:
                    self.stats.error("fin_flood_connect", False, repr(e))
            for i, s in enumerate(socks):
                if i % 2 == 0:
                    status = self.read_status(s)
                    self.stats.abused("fin_flood", f"answered {status}")
                    if status not in (200, 503):
                        self.stats.error(f"fin_flood_answer_{status}", False, "half-closed request")
                else:
                    self.stats.abused("fin_flood", "hung up")
                s.close()

    def oversize(self):
        """Bodies over --max-body: by Content-Length (413 before the body is
        read, and before admission), and chunked (413 once the count passes
        it; admitted first, so 503 when serve is full). A reset while still
        sending is allowed: serve may close after answering."""
        rng = random.Random(self.rng.random())
        chunk = b"y" * 16384
        while not self.stop.wait(0.05):
            chunked = rng.random() < 0.5
            kind = "oversize_chunked" if chunked else "oversize_content_length"
            self.stats.abused(kind)
            try:
                s = self.connect()
            except OSError as e:
                self.stats.error(f"{kind}_connect", False, repr(e))
                continue
            try:
                if chunked:
                    s.sendall(b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: soak\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n")
                    for _ in range(MAX_BODY // len(chunk) + rng.randint(1, 8)):
                        s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    s.sendall(b"0\r\n\r\n")
                else:
                    length = MAX_BODY + rng.randint(1, 4 << 20)
                    s.sendall(b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: soak\r\n"
                              b"Content-Length: %d\r\n\r\n" % length)
                    s.sendall(chunk * rng.randint(0, 8))
            except OSError:
                pass  # closed under us: the answer, if any, is still readable
            s.settimeout(BODY_TIMEOUT_S + CUT_SLACK_S)
            status = self.read_status(s)
            s.close()
            self.stats.abused(kind, f"answered {status}")
            if status not in ((413, 503, None) if chunked else (413, None)):
                self.stats.error(f"{kind}_answer_{status}", False, "a body over --max-body")

    def held_connections(self, kind, count, limit_s, dribble):
        """Keeps `count` connections open: slowloris ones dribble a header
        that never ends, one byte each half second; idle ones send nothing.
        serve must close each within `limit_s`; a closed one is replaced."""
        head = b"POST /v1/functions/echo/invoke HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"z" * 100000
        conns = {}  # socket -> [opened, bytes sent]
        while not self.stop.wait(0.5):
            while len(conns) < count and not self.stop.is_set():
                try:
                    s = self.connect()
                except OSError as e:
                    self.stats.error(f"{kind}_connect", False, repr(e))
                    break
                s.setblocking(False)
                conns[s] = [time.monotonic(), 0]
                self.stats.abused(kind)
            readable, _, _ = select.select(list(conns), [], [], 0)
            now = time.monotonic()
            for s in list(conns):
                opened, sent = conns[s]
                closed = False
                if s in readable:
                    # EOF, a reset, or an answer (408, 400) before the close:
                    # the client never sends the rest, so serve is done with it.
                    try:
                        s.recv(65536)
                    except OSError:
                        pass
                    closed = True
                elif dribble:
                    try:
                        conns[s][1] += s.send(head[sent:sent + 1])
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed = True
                if closed:
                    self.stats.abused(kind, "closed by serve")
                    s.close()
                    del conns[s]
                    if now - opened > limit_s + CUT_SLACK_S:
                        self.stats.error(f"{kind}_closed_late", False, f"after {now - opened:.0f} s")
                elif now - opened > limit_s + CUT_SLACK_S:
                    self.stats.error(f"{kind}_not_closed", False, f"open {now - opened:.0f} s")
                    s.close()
                    del conns[s]
        for s in conns:
            s.close()

    def slowloris(self):
        self.held_connections("slowloris", SLOWLORIS_CONNECTIONS, HEADER_TIMEOUT_S, True)

    def idle(self):
        self.held_connections("idle", IDLE_CONNECTIONS, IDLE_TIMEOUT_S, False)

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
        cgroup = None
        if rng.random() < CLONE_CGROUP_SHARE:
            with self.stats.lock:
                self.cgroup_serial += 1
                cgroup = f"{CGROUP_PARENT}/clone-{self.cgroup_serial}"
            cmd += ["--cgroup", cgroup, "--memory-max", "1G", "--pids-max", "512"]
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
            self.stats.fault(f"uffd_page_server_{how}")
        if holder:
            allowed.add(17)  # the holder is dead or restarting: a clear error
        self.stats.op(kind)
        status, out, err = run(cmd, env=env)
        if cgroup:
            self.stats.op("clone_in_cgroup")
            self.remove_cgroup(cgroup)
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

    def remove_cgroup(self, name):
        """What the cgroup's manager does once vmfork has exited: rmdir it.
        A cgroup still holding a process (a clone's or worker's left
        behind) cannot be removed, stays, and is reported as a leak."""
        for d in cgroup_dirs_named(name):
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    procs = f.read().split()
            except OSError:
                procs = []
            if procs:
                self.stats.error("cgroup_still_has_processes", False, f"{d}: {procs}")
                continue
            try:
                os.rmdir(d)
            except OSError as e:
                self.stats.error("cgroup_rmdir_failed", False, f"{d}: {e}")

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
            self.stats.fault("holder_sigkill")
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
        self.stats.fault("template_build_into_8MiB_tmpfs")
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
        # The baseline fds once every function's warm shells are made.
        deadline = time.monotonic() + 60
        while self.metric("vmfork_pooled_vms") < WARM * len(FUNCTIONS):
            if time.monotonic() > deadline:
                sys.exit("soak: serve never filled its warm pools")
            time.sleep(0.05)
        fds_before = self.serve_fds()
        workers = (self.traffic, self.traffic, self.sampler, self.churn, self.holder_killer,
                   self.periodic, self.fin_flood, self.oversize, self.slowloris, self.idle)
        threads = [threading.Thread(target=t, daemon=True, name=t.__name__) for t in workers]
        for t in threads:
            t.start()
        warmup_end = time.monotonic() + min(WARMUP_MAX_S, WARMUP_FRACTION * (self.deadline - time.monotonic()))
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
        # The abusive clients' connections are closed (their threads ended):
        # wait until serve has let them go, then take the final figures.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.metric("vmfork_connections") > 1:
            time.sleep(0.2)
        warm = [(r, t) for (at, r, t) in self.samples if at <= warmup_end]
        rest = [(r, t) for (at, r, t) in self.samples if at > warmup_end]
        rss_base = max((r for r, _ in warm), default=0)
        threads_base = max((t for _, t in warm), default=0)
        # tokio ends a blocking thread after 10 s without work: threads made
        # for the last burst of work may still be there. Wait for the count
        # to come back within bounds, up to THREADS_SETTLE_S; leaked threads
        # never do.
        deadline = time.monotonic() + THREADS_SETTLE_S
        threads_final = proc_status(self.serve.pid, "Threads:")
        while threads_final > threads_base + THREAD_MARGIN and time.monotonic() < deadline:
            time.sleep(0.5)
            threads_final = proc_status(self.serve.pid, "Threads:")
        rss_final = proc_status(self.serve.pid, "VmRSS:")
        rss_hwm = proc_status(self.serve.pid, "VmHWM:")
        rss_peak_after = max((r for r, _ in rest), default=0)
        threads_peak = max((t for _, _, t in self.samples), default=0)
        closed = {}
        for reason in ("header_timeout", "idle_timeout", "evicted", "over_cap"):
            closed[reason] = self.metric(f'vmfork_connections_closed_total{{reason="{reason}"}}')
        self.serve.send_signal(signal.SIGTERM)
        try:
            serve_status = self.serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.serve.kill()
            serve_status = "hang"
        if serve_status != 0:
            self.serve_err.flush()
            with open(self.serve_err.name, errors="replace") as f:
                tail = [l.strip() for l in f.readlines()[-3:]]
            self.stats.error("serve_exit_unclean", False, f"{serve_status}: {' | '.join(tail)}")
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
        if SERVE_CGROUP:  # serve has exited; remove its group
            self.remove_cgroup(f"{CGROUP_PARENT}/serve")
        # The clone groups were removed after each run; their parent now.
        for d in cgroup_dirs_named(CGROUP_PARENT):
            try:
                os.rmdir(d)
            except OSError:
                pass  # a clone group left in it: reported below
        leaked_cgroups = sorted(cgroup_dirs() - cgroups_before)
        s = self.stats
        leaks = {"processes": leaked_procs, "mounts": leaked_mounts, "cgroups": leaked_cgroups,
                 "serve_fds": max(0, fds_after - fds_before), "serve_live_clones": live}
        leaked = any(leaks.values())

        # The good requests: a 503 whose request overlapped an overload burst
        # is shed by design; any other 503 is a failure.
        def in_burst(sent, answered):
            return any(sent <= end + 1 and answered >= start for start, end in self.burst_windows)
        shed = sum(1 for w in s.good_503 if in_burst(*w))
        other_503 = len(s.good_503) - shed
        good_ok = s.good["ok"]
        good_judged = good_ok + s.good["failed"] + other_503
        good_rate = good_ok / good_judged if good_judged else 0.0
        judgements = {
            "good_success_rate": good_judged > 0 and good_rate >= MIN_GOOD_SUCCESS,
            "live_clones_within_max_concurrency": self.live_samples > 0 and 0 <= self.live_peak <= MAX_CONCURRENCY,
            "rss_growth": rss_base > 0 and rss_final <= rss_base + RSS_MARGIN_KIB,
            "thread_growth": threads_base > 0 and threads_final <= threads_base + THREAD_MARGIN,
            "abusive_clients_tried": all(s.abuse[k] > 0 for k in (
                "fin_flood", "slowloris", "idle", "oversize_content_length", "oversize_chunked")),
            "no_leaks": not leaked,
            "no_unexpected_errors": not s.unexpected,
            "no_wrong_templates": not s.wrong_templates,
        }
        ok = all(judgements.values())
        minutes = (time.monotonic() - self.started) / 60
        print(f"soak: {minutes:.1f} min, {sum(s.ops.values())} operations")
        for k, n in sorted(s.ops.items()):
            print(f"  op {k:40} {n:>7}")
        for k, n in sorted(s.faults.items()):
            print(f"  fault injected {k:30} {n:>7}")
        for k, n in sorted(s.abuse.items()):
            print(f"  abusive client {k:30} {n:>7}")
        for k, n in sorted(s.abuse_outcomes.items()):
            print(f"    {k:42} {n:>7}")
        print(f"  serve closed connections: {json.dumps(closed)}")
        for k, n in sorted(s.expected.items()):
            print(f"  expected error {k:28} {n:>7}")
        for k, n in sorted(s.unexpected.items()):
            print(f"  UNEXPECTED error {k:26} {n:>7}")
        for d in s.details:
            print(f"    {d}")
        for w in s.wrong_templates:
            print(f"  WRONG TEMPLATE: {w}")
        print(f"  good requests: {s.good['tried'] + len(s.good_503)} sent, {good_ok} answered right, "
              f"{s.good['failed']} failed, {other_503} shed with 503 outside bursts; "
              f"success {100 * good_rate:.2f} % (minimum {100 * MIN_GOOD_SUCCESS:.0f} %); "
              f"{shed} more shed with 503 during the {len(self.burst_windows)} overload bursts (not judged)")
        print(f"  serve live clones: peak {self.live_peak} of --max-concurrency {MAX_CONCURRENCY} "
              f"over {self.live_samples} samples; at the end {live}")
        print(f"  serve RSS: warm-up max {rss_base / 1024:.1f} MiB, peak after it {rss_peak_after / 1024:.1f} MiB, "
              f"final {rss_final / 1024:.1f} MiB (limit {(rss_base + RSS_MARGIN_KIB) / 1024:.1f}), "
              f"VmHWM {rss_hwm / 1024:.1f} MiB")
        print(f"  serve threads: warm-up max {threads_base}, peak {threads_peak}, final {threads_final} "
              f"(limit {threads_base + THREAD_MARGIN})")
        print(f"  serve fds {fds_before} before, {fds_after} after (less the pooled VMs')")
        print(f"  leaks: {json.dumps(leaks)}")
        for k, v in judgements.items():
            print(f"  judgement {k:40} {'ok' if v else 'FAILED'}")
        print("soak: " + ("PASS" if ok else "FAIL"))
        print(json.dumps({
            "ok": ok, "minutes": round(minutes, 2), "operations": sum(s.ops.values()),
            "ops": dict(s.ops), "faults": dict(s.faults), "abusive_clients": dict(s.abuse),
            "abusive_outcomes": dict(s.abuse_outcomes), "connections_closed": closed,
            "expected_errors": dict(s.expected),
            "unexpected_errors": dict(s.unexpected), "wrong_templates": len(s.wrong_templates),
            "good_requests": {"ok": good_ok, "failed": s.good["failed"], "503_outside_bursts": other_503,
                              "503_in_bursts": shed, "success_rate": round(good_rate, 5)},
            "live_clones_peak": self.live_peak, "max_concurrency": MAX_CONCURRENCY,
            "serve_rss_warmup_max_kib": rss_base, "serve_rss_peak_kib": max(self.rss + [rss_hwm]),
            "serve_rss_final_kib": rss_final, "serve_threads_warmup_max": threads_base,
            "serve_threads_peak": threads_peak, "serve_threads_final": threads_final,
            "serve_fds_before": fds_before, "serve_fds_after": fds_after,
            "live_clones_end": live, "leaks": leaks, "judgements": judgements}))
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
