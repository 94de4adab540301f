//! Unit tests of lambda.rs: real processes (python3 functions) and raw
//! HTTP clients against a Runtime.

use super::*;
use std::io::BufRead;
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
    format!(
        "POST {PREFIX}invocation/{id}/response HTTP/1.1\r\nContent-Length: {length}\r\n\r\n{body}"
    )
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
    let head = format!("POST {PREFIX}invocation/c-1/error HTTP/1.1\r\nExpect: 100-continue\r\n");
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
