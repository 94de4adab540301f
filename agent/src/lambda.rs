//! Runs an unmodified AWS Lambda function: the Runtime API (version
//! 2018-06-01, as AWS documents it) served over HTTP/1.1 on loopback, one
//! invocation at a time. `start` returns when the function waits in its
//! first `next`, the point a template is taken at.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, LockResult, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::sys;

pub const RUNTIME_API_ADDR: &str = "127.0.0.1:9001";

const PREFIX: &str = "/2018-06-01/runtime/";
const HEAD_LIMIT: usize = 64 * 1024;
/// Lambda's payload limit.
const BODY_LIMIT: usize = 6 * 1024 * 1024;
/// What is kept of the output during init, and before the first `invoke`
/// sets its own cap.
const OUTPUT_CAP: usize = 1 << 20;
/// How long the output of a dead function may take to reach its end: a
/// process that left its group may hold the pipes open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
const JSON: &str = "Content-Type: application/json\r\n";

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

    /// The function's process id, also its process group's.
    pub fn pid(&self) -> u32 {
        self.pid
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

/// Why a connection ends: an answer first (status, errorType),
/// or none when the client is gone or cut its request short.
#[derive(Clone, Copy)]
enum Fail {
    Status(&'static str, &'static str),
    Gone,
}

type Line = Result<Option<Vec<u8>>, Fail>;

const BAD: Fail = Fail::Status("400 Bad Request", "InvalidRequest");
const HEAD_TOO_LARGE: Fail = Fail::Status("431 Request Header Fields Too Large", "HeadTooLarge");
const TOO_LARGE: Fail = Fail::Status("413 Payload Too Large", "RequestEntityTooLarge");
const CODING: Fail = Fail::Status("501 Not Implemented", "NotImplemented");

#[derive(Default)]
struct Request {
    method: String,
    path: String,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    keep_alive: bool,
    /// The Connection header the answer needs, if any.
    connection: &'static str,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        values.next().map(|(_, v)| v.as_str())
    }

    /// The comma-separated tokens of every `name` header, lowercased.
    fn tokens(&self, name: &str) -> Vec<String> {
        let values = self.headers.iter().filter(|(n, _)| n == name);
        let tokens = values.flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()));
        tokens.filter(|t| !t.is_empty()).collect()
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

/// One line without its CRLF (or bare LF), `over` past `budget`; `None` at
/// a clean end of input.
fn read_line(r: &mut impl BufRead, budget: &mut usize, over: Fail) -> Line {
    let mut line = Vec::new();
    let mut limited = r.take(*budget as u64 + 1);
    let n = limited.read_until(b'\n', &mut line);
    let n = n.map_err(|_| Fail::Gone)?;
    if n > *budget {
        return Err(over);
    }
    *budget -= n;
    match line.pop() {
        None => return Ok(None),
        Some(b'\n') => {}
        Some(_) => return Err(Fail::Gone),
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

fn tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn read_request(r: &mut BufReader<TcpStream>, w: &mut TcpStream) -> Result<Option<Request>, Fail> {
    let mut budget = HEAD_LIMIT;
    // RFC 9112 2.2: empty lines before a request line are ignored.
    let line = loop {
        match read_line(r, &mut budget, HEAD_TOO_LARGE)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break String::from_utf8(l).map_err(|_| BAD)?,
        }
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let (method, path, http11) = match parts[..] {
        [m, p, "HTTP/1.1"] => (m, p, true),
        [m, p, "HTTP/1.0"] => (m, p, false),
        _ => return Err(BAD),
    };
    if method.is_empty() || !method.bytes().all(tchar) {
        return Err(BAD);
    }
    let mut req = Request::default();
    (req.method, req.path) = (method.to_string(), path.to_string());
    loop {
        let line = read_line(r, &mut budget, HEAD_TOO_LARGE)?.ok_or(Fail::Gone)?;
        if line.is_empty() {
            break;
        }
        let colon = line.iter().position(|b| *b == b':').ok_or(BAD)?;
        // This also refuses obsolete line folding (RFC 9112 5.2).
        if colon == 0 || !line[..colon].iter().all(|c| tchar(*c)) {
            return Err(BAD);
        }
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        let value = value.trim_matches([' ', '\t']).to_string();
        req.headers.push((name, value));
    }
    let connection = req.tokens("connection");
    let chunked = req.header("transfer-encoding").is_some();
    let lengths = req.tokens("content-length");
    req.keep_alive = if http11 {
        !connection.iter().any(|t| t == "close")
    } else {
        connection.iter().any(|t| t == "keep-alive")
    };
    // Both framings at once is a smuggling pattern: close after answering
    // (RFC 9112 6.3).
    req.keep_alive &= !chunked || lengths.is_empty();
    req.connection = match (req.keep_alive, http11) {
        (false, _) => "Connection: close\r\n",
        (true, false) => "Connection: keep-alive\r\n",
        (true, true) => "",
    };
    if chunked && req.tokens("transfer-encoding") != ["chunked"] {
        return Err(CODING);
    }
    let length = match lengths.split_first() {
        Some(_) if chunked => 0,
        None => 0,
        Some((first, rest)) => {
            if !first.bytes().all(|c| c.is_ascii_digit()) || rest.iter().any(|l| l != first) {
                return Err(BAD);
            }
            first.parse::<usize>().map_err(|_| TOO_LARGE)?
        }
    };
    if length > BODY_LIMIT {
        return Err(TOO_LARGE);
    }
    let expect = req.header("expect").unwrap_or_default();
    // libcurl waits for this before it sends a body.
    if expect.eq_ignore_ascii_case("100-continue") && http11 && (chunked || length > 0) {
        // Failing, the client is gone and reading its body says so.
        let _ = w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    let read = if chunked {
        read_chunked(r, &mut req.body)?
    } else {
        let mut limited = r.take(length as u64);
        limited.read_to_end(&mut req.body).map_err(|_| Fail::Gone)? == length
    };
    // A body cut short by the end of the connection.
    read.then_some(Some(req)).ok_or(Fail::Gone)
}

/// Reads a chunked body into `body`; false if the input ended first.
fn read_chunked(r: &mut impl BufRead, body: &mut Vec<u8>) -> Result<bool, Fail> {
    loop {
        let mut budget = 1024;
        let Some(line) = read_line(r, &mut budget, BAD)? else {
            return Ok(false);
        };
        let end = line.iter().position(|b| *b == b';').unwrap_or(line.len());
        let size = line[..end].trim_ascii();
        if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
            return Err(BAD);
        }
        let size = u64::from_str_radix(&String::from_utf8_lossy(size), 16).map_err(|_| BAD)?;
        if size == 0 {
            break;
        }
        if size > (BODY_LIMIT - body.len()) as u64 {
            return Err(TOO_LARGE);
        }
        if r.take(size).read_to_end(body).map_err(|_| Fail::Gone)? as u64 != size {
            return Ok(false);
        }
        if read_line(r, &mut budget, BAD)?.ok_or(Fail::Gone)? != b"" {
            return Err(BAD);
        }
    }
    // Trailers are read and dropped: nothing here needs them.
    let mut budget = HEAD_LIMIT;
    while read_line(r, &mut budget, HEAD_TOO_LARGE)?.ok_or(Fail::Gone)? != b"" {}
    Ok(true)
}

/// `head` holds whole header lines; `connection` comes from the request.
fn response(status: &str, head: &str, body: &[u8], connection: &str) -> Vec<u8> {
    let length = body.len();
    let head = format!("{head}Content-Length: {length}\r\n{connection}");
    let all = format!("HTTP/1.1 {status}\r\n{head}\r\n");
    [all.as_bytes(), body].concat()
}

/// An error answer, its message the status's reason; all are constants
/// that need no JSON escaping.
fn error(status: &str, kind: &str, head: &str, connection: &str) -> Vec<u8> {
    let message = status.get(4..).unwrap_or_default();
    let body = format!(r#"{{"errorMessage":"{message}","errorType":"{kind}"}}"#);
    let head = format!("{JSON}{head}");
    response(status, &head, body.as_bytes(), connection)
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
mod tests {
    use super::*;
    use std::sync::mpsc;

    const WAIT: Option<Duration> = Some(Duration::from_secs(10));

    fn inv(id: &str, body: &str) -> Invocation {
        Invocation {
            request_id: id.into(),
            deadline_ms: 1_700_000_000_000,
            function_arn: "arn:f".into(),
            trace_id: Some("Root=1-a".into()),
            client_context: None,
            cognito_identity: Some("{\"id\":1}".into()),
            body: body.into(),
        }
    }

    fn cmd(program: &str, script: &str) -> Command {
        let mut c = Command::new(program);
        c.args(["-c", script]);
        c
    }

    fn start(c: Command) -> Result<Runtime, InitFailure> {
        Runtime::start("127.0.0.1:0", c, WAIT, |_| {})
    }

    /// `get()` gives the next invocation's (headers, body); `post` POSTs.
    const LIB: &str = r#"
import os, sys, urllib.request as u
base = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/"
def get():
    r = u.urlopen(base + "invocation/next")
    return r.headers, r.read()
def post(path, body, headers={}):
    u.urlopen(u.Request(base + path, data=body, headers=headers))
"#;

    /// A function that prints its address and idles, the test being its
    /// client: the first `next` is the test's, on the returned connection.
    fn raw() -> (Runtime, TcpStream, String) {
        let (tx, rx) = mpsc::channel();
        let (done_tx, done) = mpsc::channel();
        thread::spawn(move || {
            let c = cmd("sh", "echo $AWS_LAMBDA_RUNTIME_API; exec sleep 1000");
            let tx = Mutex::new(tx);
            let echo = move |b: &[u8]| drop(tx.lock().map(|t| t.send(b.to_vec())));
            drop(done_tx.send(Runtime::start("127.0.0.1:0", c, WAIT, echo)));
        });
        let addr = String::from_utf8(rx.recv_timeout(WAIT.unwrap()).unwrap()).unwrap();
        let addr = addr.trim().to_string();
        thread::sleep(Duration::from_millis(200));
        assert!(done.try_recv().is_err(), "start returned before any next");
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.write_all(format!("GET {PREFIX}invocation/next HTTP/1.1\r\n\r\n").as_bytes())
            .unwrap();
        let rt = done.recv_timeout(WAIT.unwrap()).unwrap().unwrap();
        (rt, conn, addr)
    }

    /// Reads one response: status, head, body.
    fn read(r: &mut impl BufRead) -> (u16, String, Vec<u8>) {
        let (mut head, mut length) = (String::new(), 0);
        while !head.ends_with("\r\n\r\n") {
            let start = head.len();
            r.read_line(&mut head).unwrap();
            if let Some(v) = head[start..].strip_prefix("Content-Length: ") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        r.read_exact(&mut body).unwrap();
        (head[9..12].parse().unwrap(), head, body)
    }

    fn send(addr: &str, request: &str) -> (u16, String, Vec<u8>) {
        let mut conn = TcpStream::connect(addr).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        read(&mut BufReader::new(conn))
    }

    fn post(id: &str, body: &str) -> String {
        let length = body.len();
        format!("POST {PREFIX}invocation/{id}/response HTTP/1.1\r\nContent-Length: {length}\r\n\r\n{body}")
    }

    fn invoking(mut rt: Runtime, i: Invocation) -> thread::JoinHandle<(Runtime, Reply)> {
        thread::spawn(move || {
            let (reply, _, _) = rt.invoke(i, WAIT, 1024);
            (rt, reply)
        })
    }

    #[test]
    fn keep_alive_connection_carries_next_then_response() {
        let (rt, conn, _) = raw();
        let waiting = invoking(rt, inv("r1", "{}"));
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let (status, head, _) = read(&mut r);
        assert_eq!(status, 200);
        assert!(
            head.contains("\r\nLambda-Runtime-Aws-Request-Id: r1\r\n"),
            "{head}"
        );
        (&conn).write_all(post("r1", "ok").as_bytes()).unwrap();
        assert_eq!(read(&mut r).0, 202);
        assert!(matches!(waiting.join().unwrap().1, Reply::Response(b) if b == b"ok"));
    }

    #[test]
    fn python_round_trip_with_headers_logs_and_errors() {
        let script = r#"
while True:
    h, body = get()
    id = h["Lambda-Runtime-Aws-Request-Id"]
    print("handling", id, flush=True)
    if body == b"fail":
        post("invocation/" + id + "/error", b"oops", {"Lambda-Runtime-Function-Error-Type": "E"})
        continue
    keys = ["Deadline-Ms", "Invoked-Function-Arn", "Trace-Id", "Client-Context", "Cognito-Identity"]
    out = [str(h.get("Lambda-Runtime-" + k)) for k in keys] + [h["Content-Type"], body.decode()]
    post("invocation/" + id + "/response", "|".join(out).encode())
"#;
        let mut rt = start(cmd("python3", &format!("{LIB}{script}"))).unwrap();
        let (reply, logs, cut) = rt.invoke(inv("a-1", "{\"x\":1}"), WAIT, 1024);
        let want = "1700000000000|arn:f|Root=1-a|None|{\"id\":1}|application/json|{\"x\":1}";
        assert!(matches!(reply, Reply::Response(b) if b == want.as_bytes()));
        let (reply, more, _) = rt.invoke(inv("a-2", "fail"), WAIT, 1024);
        let expected = Some("E".to_string());
        assert!(
            matches!(reply, Reply::Error { error_type, body } if error_type == expected && body == b"oops")
        );
        // Output may land in the next call's logs: it races the reply.
        let all = String::from_utf8_lossy(&[logs, more].concat()).into_owned();
        assert!(all.contains("handling a-1\n") && !cut, "{all}");
    }

    #[test]
    fn exit_during_init_fails_with_its_output() {
        let echoed = Arc::new(Mutex::new(Vec::new()));
        let e = echoed.clone();
        let echo = move |b: &[u8]| e.lock().unwrap().extend_from_slice(b);
        let c = cmd("sh", "echo to-out; echo to-err >&2; exit 3");
        let fail = Runtime::start("127.0.0.1:0", c, WAIT, echo).err().unwrap();
        assert!(fail.why.ends_with("exit status: 3"), "{}", fail.why);
        let output = String::from_utf8_lossy(&fail.output);
        assert!(
            output.contains("to-out\n") && output.contains("to-err\n"),
            "{output}"
        );
        assert_eq!(echoed.lock().unwrap().len(), fail.output.len());
    }

    #[test]
    fn init_error_fails_with_the_body() {
        let script = format!("{LIB}post('init/error', b'bad config')\nimport time; time.sleep(99)");
        let why = start(cmd("python3", &script)).err().unwrap().why;
        assert_eq!(why, "the function reported an init error: bad config");
    }

    #[test]
    fn init_timeout_kills_the_function() {
        let begun = Instant::now();
        let c = cmd("sh", "echo started; exec sleep 1000");
        let timeout = Some(Duration::from_millis(500));
        let fail = Runtime::start("127.0.0.1:0", c, timeout, |_| {})
            .err()
            .unwrap();
        assert!(fail.why.ends_with("within 500ms"), "{}", fail.why);
        assert_eq!(fail.output, b"started\n");
        assert!(begun.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn invoke_timeout_then_a_late_answer_is_refused() {
        let (mut rt, conn, addr) = raw();
        let timeout = Some(Duration::from_millis(200));
        assert!(matches!(
            rt.invoke(inv("t-1", "{}"), timeout, 1024).0,
            Reply::TimedOut
        ));
        assert_eq!(read(&mut BufReader::new(conn)).0, 200);
        let (status, _, body) = send(&addr, &post("t-1", ""));
        assert_eq!(status, 400);
        assert!(String::from_utf8_lossy(&body).contains("\"errorType\":\"InvalidRequestID\""));
    }

    #[test]
    fn one_next_at_a_time_and_one_answer_per_id() {
        let (rt, first, addr) = raw();
        let mut second = TcpStream::connect(&addr).unwrap();
        let next = format!("GET {PREFIX}invocation/next HTTP/1.1\r\n\r\n");
        second.write_all(next.as_bytes()).unwrap();
        thread::sleep(Duration::from_millis(100));
        let waiting = invoking(rt, inv("w-1", "{}"));
        // Whichever of the two waiting nexts gets it, the other gets nothing.
        let (tx, handed) = mpsc::channel();
        for c in [first, second] {
            let tx = tx.clone();
            thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let got = BufReader::new(c).fill_buf().map(|b| b.to_vec());
                tx.send(got.unwrap_or_default()).unwrap();
            });
        }
        assert!(handed.recv().unwrap().starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert_eq!(send(&addr, &post("other", "x")).0, 400);
        assert_eq!(send(&addr, &post("w-1", "first")).0, 202);
        assert_eq!(send(&addr, &post("w-1", "second")).0, 400);
        let (_rt, reply) = waiting.join().unwrap();
        assert!(matches!(reply, Reply::Response(b) if b == b"first"));
        assert_eq!(handed.recv().unwrap(), b"");
    }

    #[test]
    fn exit_during_invoke_is_reported_with_capped_logs() {
        let script = format!("{LIB}get()\nprint('dying', flush=True)\nsys.exit(7)");
        let mut rt = start(cmd("python3", &script)).unwrap();
        let (reply, logs, cut) = rt.invoke(inv("e-1", "{}"), WAIT, 3);
        assert!(matches!(reply, Reply::Exited(s) if s.code() == Some(7)));
        assert_eq!((&logs[..], cut), (&b"dyi"[..], true));
    }

    #[test]
    fn chunked_body_after_100_continue() {
        let (rt, conn, addr) = raw();
        let waiting = invoking(rt, inv("c-1", "{}"));
        assert_eq!(read(&mut BufReader::new(conn)).0, 200);
        let mut c = TcpStream::connect(&addr).unwrap();
        let head =
            format!("POST {PREFIX}invocation/c-1/error HTTP/1.1\r\nExpect: 100-continue\r\n");
        c.write_all(format!("{head}Transfer-Encoding: chunked\r\n\r\n").as_bytes())
            .unwrap();
        let mut r = BufReader::new(c.try_clone().unwrap());
        let mut interim = String::new();
        r.read_line(&mut interim).unwrap();
        r.read_line(&mut interim).unwrap();
        assert_eq!(interim, "HTTP/1.1 100 Continue\r\n\r\n");
        c.write_all(b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: x\r\n\r\n")
            .unwrap();
        assert_eq!(read(&mut r).0, 202);
        let reply = waiting.join().unwrap().1;
        assert!(matches!(reply, Reply::Error { error_type: None, body } if body == b"hello world"));
    }

    #[test]
    fn bad_requests_get_errors() {
        let (_rt, _conn, addr) = raw();
        let big = format!("POST {PREFIX}init/error HTTP/1.1\r\nContent-Length: 7000000\r\n\r\n");
        assert_eq!(send(&addr, &big).0, 413);
        assert_eq!(send(&addr, "GARBAGE\r\n\r\n").0, 400);
        assert_eq!(send(&addr, "GET / HTTP/1.1\r\nno colon\r\n\r\n").0, 400);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70_000));
        assert_eq!(send(&addr, &huge).0, 431);
        let (status, head, body) = send(&addr, "GET /nowhere HTTP/1.0\r\n\r\n");
        assert_eq!(
            (status, &body[..]),
            (
                404,
                &br#"{"errorMessage":"Not Found","errorType":"NotFound"}"#[..]
            )
        );
        assert!(head.contains("Connection: close"));
        assert_eq!(
            send(
                &addr,
                &format!("POST {PREFIX}invocation/next HTTP/1.0\r\n\r\n")
            )
            .0,
            405
        );
    }
}
