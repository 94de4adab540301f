//! A Lambda function for vmfork's tests, written as a customer would write
//! one: AWS's `lambda_runtime` crate talks to the Runtime API
//! (AWS_LAMBDA_RUNTIME_API), which in a vmfork guest is the agent on
//! 127.0.0.1:9001. Each `op` of the event exercises one path of that API
//! (response, error, crash, timeout, large payload, logs), and `echo`
//! reports what the function sees, so that tests can tell a fresh init from
//! a snapshot clone (`init_ms`, `pid`, `invocations`) and check the
//! invocation context the agent handed over.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

/// Set once at init: a clone restored from a snapshot keeps its template's
/// values, which is what tests look for.
static INIT_MS: OnceLock<u64> = OnceLock::new();
static PID: OnceLock<u32> = OnceLock::new();
/// Per-process: clones of one template each count from the template's value.
static INVOCATIONS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

async fn handler(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let invocations = INVOCATIONS.fetch_add(1, Ordering::SeqCst) + 1;
    let (event, ctx) = event.into_parts();

    // API Gateway REST (payload 1.0) proxy events carry no `op`: they are
    // recognised by their shape, as a real API-backed function would be.
    if event.get("httpMethod").is_some() {
        let text = |key: &str| {
            event
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let body = format!("{} {} {}", text("httpMethod"), text("path"), text("body"));
        return Ok(json!({
            "statusCode": 201,
            "headers": {"content-type": "text/plain", "x-fn": "proxy"},
            "body": body,
        }));
    }

    match event.get("op").and_then(Value::as_str).unwrap_or("") {
        "echo" => Ok(json!({
            "event": event,
            "request_id": ctx.request_id,
            "deadline_ms": ctx.deadline,
            "arn": ctx.invoked_function_arn,
            "trace_id": ctx.xray_trace_id,
            "client_custom": ctx.client_context.as_ref().map(|c| &c.custom),
            "init_ms": INIT_MS.get().copied(),
            "pid": PID.get().copied(),
            "invocations": invocations,
            "env_function_name": std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
        })),
        // Generated per call, so a clone that replays its template's
        // random state would be caught returning a duplicate.
        "uuid" => Ok(json!({"uuid": uuid::Uuid::new_v4().to_string()})),
        "error" => Err("failing on purpose".into()),
        "panic" => panic!("panicking on purpose"),
        "exit" => {
            let code = event.get("code").and_then(Value::as_i64).unwrap_or(4);
            std::process::exit(code as i32)
        }
        "sleep" => {
            let ms = event.get("ms").and_then(Value::as_u64).unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"slept_ms": ms}))
        }
        "big" => {
            let bytes = event.get("bytes").and_then(Value::as_u64).unwrap_or(0);
            Ok(Value::String("x".repeat(bytes as usize)))
        }
        "log" => {
            let line = event.get("line").and_then(Value::as_str).unwrap_or("");
            eprintln!("{line}");
            println!("{line}");
            Ok(json!({"logged": true}))
        }
        _ => Err("unknown op".into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    INIT_MS.get_or_init(now_ms);
    PID.get_or_init(std::process::id);

    // Init failures happen before lambda_runtime runs, as with a function
    // whose own setup (config, connections) fails: the runtime never gets
    // to report them, so vmfork must notice the exit or the silence itself.
    match std::env::var("VMFORK_TEST_INIT").as_deref() {
        Ok("fail") => {
            eprintln!("lambda-fn: init failing on purpose");
            std::process::exit(3);
        }
        Ok("hang") => {
            eprintln!("lambda-fn: init hanging on purpose");
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
        _ => {}
    }
    eprintln!("lambda-fn: init done");

    lambda_runtime::run(service_fn(handler)).await
}
