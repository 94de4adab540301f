//! AWS Lambda functions in `vmfork serve` (docs/linux-functions.md): an
//! unmodified function built on AWS's `lambda_runtime` crate
//! (tests/lambda-fn, built static and cached by scripts/build-lambda-fn.sh)
//! is started under the agent's Runtime API, snapshotted in its first
//! `next`, and each request is one invocation in a fresh clone. Driven
//! with curl. Linux needs hardware virtualization: scripts/test-svm.sh
//! runs this in the SVM rig; on PVM the build ends with the clear exit-11
//! message, which is what is checked there, beside the errors that need
//! no guest.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::Value;
use vmfork_tests::server::{curl, function_template, header, Server};
use vmfork_tests::{
    assert_clean_error, exit, guest_artifact, host_is_pvm, script_path, vmfork, Run, Scratch,
};

const FUNCTION_NAME: &str = "hello-fn";

/// The static `bootstrap` of tests/lambda-fn: where scripts/test-svm.sh
/// says it built it, or built (once, cached) now.
fn bootstrap() -> PathBuf {
    match std::env::var_os("VMFORK_LAMBDA_FN") {
        Some(path) => PathBuf::from(path),
        None => script_path("build-lambda-fn.sh"),
    }
}

/// An image holding the function at /var/task/bootstrap.
fn rootfs(scratch: &Scratch) -> String {
    let task = scratch.path("tree/var/task");
    std::fs::create_dir_all(&task).expect("mkdir");
    std::fs::copy(bootstrap(), task.join("bootstrap")).expect("copy bootstrap");
    let img = scratch.str("root.ext4");
    let tree = scratch.str("tree");
    let run = vmfork(&["rootfs", "build", &tree, "--out", &img, "--quiet"]);
    assert_eq!(run.status, 0, "{run}");
    img
}

/// `vmfork template build --lambda` of the function with `extra` flags.
fn build(rootfs: &str, out: &str, extra: &[&str]) -> Run {
    let kernel = guest_artifact("linux", "vmlinux");
    let mut args = vec![
        "template",
        "build",
        "--kernel",
        kernel.to_str().unwrap_or_default(),
        "--rootfs",
        rootfs,
        "--mem",
        "256M",
        "--timeout",
        "180",
        "--quiet",
        "--lambda",
        "/var/task/bootstrap",
        "--function-name",
        FUNCTION_NAME,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    vmfork(&args)
}

/// The function's template, built once per test process, and the Unix
/// time in ms when its build ended; None on PVM (checked there instead).
fn template() -> Option<&'static (String, u64)> {
    static TEMPLATE: OnceLock<Option<(String, u64)>> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let scratch = Box::leak(Box::new(Scratch::new("lambda")));
            let out = scratch.str("tpl");
            if host_is_pvm() {
                let plain = guest_artifact("rootfs", "rootfs");
                let run = build(plain.to_str().unwrap_or_default(), &out, &[]);
                assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
                return None;
            }
            let run = build(&rootfs(scratch), &out, &["--init-timeout", "120s"]);
            assert_eq!(run.status, 0, "{run}");
            Some((out, now_ms()))
        })
        .as_ref()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn post(url: &str, body: &str) -> (u16, Vec<(String, String)>, String) {
    curl(&[
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        body,
        url,
    ])
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

#[test]
fn invocations_run_once_each_in_fresh_clones_of_the_initialised_function() {
    let Some((tpl, built_ms)) = template() else {
        return;
    };
    let scratch = Scratch::new("lambda-serve");
    let log = scratch.path("serve.log");
    let server = Server::start_logging(
        &[("hello", tpl.clone())],
        &[
            "--timeout",
            "20s",
            "--max-output",
            "64KiB",
            "--max-body",
            "64KiB",
        ],
        &log,
    );
    let url = format!("http://{}/v1/functions/hello/invoke", server.addr);

    let mut inits = Vec::new();
    let mut ids = Vec::new();
    for n in 0..2 {
        let before = now_ms();
        let (status, headers, body) = post(&url, &format!(r#"{{"op":"echo","n":{n}}}"#));
        assert_eq!(status, 200, "{body}");
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        let v = json(&body);
        assert_eq!(v["event"]["n"], n, "the raw event reaches the handler: {v}");
        // The Lambda headers, filled in per request.
        let id = v["request_id"].as_str().unwrap_or_default().to_string();
        assert_eq!(header(&headers, "x-amzn-requestid"), Some(id.as_str()));
        assert_eq!(id.len(), 36, "a UUID: {id}");
        let deadline = v["deadline_ms"].as_u64().unwrap_or(0);
        assert!(
            deadline >= before + 19_000 && deadline <= now_ms() + 20_000,
            "deadline {deadline} is 20 s after the request ({before})"
        );
        assert_eq!(
            v["arn"],
            format!("arn:aws:lambda:local:000000000000:function:{FUNCTION_NAME}")
        );
        assert!(
            v["trace_id"]
                .as_str()
                .unwrap_or_default()
                .starts_with("Root=1-"),
            "{v}"
        );
        assert_eq!(v["env_function_name"], FUNCTION_NAME);
        // Every invocation is the first in its clone, of a function whose
        // init ran once, before the template was taken.
        assert_eq!(v["invocations"], 1, "a fresh clone per request: {v}");
        let init = v["init_ms"].as_u64().unwrap_or(u64::MAX);
        assert!(
            init <= *built_ms,
            "init at {init}, the build ended at {built_ms}"
        );
        inits.push((init, v["pid"].clone()));
        ids.push(id);
    }
    assert_eq!(inits[0], inits[1], "one init, in the template");
    assert_ne!(ids[0], ids[1]);

    // A random UUID made at invocation time differs per request: each
    // clone's kernel was reseeded with its own entropy.
    let uuids: Vec<String> = (0..4)
        .map(|_| {
            let (status, _, body) = post(&url, r#"{"op":"uuid"}"#);
            assert_eq!(status, 200, "{body}");
            json(&body)["uuid"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    for (i, a) in uuids.iter().enumerate() {
        assert_eq!(a.len(), 36, "{a}");
        assert!(!uuids[i + 1..].contains(a), "a UUID repeated: {uuids:?}");
    }

    // The function's own errors: /error, a panic (the runtime reports it
    // through /error too) and an exit, each a 502 naming it.
    let (status, headers, body) = post(&url, r#"{"op":"error"}"#);
    assert_eq!(status, 502, "{body}");
    assert_eq!(header(&headers, "x-amz-function-error"), Some("Unhandled"));
    assert_eq!(json(&body)["errorMessage"], "failing on purpose");
    let (status, _, body) = post(&url, r#"{"op":"panic"}"#);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("panicking on purpose"), "{body}");
    let (status, _, body) = post(&url, r#"{"op":"exit","code":7}"#);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("exited with status 7"), "{body}");

    // What the function logs goes to the server's log under the request.
    let (status, headers, _) = post(&url, r#"{"op":"log","line":"a line to find"}"#);
    assert_eq!(status, 200);
    let id = header(&headers, "x-amzn-requestid")
        .unwrap_or_default()
        .to_string();
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged
            .lines()
            .any(|l| l.contains("a line to find") && l.contains(&id)),
        "{logged}"
    );
    assert!(
        logged.contains("failing on purpose"),
        "the error body is logged: {logged}"
    );

    // The Invoke API's request headers: a client context for the
    // function, the end of the logs in the response, a dry run that runs
    // nothing, and an asynchronous invocation answered at once.
    let context = "eyJjdXN0b20iOnsiZnJvbSI6ImN1cmwifX0="; // {"custom":{"from":"curl"}}
    let (status, headers, body) = curl(&[
        "-H",
        &format!("X-Amz-Client-Context: {context}"),
        "-H",
        "X-Amz-Log-Type: Tail",
        "--data-binary",
        r#"{"op":"log","line":"tail me"}"#,
        &url,
    ]);
    assert_eq!(status, 200, "{body}");
    let tail = header(&headers, "x-amz-log-result").unwrap_or_default();
    let tail = base64::engine::general_purpose::STANDARD
        .decode(tail)
        .unwrap_or_default();
    let tail = String::from_utf8_lossy(&tail);
    assert!(tail.contains("tail me"), "{tail:?}");
    let (status, _, body) = curl(&[
        "-H",
        &format!("X-Amz-Client-Context: {context}"),
        "--data-binary",
        r#"{"op":"echo"}"#,
        &url,
    ]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["client_custom"]["from"], "curl", "{body}");
    let (status, _, _) = curl(&["-H", "X-Amz-Invocation-Type: DryRun", "-d", "{}", &url]);
    assert_eq!(status, 204);
    let (status, _, body) = curl(&["-H", "X-Amz-Client-Context: !!", "-d", "{}", &url]);
    assert_eq!(status, 400, "{body}");
    let marker = "async marker line";
    let (status, headers, _) = curl(&[
        "-H",
        "X-Amz-Invocation-Type: Event",
        "--data-binary",
        &format!(r#"{{"op":"log","line":"{marker}"}}"#),
        &url,
    ]);
    assert_eq!(status, 202);
    let id = header(&headers, "x-amzn-requestid")
        .unwrap_or_default()
        .to_string();
    assert_eq!(id.len(), 36, "{headers:?}");
    // Its result reaches the log; the server's `asynchronous invocation
    // ended` line is the event to wait for.
    assert!(
        server.log_line_within(&log, &id, "asynchronous invocation ended: 200 OK"),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains(marker));

    // Limits: a response over --max-output, a body over --max-body, and
    // the Invoke API's shape (POST to the function, no sub-paths).
    let (status, _, body) = post(&url, r#"{"op":"big","bytes":100000}"#);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("larger than"), "{body}");
    let big = format!(r#"{{"op":"echo","pad":"{}"}}"#, "x".repeat(70_000));
    assert_eq!(post(&url, &big).0, 413);
    assert_eq!(curl(&[&url]).0, 405);
    assert_eq!(post(&format!("{url}/sub"), "{}").0, 404);
    server.stop();
}

#[test]
fn a_slow_invocation_gets_504_and_a_busy_server_503() {
    let Some((tpl, _)) = template() else {
        return;
    };
    let server = Server::start(
        &[("hello", tpl.clone())],
        &["--timeout", "4s", "--max-concurrency", "1", "--queue", "0"],
    );
    let url = format!("http://{}/v1/functions/hello/invoke", server.addr);
    let slow_url = url.clone();
    let slow = std::thread::spawn(move || post(&slow_url, r#"{"op":"sleep","ms":60000}"#));
    assert_eq!(
        server.metric_reaching("vmfork_live_clones", 1),
        Some(1),
        "the slow invocation never started a clone"
    );
    let (status, headers, _) = post(&url, r#"{"op":"echo"}"#);
    assert_eq!(status, 503);
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    let (status, _, body) = slow.join().expect("slow request");
    assert_eq!(status, 504, "{body}");
    // The server carries on.
    let (status, _, body) = post(&url, r#"{"op":"sleep","ms":10}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["slept_ms"], 10);
    server.stop();
}

#[test]
fn an_api_gateway_mapping_turns_http_into_proxy_events() {
    let Some((tpl, _)) = template() else {
        return;
    };
    // Beside a built-in function of the default guest: one server takes
    // every kind of template.
    let scratch = Scratch::new("lambda-apigw");
    let echo = function_template(&scratch, "echo", "echo");
    let server = Server::start(
        &[("hello", tpl.clone()), ("raw", tpl.clone()), ("echo", echo)],
        &["--api-gateway", "hello"],
    );
    let base = format!("http://{}/v1/functions", server.addr);
    let (status, headers, body) = curl(&[
        "-X",
        "PUT",
        "--data-binary",
        "some body",
        &format!("{base}/hello/invoke/a/b?x=1"),
    ]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(header(&headers, "x-fn"), Some("proxy"));
    assert_eq!(header(&headers, "content-type"), Some("text/plain"));
    assert_eq!(body, "PUT /a/b some body");
    // The same template without the mapping is the Invoke API.
    let (status, _, body) = post(&format!("{base}/raw/invoke"), r#"{"op":"echo"}"#);
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["event"]["op"], "echo");
    let (code, _, body) = server.invoke("echo", b"unikernel");
    assert_eq!((code, body.as_slice()), (200, &b"unikernel"[..]));
    server.stop();
}

#[test]
fn a_function_that_fails_or_hangs_in_init_fails_the_build_with_its_output() {
    if host_is_pvm() {
        // No Linux guest runs here: template() checks the exit-11 error.
        assert!(template().is_none());
        return;
    }
    let scratch = Scratch::new("lambda-init");
    let img = rootfs(&scratch);
    let run = build(
        &img,
        &scratch.str("failing"),
        &["--env", "VMFORK_TEST_INIT=fail"],
    );
    assert_eq!(run.status, exit::FUNCTION_INIT, "{run}");
    assert!(run.stderr.starts_with("vmfork: "), "{run}");
    assert!(run.stderr.contains("failed during init"), "{run}");
    assert!(run.stderr.contains("init failing on purpose"), "{run}");
    assert!(run.stderr.contains("exit status: 3"), "{run}");
    assert!(!scratch.path("failing").exists(), "no template is left");

    let run = build(
        &img,
        &scratch.str("hanging"),
        &["--env", "VMFORK_TEST_INIT=hang", "--init-timeout", "5s"],
    );
    assert_eq!(run.status, exit::FUNCTION_INIT, "{run}");
    assert!(run.stderr.contains("init hanging on purpose"), "{run}");
    assert!(!scratch.path("hanging").exists(), "no template is left");
}

#[test]
fn lambda_flags_are_checked_before_anything_boots() {
    let scratch = Scratch::new("lambda-flags");
    let run = vmfork(&[
        "template",
        "build",
        "--lambda",
        "/var/task/bootstrap",
        "--out",
        &scratch.str("t1"),
    ]);
    assert_clean_error(
        &run,
        exit::INVALID_ARGUMENT,
        "--lambda needs a guest with the vmfork agent",
    );
    let kernel = scratch.path("vmlinux");
    std::fs::write(&kernel, b"not used").expect("write");
    let rootfs = scratch.path("root.ext4");
    std::fs::write(&rootfs, b"not used").expect("write");
    let (k, r) = (kernel.to_string_lossy(), rootfs.to_string_lossy());
    let common = ["template", "build", "--kernel", &k, "--rootfs", &r];
    let with = |extra: &[&str]| {
        let mut args = common.to_vec();
        args.extend_from_slice(extra);
        vmfork(&args)
    };
    let run = with(&["--lambda", "/b", "--out", &scratch.str("bad name!")]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "--function-name");
    let run = with(&[
        "--lambda",
        "/b",
        "--env",
        "NOVALUE",
        "--out",
        &scratch.str("t2"),
    ]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "expected NAME=VALUE");
    let run = with(&["--env", "A=1", "--out", &scratch.str("t3")]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "--env sets the environment");
    let run = with(&["--function-name", "f", "--out", &scratch.str("t4")]);
    assert_eq!(
        run.status,
        exit::USAGE,
        "--function-name needs --lambda: {run}"
    );

    // --api-gateway names a Lambda function's template.
    let plain = scratch.str("plain");
    let run = vmfork(&["template", "build", "--out", &plain, "--quiet"]);
    assert_eq!(run.status, 0, "{run}");
    let run = vmfork(&[
        "serve",
        "--template",
        &format!("f={plain}"),
        "--api-gateway",
        "f",
    ]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "is not a Lambda function's");
    let run = vmfork(&[
        "serve",
        "--template",
        &format!("f={plain}"),
        "--api-gateway",
        "g",
    ]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "no --template of that name");
}
