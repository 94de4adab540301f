//! AWS Lambda functions (docs/linux-functions.md): one request is one
//! invocation in a fresh clone. By default it is Lambda's Invoke API (the
//! body is the raw event, the response the function's raw result); with
//! `--api-gateway NAME` it is an API Gateway REST proxy integration (the
//! HTTP request becomes a proxy event, and the function's `statusCode`,
//! headers and body become the HTTP response).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{json, Map, Value};

use super::metrics::Counted;
use super::program::text;
use vmfork_machine::exec::{ExecOutcome, ExecOutput};
use vmfork_machine::lambda::Invocation;

/// The header Lambda's Invoke API names the request id in.
pub const REQUEST_ID_HEADER: &str = "x-amzn-requestid";
/// What Lambda's Invoke API sets on a function error.
const FUNCTION_ERROR_HEADER: &str = "x-amz-function-error";

/// How many bytes of an invocation's logs `X-Amz-Log-Type: Tail` returns.
const LOG_TAIL: usize = 4096;

/// What a caller of the Invoke API asks for with its X-Amz-* headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvokeOptions {
    pub invocation_type: InvocationType,
    /// `X-Amz-Client-Context`, decoded: JSON for the function's context.
    pub client_context: Option<String>,
    /// `X-Amz-Log-Type: Tail`: the end of the logs in `X-Amz-Log-Result`.
    pub tail_logs: bool,
}

/// `X-Amz-Invocation-Type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InvocationType {
    /// Wait for the result (the default).
    #[default]
    RequestResponse,
    /// Queue it and answer 202 at once; the result goes to the log.
    Event,
    /// Check the request and answer 204 without running anything.
    DryRun,
}

/// Reads the Invoke API's request headers; a value it cannot take is the
/// reason for a 400.
pub fn invoke_options(headers: &HeaderMap) -> Result<InvokeOptions, String> {
    let get = |name: &str| -> Result<Option<&str>, String> {
        headers
            .get(name)
            .map(|v| v.to_str().map_err(|_| format!("{name}: not ASCII")))
            .transpose()
    };
    let invocation_type = match get("x-amz-invocation-type")? {
        None | Some("RequestResponse") => InvocationType::RequestResponse,
        Some("Event") => InvocationType::Event,
        Some("DryRun") => InvocationType::DryRun,
        Some(other) => {
            return Err(format!(
                "X-Amz-Invocation-Type {other:?}: use RequestResponse, Event or DryRun"
            ))
        }
    };
    let client_context = match get("x-amz-client-context")? {
        None => None,
        Some(encoded) => {
            let bad = |why: String| format!("X-Amz-Client-Context: {why}");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|e| bad(format!("not base64 ({e})")))?;
            // The runtime clients parse it as a JSON object and end the
            // function when they cannot: refused here instead.
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(_)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                _ => return Err(bad("not a base64-encoded JSON object".into())),
            }
        }
    };
    let tail_logs = match get("x-amz-log-type")? {
        None | Some("None") => false,
        Some("Tail") => true,
        Some(other) => return Err(format!("X-Amz-Log-Type {other:?}: use None or Tail")),
    };
    Ok(InvokeOptions {
        invocation_type,
        client_context,
        tail_logs,
    })
}

/// A new invocation's metadata: a fresh request id and X-Ray trace id, and
/// the deadline `timeout` from now.
pub fn invocation(arn: String, timeout: Duration, client_context: Option<String>) -> Invocation {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let deadline = now + timeout;
    let random = uuid::Uuid::new_v4();
    let parent = uuid::Uuid::new_v4();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    Invocation {
        request_id: uuid::Uuid::new_v4().to_string(),
        deadline_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        function_arn: arn,
        // X-Ray's format: version 1, the epoch seconds in 8 hex digits,
        // 96 random bits; a 64-bit parent segment id.
        trace_id: format!(
            "Root=1-{:08x}-{};Parent={};Sampled=0",
            now.as_secs(),
            hex(&random.as_bytes()[..12]),
            hex(&parent.as_bytes()[..8]),
        ),
        client_context,
    }
}

/// The parts of an HTTP request an API Gateway proxy event carries.
pub struct ProxyRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// The sub-path after `/v1/functions/NAME/invoke` (`/` when none).
    pub path: &'a str,
    pub peer: Option<SocketAddr>,
    pub stage: &'a str,
}

/// An API Gateway REST API proxy event (payload format 1.0) for `request`.
pub fn proxy_event(request: &ProxyRequest<'_>, request_id: &str, body: &[u8]) -> Vec<u8> {
    let mut headers = Map::new();
    let mut multi_headers: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for (name, value) in request.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.insert(name.as_str().to_string(), Value::String(value.clone()));
        multi_headers
            .entry(name.as_str().to_string())
            .or_default()
            .push(Value::String(value));
    }
    let mut query = Map::new();
    let mut multi_query: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let raw_query = request.uri.query().unwrap_or("");
    for (name, value) in form_urlencoded::parse(raw_query.as_bytes()) {
        query.insert(name.to_string(), Value::String(value.to_string()));
        multi_query
            .entry(name.into_owned())
            .or_default()
            .push(Value::String(value.into_owned()));
    }
    let none_if_empty = |m: Map<String, Value>| {
        if m.is_empty() {
            Value::Null
        } else {
            Value::Object(m)
        }
    };
    let (body, base64) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (Value::Null, false),
        Ok(text) => (Value::String(text.to_string()), false),
        Err(_) => (
            Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
            true,
        ),
    };
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let source_ip = request.peer.map(|p| p.ip().to_string());
    let event = json!({
        "resource": "/{proxy+}",
        "path": request.path,
        "httpMethod": request.method.as_str(),
        "headers": none_if_empty(headers),
        "multiValueHeaders": multi_headers,
        "queryStringParameters": none_if_empty(query),
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": { "proxy": request.path.trim_start_matches('/') },
        "stageVariables": Value::Null,
        "requestContext": {
            "resourcePath": "/{proxy+}",
            "httpMethod": request.method.as_str(),
            "path": request.path,
            "stage": request.stage,
            "requestId": request_id,
            "requestTimeEpoch": now_ms,
            "protocol": "HTTP/1.1",
            "identity": { "sourceIp": source_ip },
        },
        "body": body,
        "isBase64Encoded": base64,
    });
    event.to_string().into_bytes()
}

/// An invocation's result as the HTTP response: the raw result (Invoke
/// API) or the proxy response it holds (`proxy`). The function's logs go
/// to the server's log under the request id.
pub fn respond(
    function: &str,
    request_id: &str,
    output: ExecOutput,
    max_output: u32,
    proxy: bool,
    tail_logs: bool,
) -> (Response, Counted) {
    let (mut r, counted) = answer(function, request_id, &output, max_output, proxy);
    if tail_logs {
        let tail = &output.stderr[output.stderr.len().saturating_sub(LOG_TAIL)..];
        let encoded = base64::engine::general_purpose::STANDARD.encode(tail);
        if let Ok(v) = HeaderValue::from_str(&encoded) {
            r.headers_mut().insert("x-amz-log-result", v);
        }
    }
    (r, counted)
}

fn answer(
    function: &str,
    request_id: &str,
    output: &ExecOutput,
    max_output: u32,
    proxy: bool,
) -> (Response, Counted) {
    super::program::log_stderr(function, &request_id, output);
    let failed = |status: StatusCode, why: String| {
        tracing::warn!(function, request_id, "{why}");
        let counted = if status == StatusCode::GATEWAY_TIMEOUT {
            Counted::Timeout
        } else {
            Counted::Crash
        };
        with_id(
            text(status, format!("{function}: {why}")),
            request_id,
            counted,
        )
    };
    match output.outcome {
        ExecOutcome::Exited(0) => {}
        ExecOutcome::TimedOut => {
            return failed(
                StatusCode::GATEWAY_TIMEOUT,
                "the invocation ran past its timeout; its clone was stopped".into(),
            )
        }
        ExecOutcome::FunctionError => {
            let body = String::from_utf8_lossy(&output.stdout).into_owned();
            tracing::warn!(
                function,
                request_id,
                "the function returned an error: {body}"
            );
            let mut r = (
                StatusCode::BAD_GATEWAY,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                output.stdout.clone(),
            )
                .into_response();
            r.headers_mut()
                .insert(FUNCTION_ERROR_HEADER, HeaderValue::from_static("Unhandled"));
            return with_id(r, request_id, Counted::Crash);
        }
        other => {
            return failed(
                StatusCode::BAD_GATEWAY,
                format!("the function's process {other} during the invocation"),
            )
        }
    }
    if output.stdout_truncated {
        return failed(
            StatusCode::BAD_GATEWAY,
            format!("the function's response is larger than {max_output} bytes (max_output)"),
        );
    }
    if !proxy {
        let r = (
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            output.stdout.clone(),
        )
            .into_response();
        return with_id(r, request_id, Counted::Ok);
    }
    match proxy_response(&output.stdout) {
        Ok(r) => with_id(r, request_id, Counted::Ok),
        Err(why) => failed(
            StatusCode::BAD_GATEWAY,
            format!("malformed API Gateway proxy response: {why}"),
        ),
    }
}

fn with_id(mut r: Response, request_id: &str, counted: Counted) -> (Response, Counted) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    (r, counted)
}

/// A proxy integration's response object as HTTP: `statusCode` (required),
/// `headers`, `multiValueHeaders`, `body` and `isBase64Encoded`.
fn proxy_response(result: &[u8]) -> Result<Response, String> {
    let value: Value = serde_json::from_slice(result).map_err(|e| format!("not JSON ({e})"))?;
    let object = value
        .as_object()
        .ok_or("not a JSON object with a statusCode")?;
    let status = object
        .get("statusCode")
        .and_then(|s| s.as_u64().or_else(|| s.as_str()?.parse().ok()))
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .ok_or("no statusCode between 100 and 999")?;
    let body = match object.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => {
            if object.get("isBase64Encoded") == Some(&Value::Bool(true)) {
                base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map_err(|e| format!("body: isBase64Encoded but {e}"))?
            } else {
                s.clone().into_bytes()
            }
        }
        Some(_) => return Err("body is not a string".into()),
    };
    let mut r = (status, body).into_response();
    let headers = r.headers_mut();
    let scalar = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let header = |name: &str, value: &Value| -> Result<(HeaderName, HeaderValue), String> {
        let value = scalar(value).ok_or(format!("header {name:?}: not a string"))?;
        Ok((
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("header name {name:?}"))?,
            HeaderValue::from_str(&value).map_err(|_| format!("header {name:?}: bad value"))?,
        ))
    };
    if let Some(map) = object.get("headers").and_then(Value::as_object) {
        for (name, value) in map {
            let (name, value) = header(name, value)?;
            headers.insert(name, value);
        }
    }
    if let Some(map) = object.get("multiValueHeaders").and_then(Value::as_object) {
        for (name, values) in map {
            let values = values
                .as_array()
                .ok_or(format!("multiValueHeaders {name:?}: not a list"))?;
            let mut first = true;
            for value in values {
                let (name, value) = header(name, value)?;
                if first {
                    headers.remove(&name);
                    first = false;
                }
                headers.append(name, value);
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::program::fixture as output;

    #[test]
    fn invocations_are_unique_and_well_formed() {
        let a = invocation("arn:x".into(), Duration::from_secs(3), None);
        let b = invocation("arn:x".into(), Duration::from_secs(3), None);
        assert_ne!(a.request_id, b.request_id);
        assert_ne!(a.trace_id, b.trace_id);
        assert!(uuid::Uuid::parse_str(&a.request_id).is_ok());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let ahead = a.deadline_ms as i64 - now.as_millis() as i64;
        assert!((2_000..=3_000).contains(&ahead), "{ahead}");
        let root = a.trace_id.split(';').next().unwrap();
        assert_eq!(root.len(), "Root=1-".len() + 8 + 1 + 24, "{root}");
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let cases = [
            (ExecOutcome::Exited(0), StatusCode::OK),
            (ExecOutcome::FunctionError, StatusCode::BAD_GATEWAY),
            (ExecOutcome::Exited(4), StatusCode::BAD_GATEWAY),
            (ExecOutcome::Signaled(9), StatusCode::BAD_GATEWAY),
            (ExecOutcome::TimedOut, StatusCode::GATEWAY_TIMEOUT),
        ];
        for (outcome, status) in cases {
            let (r, _) = respond("f", "id", output(outcome, b"{\"a\":1}"), 64, false, false);
            assert_eq!(r.status(), status, "{outcome:?}");
            assert_eq!(r.headers()[REQUEST_ID_HEADER], "id");
        }
        let (r, _) = respond(
            "f",
            "id",
            output(ExecOutcome::FunctionError, b"{}"),
            64,
            false,
            false,
        );
        assert_eq!(r.headers()[FUNCTION_ERROR_HEADER], "Unhandled");
        let mut cut = output(ExecOutcome::Exited(0), b"{");
        cut.stdout_truncated = true;
        assert_eq!(
            respond("f", "id", cut, 1, false, false).0.status(),
            StatusCode::BAD_GATEWAY
        );
    }

    #[test]
    fn proxy_responses_become_http() {
        let ok = br#"{"statusCode":201,"headers":{"x-a":"1","x-n":2},
            "multiValueHeaders":{"set-cookie":["a=1","b=2"]},"body":"made"}"#;
        let (r, c) = respond(
            "f",
            "id",
            output(ExecOutcome::Exited(0), ok),
            1024,
            true,
            false,
        );
        assert_eq!((r.status(), c), (StatusCode::CREATED, Counted::Ok));
        assert_eq!(r.headers()["x-n"], "2");
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        let b64 = br#"{"statusCode":"200","body":"aGk=","isBase64Encoded":true}"#;
        let (r, _) = respond(
            "f",
            "id",
            output(ExecOutcome::Exited(0), b64),
            1024,
            true,
            false,
        );
        assert_eq!(r.status(), StatusCode::OK);
        for bad in [
            &b"not json"[..],
            b"[1]",
            b"{}",
            br#"{"statusCode":42}"#,
            br#"{"statusCode":200,"body":7}"#,
            br#"{"statusCode":200,"headers":{"bad name":"x"}}"#,
            br#"{"statusCode":200,"body":"!!","isBase64Encoded":true}"#,
        ] {
            let (r, _) = respond(
                "f",
                "id",
                output(ExecOutcome::Exited(0), bad),
                1024,
                true,
                false,
            );
            assert_eq!(
                r.status(),
                StatusCode::BAD_GATEWAY,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn invoke_api_headers_are_read_or_refused() {
        let mut h = HeaderMap::new();
        assert_eq!(invoke_options(&h), Ok(InvokeOptions::default()));
        h.insert("x-amz-invocation-type", HeaderValue::from_static("Event"));
        h.insert("x-amz-log-type", HeaderValue::from_static("Tail"));
        // {"custom":{"a":1}}
        h.insert(
            "x-amz-client-context",
            HeaderValue::from_static("eyJjdXN0b20iOnsiYSI6MX19"),
        );
        let o = invoke_options(&h).unwrap();
        assert_eq!(o.invocation_type, InvocationType::Event);
        assert!(o.tail_logs);
        assert_eq!(o.client_context.as_deref(), Some(r#"{"custom":{"a":1}}"#));
        for (name, bad) in [
            ("x-amz-invocation-type", "Later"),
            ("x-amz-log-type", "All"),
            ("x-amz-client-context", "!!"),
            // "[1]": JSON, but not an object.
            ("x-amz-client-context", "WzFd"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(bad));
            assert!(invoke_options(&h).is_err(), "{name}: {bad}");
        }
        let mut out = output(ExecOutcome::Exited(0), b"{}");
        out.stderr = b"x".repeat(LOG_TAIL + 10);
        let (r, _) = respond("f", "id", out, 64, false, true);
        let tail = base64::engine::general_purpose::STANDARD
            .decode(r.headers()["x-amz-log-result"].as_bytes())
            .unwrap();
        assert_eq!(tail.len(), LOG_TAIL);
    }

    #[test]
    fn a_proxy_event_carries_the_request() {
        let uri: Uri = "/v1/functions/f/invoke/a/b?x=1&x=2&y=%20z".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-h", HeaderValue::from_static("v"));
        let request = ProxyRequest {
            method: &Method::PUT,
            uri: &uri,
            headers: &headers,
            path: "/a/b",
            peer: "127.0.0.1:5000".parse().ok(),
            stage: "vmfork",
        };
        let event: Value = serde_json::from_slice(&proxy_event(&request, "rid", b"hello")).unwrap();
        assert_eq!(event["httpMethod"], "PUT");
        assert_eq!(event["path"], "/a/b");
        assert_eq!(event["body"], "hello");
        assert_eq!(event["isBase64Encoded"], false);
        assert_eq!(event["queryStringParameters"]["y"], " z");
        assert_eq!(
            event["multiValueQueryStringParameters"]["x"],
            json!(["1", "2"])
        );
        assert_eq!(event["headers"]["x-h"], "v");
        assert_eq!(event["requestContext"]["requestId"], "rid");
        assert_eq!(event["requestContext"]["identity"]["sourceIp"], "127.0.0.1");
        let binary: Value =
            serde_json::from_slice(&proxy_event(&request, "rid", &[0xff, 0])).unwrap();
        assert_eq!(binary["isBase64Encoded"], true);
        assert_eq!(binary["body"], "/wA=");
    }
}
