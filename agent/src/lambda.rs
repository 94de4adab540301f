//! Runs an unmodified AWS Lambda function: the Runtime API (version
//! 2018-06-01, as AWS documents it) served over HTTP/1.1 on loopback, one
//! invocation at a time. `start` returns when the function waits in its
//! first `next`, the point a template is taken at.

use std::io::{self, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, LockResult, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::lambda_http::{error, read_request, response, Fail, Request, BODY_LIMIT, JSON};
use crate::sys;

pub const RUNTIME_API_ADDR: &str = "127.0.0.1:9001";

const PREFIX: &str = "/2018-06-01/runtime/";
/// What is kept of the output during init, and before the first `invoke`
/// sets its own cap.
const OUTPUT_CAP: usize = 1 << 20;
/// How long the output of a dead function may take to reach its end: a
/// process that left its group may hold the pipes open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// One invocation handed to the function.
#[derive(Debug)]
pub struct Invocation {
    pub request_id: String,
    /// Unix epoch milliseconds.
    pub deadline_ms: u64,
    pub function_arn: String,
    pub trace_id: Option<String>,
    pub client_context: Option<String>,
    pub cognito_identity: Option<String>,
    pub body: Vec<u8>,
}

#[derive(Debug)]
pub enum Reply {
    /// POST .../invocation/{id}/response: the body.
    Response(Vec<u8>),
    /// POST .../invocation/{id}/error, with its Lambda-Runtime-Function-Error-Type.
    Error {
        error_type: Option<String>,
        body: Vec<u8>,
    },
    /// No reply before the timeout.
    TimedOut,
    /// The function's process ended before replying.
    Exited(ExitStatus),
}

/// Why the function did not reach its first `next`.
#[derive(Debug)]
pub struct InitFailure {
    pub why: String,
    pub output: Vec<u8>,
}

/// An invocation as `next` answers it.
struct Handoff {
    id: String,
    head: String,
    body: Vec<u8>,
}

#[derive(Default)]
struct State {
    initializing: bool,
    init_error: Option<Vec<u8>>,
    nexts_waiting: usize,
    pending: Option<Handoff>,
    /// The id that may still be answered.
    current: Option<String>,
    reply: Option<Reply>,
    exited: Option<ExitStatus>,
    open_streams: usize,
    output: Vec<u8>,
    output_cap: usize,
    output_cut: bool,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

type Guard<'a> = MutexGuard<'a, State>;

/// A holder that panicked left plain data behind, still usable.
fn relock<T>(result: LockResult<T>) -> T {
    result.unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn lock(&self) -> Guard<'_> {
        relock(self.state.lock())
    }

    /// Waits until `done` holds or `until` (None: never) passes.
    fn wait_for(&self, until: Option<Instant>, done: impl Fn(&State) -> bool) -> Guard<'_> {
        let mut s = self.lock();
        while !done(&s) {
            s = match until.map(|d| d.saturating_duration_since(Instant::now())) {
                None => relock(self.changed.wait(s)),
                Some(left) if left.is_zero() => break,
                Some(left) => relock(self.changed.wait_timeout(s, left)).0,
            };
        }
        s
    }

    /// The state once both output streams ended, or the grace passed.
    fn output_done(&self) -> Guard<'_> {
        let until = Instant::now().checked_add(OUTPUT_GRACE);
        self.wait_for(until, |s| s.open_streams == 0)
    }
}

pub struct Runtime {
    shared: Arc<Shared>,
    pid: u32,
    addr: SocketAddr,
}

type Echo = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Drains one of the function's streams so it never blocks on a full pipe.
fn pump(from: Option<impl Read + Send + 'static>, shared: Arc<Shared>, echo: Echo) {
    let Some(mut from) = from else { return };
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut s = shared.lock();
            let room = s.output_cap.saturating_sub(s.output.len());
            s.output_cut |= n > room;
            s.output.extend_from_slice(&buf[..n.min(room)]);
            let echoing = s.initializing;
            drop(s);
            if echoing {
                echo(&buf[..n]);
            }
        }
        shared.lock().open_streams -= 1;
        shared.changed.notify_all();
    });
}

impl Runtime {
    /// Binds `addr`, starts `command` with AWS_LAMBDA_RUNTIME_API set to it
    /// (stdin null, stdout and stderr piped, in its own process group) and
    /// returns once it waits in its first `next`. `echo` sees its output
    /// until then. On failure the function's group is killed.
    pub fn start(
        addr: &str,
        mut command: Command,
        timeout: Option<Duration>,
        echo: impl Fn(&[u8]) + Send + Sync + 'static,
    ) -> Result<Runtime, InitFailure> {
        let fail = |why| InitFailure {
            why,
            output: vec![],
        };
        let listener = TcpListener::bind(addr)
            .map_err(|e| fail(format!("cannot listen for the runtime API on {addr}: {e}")))?;
        let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
        command.env("AWS_LAMBDA_RUNTIME_API", addr.to_string());
        command.stdin(Stdio::null()).stdout(Stdio::piped());
        // Its own group, so tearing down kills what it started too.
        command.stderr(Stdio::piped()).process_group(0);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Err(fail(format!("cannot start the function: {e}"))),
        };
        let (out, err) = (child.stdout.take(), child.stderr.take());
        let state = State {
            initializing: true,
            output_cap: OUTPUT_CAP,
            open_streams: usize::from(out.is_some()) + usize::from(err.is_some()),
            ..State::default()
        };
        let (state, changed) = (Mutex::new(state), Condvar::new());
        let shared = Arc::new(Shared { state, changed });
        let echo: Echo = Arc::new(echo);
        pump(out, shared.clone(), echo.clone());
        pump(err, shared.clone(), echo);
        let (pid, waiter, accepting) = (child.id(), shared.clone(), shared.clone());
        thread::spawn(move || {
            // It only fails if someone else reaped the child (PID 1 reaps
            // orphans): gone all the same, its status unknown.
            let status = child.wait().unwrap_or(ExitStatus::from_raw(0));
            waiter.lock().exited = Some(status);
            waiter.changed.notify_all();
        });
        thread::spawn(move || accept(listener, accepting));
        let runtime = Runtime { shared, pid, addr };

        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        let mut s = runtime.shared.wait_for(until, |s| {
            s.init_error.is_some() || s.exited.is_some() || s.nexts_waiting > 0
        });
        let why = if let Some(body) = s.init_error.take() {
            let body = String::from_utf8_lossy(&body);
            format!("the function reported an init error: {body}")
        } else if let Some(status) = s.exited {
            format!("the function ended before waiting for an invocation: {status}")
        } else if s.nexts_waiting > 0 {
            s.initializing = false;
            s.output = Vec::new();
            s.output_cut = false;
            drop(s);
            return Ok(runtime);
        } else {
            let t = timeout.unwrap_or_default();
            format!("the function did not wait for an invocation within {t:?}")
        };
        drop(s);
        sys::kill_group(pid, sys::SIGKILL);
        let output = std::mem::take(&mut runtime.shared.output_done().output);
        Err(InitFailure { why, output })
    }

    /// Hands `inv` to the waiting `next` and waits for the reply, up to
    /// `timeout`. Also returns the output since the previous call, its first
    /// `log_cap` bytes, and whether some was dropped. Output written just
    /// before a reply may race it and land in the next call's logs.
    pub fn invoke(
        &mut self,
        inv: Invocation,
        timeout: Option<Duration>,
        log_cap: usize,
    ) -> (Reply, Vec<u8>, bool) {
        let until = timeout.and_then(|t| Instant::now().checked_add(t));
        let handoff = Handoff::of(inv);
        let mut s = self.shared.lock();
        s.output_cap = log_cap;
        s.output_cut |= s.output.len() > log_cap;
        s.output.truncate(log_cap);
        s.reply = None;
        s.current = Some(handoff.id.clone());
        s.pending = Some(handoff);
        drop(s);
        self.shared.changed.notify_all();
        let done = |s: &State| s.reply.is_some() || s.exited.is_some();
        let mut s = self.shared.wait_for(until, done);
        (s.current, s.pending) = (None, None);
        let reply = match (s.reply.take(), s.exited) {
            (Some(reply), _) => reply,
            (None, Some(status)) => {
                drop(s);
                s = self.shared.output_done();
                Reply::Exited(status)
            }
            (None, None) => Reply::TimedOut,
        };
        let cut = std::mem::take(&mut s.output_cut);
        (reply, std::mem::take(&mut s.output), cut)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.changed.notify_all();
        sys::kill_group(self.pid, sys::SIGKILL);
        // accept() only returns for a connection: this one lets it see the
        // shutdown and free the port.
        let _ = TcpStream::connect(self.addr);
    }
}

impl Handoff {
    fn of(inv: Invocation) -> Handoff {
        // CR or LF in a value would let it write headers of its own.
        let clean = |v: &str| v.replace(['\r', '\n', '\0'], "");
        let (id, arn) = (clean(&inv.request_id), clean(&inv.function_arn));
        let mut head = format!(
            "Lambda-Runtime-Aws-Request-Id: {id}\r\nLambda-Runtime-Deadline-Ms: {}\r\n\
             Lambda-Runtime-Invoked-Function-Arn: {arn}\r\n{JSON}",
            inv.deadline_ms
        );
        let optional = [
            ("Trace-Id", inv.trace_id),
            ("Client-Context", inv.client_context),
            ("Cognito-Identity", inv.cognito_identity),
        ];
        for (name, value) in optional {
            if let Some(v) = value {
                head.push_str(&format!("Lambda-Runtime-{name}: {}\r\n", clean(&v)));
            }
        }
        let body = inv.body;
        Handoff { id, head, body }
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.lock().shutdown {
            return;
        }
        match conn {
            Ok(stream) => {
                let shared = shared.clone();
                // Out of threads: this connection is dropped, not the agent.
                let _ = thread::Builder::new().spawn(move || serve(stream, &shared));
            }
            // Out of descriptors, say: do not spin on it.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let (mut reader, mut out) = (BufReader::new(read_half), stream);
    loop {
        match read_request(&mut reader, &mut out) {
            Ok(Some(req)) if route(shared, &req, &mut out) && req.keep_alive => {}
            Ok(_) | Err(Fail::Gone) => return,
            Err(Fail::Status(status, kind)) => {
                let _ = out.write_all(&error(status, kind, "", "Connection: close\r\n"));
                // Closing with unread input resets the connection, which can
                // destroy the answer before the client reads it.
                let _ = out.shutdown(Shutdown::Write);
                let _ = out.set_read_timeout(Some(Duration::from_millis(500)));
                let _ = io::copy(&mut reader.take(2 * BODY_LIMIT as u64), &mut io::sink());
                return;
            }
        }
    }
}

/// Answers `req`; false when the connection is unusable.
fn route(shared: &Shared, req: &Request, out: &mut TcpStream) -> bool {
    let conn = req.connection;
    let path = req.path.strip_prefix(PREFIX).unwrap_or_default();
    let (method, id, is_error) = match path.split('/').collect::<Vec<_>>()[..] {
        ["invocation", "next"] => ("GET", None, false),
        ["init", "error"] => ("POST", None, true),
        ["invocation", id, "response"] if !id.is_empty() => ("POST", Some(id), false),
        ["invocation", id, "error"] if !id.is_empty() => ("POST", Some(id), true),
        _ => {
            return out
                .write_all(&error("404 Not Found", "NotFound", "", conn))
                .is_ok()
        }
    };
    if req.method != method {
        let allow = format!("Allow: {method}\r\n");
        let bytes = error("405 Method Not Allowed", "MethodNotAllowed", &allow, conn);
        return out.write_all(&bytes).is_ok();
    }
    if !is_error && id.is_none() {
        return next(shared, conn, out);
    }
    let mut s = shared.lock();
    match id {
        // Only the first report counts, and only during init.
        None if s.initializing && s.init_error.is_none() => s.init_error = Some(req.body.clone()),
        None => {}
        Some(id) if s.current.as_deref() != Some(id) => {
            drop(s);
            let bytes = error("400 Bad Request", "InvalidRequestID", "", conn);
            return out.write_all(&bytes).is_ok();
        }
        Some(_) => {
            (s.current, s.pending) = (None, None);
            let body = req.body.clone();
            let error_type = req.header("lambda-runtime-function-error-type");
            let error_type = error_type.map(str::to_string);
            s.reply = Some(if is_error {
                Reply::Error { error_type, body }
            } else {
                Reply::Response(body)
            });
        }
    }
    drop(s);
    shared.changed.notify_all();
    out.write_all(&response("202 Accepted", JSON, br#"{"status":"OK"}"#, conn))
        .is_ok()
}

/// Waits for an invocation and answers with it.
fn next(shared: &Shared, conn: &str, out: &mut TcpStream) -> bool {
    let mut s = shared.lock();
    s.nexts_waiting += 1;
    shared.changed.notify_all();
    while s.pending.is_none() && !s.shutdown {
        s = relock(shared.changed.wait(s));
    }
    s.nexts_waiting -= 1;
    let Some(handoff) = s.pending.take() else {
        return false;
    };
    drop(s);
    if out
        .write_all(&response("200 OK", &handoff.head, &handoff.body, conn))
        .is_ok()
    {
        return true;
    }
    // Its client is gone: the invocation waits for the function's next `next`.
    let mut s = shared.lock();
    if s.current.as_deref() == Some(&handoff.id) && s.pending.is_none() {
        s.pending = Some(handoff);
        shared.changed.notify_all();
    }
    false
}

#[cfg(test)]
#[path = "lambda_tests.rs"]
mod tests;
