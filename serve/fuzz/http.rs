//! Fuzz target: the HTTP request path of `vmfork serve` (src/serve/http.rs),
//! a real router on a real loopback socket with real functions (echo,
//! sha256, json-upper, counter), each request run in a fresh KVM clone.
//! Shared by examples/fuzz_http.rs and tests/fuzz_http_corpus.rs; needs
//! /dev/kvm.
//!
//! An input is the raw bytes a client sends on one connection (then it
//! half-closes). Checks: the server never panics and never hangs; what it
//! sends back is well-formed HTTP/1.1 with a status from the documented
//! set (docs/serve.md, plus the parser's 4xx/5xx); when the request is
//! plain enough to parse strictly (fuzz/http_wire.rs), a 200 from a
//! function carries exactly that function's answer to that body, from a
//! fresh clone (`x-vmfork-invocations: 1`); the server answers /healthz
//! after every input; and, every few thousand inputs, every clone has been
//! reaped and no file descriptors leaked.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuzzer::{Limits, Outcome, Rng, Target};
use sha2::{Digest, Sha256};
use vmfork_machine::boot::loader::{BootProtocol, KernelSource};
use vmfork_machine::control::StopReason;
use vmfork_machine::devices::console::Console;
use vmfork_machine::machine::{Machine, MachineConfig};
use vmfork_serve::http::{router, AppState};
use vmfork_serve::server::{serve, Drained};
use vmfork_serve::{new_state, HttpLimits, ServeConfig};

#[path = "http_seeds.rs"]
mod http_seeds;
#[path = "http_wire.rs"]
mod http_wire;

use http_wire::{parse_requests, parse_responses, percent_decode, Request, Response};

const FUNCTIONS: [&str; 4] = ["echo", "sha256", "json-upper", "counter"];
/// Small, so that 413 is reachable with inputs of a fuzzer's size.
pub const MAX_BODY: usize = 64 << 10;
/// A response takes a clone and a function run: milliseconds. Far past
/// that, the server is stuck.
const READ_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a waiting read wakes up to decide whether to half-close.
const TICK: Duration = Duration::from_millis(5);
/// For inputs that do not parse strictly: hyper answers what it cannot
/// parse at once, so this long without a byte means it waits for more.
const QUIET: Duration = Duration::from_millis(50);
/// Statuses the server may answer with: the documented ones and hyper's
/// and axum's own refusals of malformed requests. 500, 502 (the guest
/// crashed running echo?), 503 (one client cannot overload it) and 504 are
/// findings.
const ALLOWED: [u16; 11] = [200, 400, 404, 405, 408, 413, 414, 417, 422, 431, 505];

pub struct HttpTarget {
    addr: SocketAddr,
    state: Option<Arc<AppState>>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Drained>>,
    reapers: Vec<std::thread::JoinHandle<()>>,
    fds_at_start: usize,
    /// Held for its `Drop` only, and last: the templates go after the
    /// server and the reapers are gone.
    _scratch: Scratch,
}

/// The templates' directory, removed however the harness ends.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, String> {
        let dir = std::env::temp_dir().join(format!("vmfork-fuzz-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Cold-boots the embedded guest with `function` and saves it at its
/// ready point as a template in `out`: what `vmfork template build
/// --function NAME --mem 32M` does, in this process (no binary needed, and
/// no seccomp filters: library users run unfiltered).
fn build_template(function: &str, out: &Path) -> Result<(), String> {
    let failed = |e: vmfork_machine::Error| format!("building the {function} template: {e}");
    let machine = Machine::cold_boot(MachineConfig {
        kernel: KernelSource::Embedded(vmfork_machine::EMBEDDED_GUEST),
        initrd: None,
        rootfs: None,
        mem_size: 32 << 20,
        vcpus: 1,
        cmdline: format!("quiet=1 timer_hz=0 touch_mib=1 function={function}"),
        protocol: BootProtocol::Linux64,
        console: Console::Discard,
        exit_on_ready: false,
        started: Instant::now(),
    })
    .map_err(failed)?;
    let commands = machine.control().commands().clone();
    let latch = machine.control().latch().clone();
    let running = machine.start().map_err(failed)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    if !(commands.wait_parked(Some(deadline)) && commands.ready_at().is_some()) {
        let why = latch.reason();
        let _ = running.stop(StopReason::Requested);
        return Err(format!("the {function} guest never became ready: {why:?}"));
    }
    let mut machine = running.pause().map_err(failed)?;
    vmfork_template::snapshot(&mut machine, out, false).map_err(failed)?;
    Ok(())
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

impl HttpTarget {
    /// Builds one template per function and starts the server.
    pub fn start() -> Result<HttpTarget, String> {
        let scratch = Scratch::new()?;
        let mut templates = Vec::new();
        for name in FUNCTIONS {
            let dir = scratch.0.join(name);
            build_template(name, &dir)?;
            templates.push((name.to_string(), dir));
        }
        let config = ServeConfig {
            api_gateway: Vec::new(),
            templates,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_concurrency: 8,
            queue: 64,
            timeout: Duration::from_secs(5),
            max_body: MAX_BODY,
            warm: 1,
            cold_boot: false,
            recycle: vmfork_serve::Recycle::InPlace,
            http: HttpLimits::default(),
            max_output: vmfork_machine::exec::DEFAULT_OUTPUT_CAP,
            memory: 128 << 20,
            admin_token: None,
            state_dir: None,
            max_module: 1 << 20,
            trust: Default::default(),
        };
        let (state, reapers) = new_state(&config).map_err(|e| e.to_string())?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(config.listen))
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let app = router(state.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (vms, metrics) = (state.limits.clone(), state.metrics.clone());
        let server = runtime.spawn(async move {
            serve(listener, app, config.http, vms, metrics, async move {
                let _ = stopped.await;
            })
            .await
        });
        let mut target = HttpTarget {
            addr,
            state: Some(state),
            runtime: Some(runtime),
            stop: Some(stop),
            server: Some(server),
            reapers,
            fds_at_start: 0,
            _scratch: scratch,
        };
        target.healthy()?;
        target.settle()?;
        target.fds_at_start = open_fds();
        Ok(target)
    }

    /// One exchange on a fresh connection: everything `input` holds, then
    /// everything the server sends until it closes. The write side is
    /// half-closed only once nothing more is owed, as it was while the
    /// server took a half-close as the client leaving (docs/fuzzing.md,
    /// finding 4; fixed). What is owed: one response per request
    /// when the input parses strictly, else whatever comes until the
    /// server has been quiet for a moment.
    fn exchange(&self, input: &[u8], requests: Option<&[Request]>) -> Result<Vec<u8>, String> {
        let mut stream = TcpStream::connect(self.addr).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(TICK))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(READ_TIMEOUT))
            .map_err(|e| e.to_string())?;
        // The server may answer (413, 400) and close before reading it all.
        let _ = stream.write_all(input);
        let is_head = |i: usize| is_head(requests, i);
        let started = Instant::now();
        let mut quiet_since = Instant::now();
        let mut half_closed = false;
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 << 10];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return Ok(raw),
                Ok(n) => {
                    raw.extend_from_slice(&buf[..n]);
                    quiet_since = Instant::now();
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let answered = parse_responses(&raw, is_head).map_or(0, |r| r.len());
                    let owed_all = match requests {
                        Some(r) => answered >= r.len(),
                        None => quiet_since.elapsed() >= QUIET,
                    };
                    if owed_all && !half_closed {
                        // Now the server closes as soon as it reads the end.
                        let _ = stream.shutdown(Shutdown::Write);
                        half_closed = true;
                    }
                }
                // Closing with our unread bytes queued makes the server's
                // kernel reset the connection: an end like any other.
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Ok(raw),
                Err(e) => return Err(format!("reading the response: {e}")),
            }
            if started.elapsed() > READ_TIMEOUT {
                return Err(format!(
                    "no end of the response after {:?} ({} bytes)",
                    READ_TIMEOUT,
                    raw.len()
                ));
            }
            if raw.len() > 8 << 20 {
                return Err("more than 8 MiB of response".into());
            }
        }
    }

    fn healthy(&self) -> Result<(), String> {
        let request = b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
        let raw = self.exchange(request, parse_requests(request).as_deref())?;
        let ok = parse_responses(&raw, |_| Some(false))
            .is_ok_and(|r| r.len() == 1 && r[0].status == 200 && r[0].body == b"ok\n");
        ok.then_some(())
            .ok_or_else(|| format!("/healthz answered {:?}", String::from_utf8_lossy(&raw)))
    }

    /// Waits until every clone has been reaped.
    fn settle(&self) -> Result<(), String> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let live = state.metrics.live_clones.load(Ordering::Relaxed);
            if live == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{live} clones still alive 20 s after their requests"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let (Some(runtime), Some(server)) = (&self.runtime, self.server.take()) {
            let _ = runtime
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), server).await });
        }
        self.state = None;
        self.runtime = None;
        for r in self.reapers.drain(..) {
            let _ = r.join();
        }
    }
}

/// Whether the `i`th response answers a HEAD (no body); `None` when the
/// input does not parse strictly.
fn is_head(requests: Option<&[Request]>, i: usize) -> Option<bool> {
    requests.map(|r| r.get(i).is_some_and(|r| r.method == "HEAD"))
}

/// What a 200 from `request`'s function must carry, if it is a function.
fn expected_answer(request: &Request) -> Option<Vec<u8>> {
    let name = request
        .path
        .strip_prefix("/v1/functions/")?
        .strip_suffix("/invoke")?;
    if request.method != "POST" || name.contains('/') {
        return None;
    }
    let body = &request.body;
    Some(match percent_decode(name)?.as_str() {
        "echo" => body.clone(),
        "sha256" => Sha256::digest(body)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
        "counter" => b"1".to_vec(),
        // Letters inside strings are uppercased and nothing else changes.
        "json-upper" => body.to_ascii_uppercase(),
        _ => return None,
    })
}

fn check_answer(i: usize, request: &Request, response: &Response, o: &mut Outcome) {
    if response.status != 200 {
        return;
    }
    match expected_answer(request) {
        Some(want) => {
            o.check(request.body.len() <= MAX_BODY, "limit", || {
                format!("request {i}: 200 for a {}-byte body", request.body.len())
            });
            let got = if request.path.contains("json-upper") {
                response.body.to_ascii_uppercase()
            } else {
                response.body.clone()
            };
            o.check(got == want, "answer", || {
                format!(
                    "request {i} to {}: {} bytes back, {} expected",
                    request.path,
                    response.body.len(),
                    want.len()
                )
            });
            o.check(
                response.header("x-vmfork-invocations") == Some("1"),
                "fresh-clone",
                || {
                    format!(
                        "request {i}: x-vmfork-invocations {:?}",
                        response.header("x-vmfork-invocations")
                    )
                },
            );
        }
        None => {
            let known = ["/healthz", "/metrics", "/v1/functions"].contains(&request.path.as_str());
            o.check(known, "route", || {
                format!("request {i}: 200 for {} {}", request.method, request.path)
            });
        }
    }
}

impl Target for HttpTarget {
    const NAME: &'static str = "fuzz_http";
    const EXTENSION: &'static str = "http";

    fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/http")
    }

    fn seeds() -> Vec<(String, Vec<u8>)> {
        http_seeds::seeds()
    }

    fn run(&mut self, input: &[u8], _rng: &mut Rng) -> Outcome {
        let mut o = Outcome::new("", "");
        let requests = parse_requests(input);
        let raw = match self.exchange(input, requests.as_deref()) {
            Ok(raw) => raw,
            Err(e) => {
                o.find("hang", e);
                return o;
            }
        };
        let responses = match parse_responses(&raw, |i| is_head(requests.as_deref(), i)) {
            Ok(r) => r,
            Err(e) => {
                o.class = "garbled".into();
                o.find(
                    "response",
                    format!(
                        "{e}; raw {:?}",
                        String::from_utf8_lossy(&raw[..raw.len().min(400)])
                    ),
                );
                return o;
            }
        };
        let statuses: Vec<String> = responses
            .iter()
            .take(4)
            .map(|r| r.status.to_string())
            .collect();
        o.class = if statuses.is_empty() {
            "none".into()
        } else {
            statuses.join("+")
        };
        let first_body: String = responses
            .first()
            .map(|r| {
                String::from_utf8_lossy(&r.body[..r.body.len().min(40)])
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .collect()
            })
            .unwrap_or_default();
        o.feature = format!("{} {} {first_body}", o.class, requests.is_some());
        for (i, r) in responses.iter().enumerate() {
            o.check(ALLOWED.contains(&r.status), "status", || {
                format!(
                    "response {i}: {} {:?}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                )
            });
        }
        if let Some(requests) = &requests {
            o.check(responses.len() <= requests.len(), "desync", || {
                format!(
                    "{} responses to {} requests",
                    responses.len(),
                    requests.len()
                )
            });
            for (i, (request, response)) in requests.iter().zip(&responses).enumerate() {
                check_answer(i, request, response, &mut o);
            }
        }
        if let Err(e) = self.healthy() {
            o.find("unhealthy", e);
        }
        o
    }

    fn mutate(&mut self, rng: &mut Rng, _pool: &[Vec<u8>], data: &mut Vec<u8>) -> bool {
        match rng.below(3) {
            0 => *data = http_wire::generate(rng),
            1 => data.extend(http_wire::generate(rng)),
            _ => {
                // Re-send the first request's body chunked.
                let Some(requests) = parse_requests(data) else {
                    return false;
                };
                let Some(first) = requests.first() else {
                    return false;
                };
                let mut out = format!(
                    "{} {} HTTP/1.1\r\nHost: fuzz\r\nTransfer-Encoding: chunked\r\n\r\n",
                    first.method, first.path
                )
                .into_bytes();
                out.extend(http_wire::chunk(rng, &first.body));
                *data = out;
            }
        }
        true
    }

    fn repair(&mut self, rng: &mut Rng, data: &mut Vec<u8>) {
        if rng.chance(50) {
            http_wire::fix_length(data);
        }
    }

    fn dictionary(&self) -> &[&[u8]] {
        &[
            b"GET ",
            b"POST ",
            b"HEAD ",
            b" HTTP/1.1\r\n",
            b" HTTP/1.0\r\n",
            b"/v1/functions/echo/invoke",
            b"/v1/functions/json-upper/invoke",
            b"/healthz",
            b"/metrics",
            b"%00",
            b"%2F",
            b"%ff",
            b"%",
            b"\r\n",
            b"\r\n\r\n",
            b"\n",
            b"Content-Length: ",
            b"Transfer-Encoding: chunked\r\n",
            b"0\r\n\r\n",
            b"ffffffffffffffff\r\n",
            b"Connection: close\r\n",
            b"Expect: 100-continue\r\n",
            b"Host: x\r\n",
            b": ",
            b"\x00",
            b" ",
            b"\t",
            b"{\"a\": \"b\"}",
        ]
    }

    fn limits(&self) -> Limits {
        Limits {
            max_input: 128 << 10,
            // A request and its clone: hyper's buffers, the body (at most
            // MAX_BODY), vCPU and VM state. A Content-Length the server
            // believed would show up as one allocation far past this.
            alloc_slack: 8 << 20,
            // Far past the milliseconds a clone takes, even on a loaded host.
            slow: Duration::from_secs(20),
            structured_percent: 30,
        }
    }

    fn check_health(&mut self) -> Option<String> {
        if let Err(e) = self.settle() {
            return Some(e);
        }
        let fds = open_fds();
        (fds > self.fds_at_start + 64)
            .then(|| format!("{fds} open fds, {} at start", self.fds_at_start))
    }
}
