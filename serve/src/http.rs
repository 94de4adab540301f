//! The HTTP API of `vmfork serve` (an axum router; server.rs serves it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, put};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;

use super::cgi::CgiRequest;
use super::deploy::{Admin, Builder};
use super::function::{Outcome, Payload};
use super::lambda::{InvocationType, InvokeOptions};
use super::limits::{Admission, Limits};
use super::metrics::{Counted, Metrics};
use super::pool::Finished;
use super::registry::{FunctionLimits, Registry};
use super::server::ConnectionAddrs;
use vmfork_machine::mailbox::Status;

pub struct AppState {
    pub registry: Registry,
    pub metrics: Arc<Metrics>,
    /// Running VMs and admitted invocations.
    pub limits: Arc<Limits>,
    /// A deployed function's limits unless its deploy says otherwise.
    pub defaults: FunctionLimits,
    pub admin: Admin,
    /// Where deploys are built; None when deploying is not possible.
    pub builder: Option<Builder>,
    /// Where deployed functions live (deploy.rs).
    pub state_dir: std::path::PathBuf,
    /// Largest module a deploy may send.
    pub max_module: usize,
    /// Largest request body (`--max-body`).
    pub max_body: usize,
    /// From the end of a request's head to the end of its body.
    pub body_timeout: Duration,
    /// Where a finished clone goes to be stopped and closed.
    pub reaper: std::sync::mpsc::Sender<Finished>,
    /// Where invocations' VM work runs (HTTP threads may not touch KVM).
    pub invokers: super::invokers::Invokers,
    /// /proc/self/status, opened once: HTTP threads may not open files.
    pub proc_status: Option<std::fs::File>,
    /// Numbers requests, for program functions' logs.
    pub next_request: std::sync::atomic::AtomicU64,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/functions", get(list))
        .route("/v1/functions/{name}", put(deploy).delete(undeploy))
        // Program functions take any method and sub-path (CGI's PATH_INFO);
        // built-in ones only POST.
        .route("/v1/functions/{name}/invoke", any(invoke))
        .route("/v1/functions/{name}/invoke/", any(invoke))
        .route("/v1/functions/{name}/invoke/{*path}", any(invoke))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(
            state.proc_status.as_ref().map_or(0, rss_kib),
            state
                .registry
                .list()
                .iter()
                .map(|(_, e)| e.function.pooled_vms())
                .sum(),
        ),
    )
        .into_response()
}

async fn list(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<_> = state
        .registry
        .list()
        .iter()
        .map(|(name, entry)| super::deploy::describe(name, entry))
        .collect();
    axum::Json(json!({ "functions": list })).into_response()
}

async fn deploy(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    request: Request,
) -> Response {
    if let Some(refused) = state.admin.refuse(request.headers()) {
        return refused;
    }
    let Some(builder) = &state.builder else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "deploying is not available",
        );
    };
    if declared_length(request.headers()).is_some_and(|n| n > state.max_module as u64) {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a module is at most {} bytes (--max-module)",
                state.max_module
            ),
        );
    }
    let query = request.uri().query().map(str::to_string);
    let limited = Limited::new(request.into_body(), state.max_module).collect();
    let module = match tokio::time::timeout(state.body_timeout, limited).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return text(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "a module is at most {} bytes (--max-module)",
                    state.max_module
                ),
            )
        }
        Ok(Err(e)) => return text(StatusCode::BAD_REQUEST, format!("reading the module: {e}")),
        Err(_) => {
            return text(
                StatusCode::REQUEST_TIMEOUT,
                "the module took too long to arrive",
            )
        }
    };
    super::deploy::put(
        &state.registry,
        builder,
        &name,
        &state.defaults,
        query.as_deref(),
        module,
    )
    .await
}

async fn undeploy(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = state.admin.refuse(&headers) {
        return refused;
    }
    let Some(builder) = &state.builder else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "deploying is not available",
        );
    };
    super::deploy::delete(&state.registry, builder, &name).await
}

/// VmRSS from /proc/self/status, read again from its start (pread: the
/// kernel regenerates the file on each read from offset 0); 0 if absent.
fn rss_kib(status: &std::fs::File) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while len < buf.len() {
        match status.read_at(&mut buf[len..], len as u64) {
            Ok(0) | Err(_) => break,
            Ok(n) => len += n,
        }
    }
    String::from_utf8_lossy(&buf[..len])
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (status, body).into_response()
}

async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(params): Path<std::collections::HashMap<String, String>>,
    request: Request,
) -> Response {
    let started = Instant::now();
    let name = params.get("name").cloned().unwrap_or_default();
    let Some(entry) = state.registry.get(&name) else {
        return text(StatusCode::NOT_FOUND, format!("no function named {name:?}"));
    };
    let (function, limits) = (entry.function.clone(), entry.limits);
    let lambda = function.program().and_then(|e| e.lambda.clone());
    // Lambda's Invoke API is a POST to the function itself; behind an API
    // Gateway proxy mapping any method and path reach it, as CGI does.
    let program = function.program().is_some() && (lambda.is_none() || entry.api_gateway);
    let path_info = params.get("path").map(|p| format!("/{p}")).or_else(|| {
        // `/invoke/`: the sub-path is just the slash.
        request.uri().path().ends_with('/').then(|| "/".to_string())
    });
    let kind = if lambda.is_some() {
        "a Lambda function (Invoke API)"
    } else {
        "a built-in function"
    };
    if !program && path_info.is_some() {
        return text(
            StatusCode::NOT_FOUND,
            format!("{name} is {kind}, with no sub-paths"),
        );
    }
    if !program && request.method() != Method::POST {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{name} is {kind}: POST /v1/functions/{name}/invoke"),
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    // A declared body over the limit is refused before a byte of it is
    // read; a body that does not declare its length is counted as it
    // arrives.
    if declared_length(request.headers()).is_some_and(|n| n > state.max_body as u64) {
        return too_large(&state);
    }
    let options = match (&lambda, entry.api_gateway) {
        (Some(_), false) => match super::lambda::invoke_options(request.headers()) {
            Ok(options) => options,
            Err(why) => return text(StatusCode::BAD_REQUEST, why),
        },
        _ => InvokeOptions::default(),
    };
    if options.invocation_type == InvocationType::DryRun {
        return StatusCode::NO_CONTENT.into_response();
    }
    // Running plus queued invocations are bounded, and so are the bodies
    // buffered for them: admission comes before the body is read.
    let Some(admission) = state.limits.admit() else {
        state.metrics.count(Counted::Overloaded);
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry later");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(body, &state).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request_id = state
        .next_request
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let invocation = lambda.as_ref().map(|l| {
        super::lambda::invocation(l.arn(), limits.timeout, options.client_context.clone())
    });
    let payload = match (function.program(), &invocation) {
        (None, _) => Payload::Body(body),
        (Some(program), Some(invocation)) => {
            let event = if entry.api_gateway {
                let addrs = parts.extensions.get::<ConnectionAddrs>().copied();
                let path = path_info.unwrap_or_else(|| "/".into());
                super::lambda::proxy_event(
                    &super::lambda::ProxyRequest {
                        method: &parts.method,
                        uri: &parts.uri,
                        headers: &parts.headers,
                        path: &path,
                        peer: addrs.and_then(|a| a.peer),
                        stage: "vmfork",
                    },
                    &invocation.request_id,
                    &body,
                )
            } else {
                body.to_vec()
            };
            let spec = vmfork_machine::lambda::invoke_spec(
                program,
                invocation,
                event,
                limits.max_output,
                limits.timeout,
            );
            match spec.encode() {
                Ok(request) => Payload::Exec(request),
                Err(e) => {
                    state.metrics.count(Counted::TooLarge);
                    return text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
                }
            }
        }
        (Some(entry), None) => {
            let addrs = parts.extensions.get::<ConnectionAddrs>().copied();
            let cgi = CgiRequest {
                script_name: format!("/v1/functions/{name}/invoke"),
                path_info: path_info.unwrap_or_default(),
                server_port: addrs.and_then(|a| a.local).map_or(0, |a| a.port()),
                remote_addr: addrs.and_then(|a| a.peer),
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
            };
            let env = cgi.environment(body.len());
            match entry
                .spec(env, body.to_vec(), limits.max_output, limits.timeout)
                .encode()
            {
                Ok(request) => Payload::Exec(request),
                Err(e) => {
                    state.metrics.count(Counted::TooLarge);
                    return text(StatusCode::PAYLOAD_TOO_LARGE, e.to_string());
                }
            }
        }
    };
    let pending = Pending {
        function,
        limits,
        payload,
        invocation,
        request_id,
        proxy: entry.api_gateway,
        tail_logs: options.tail_logs,
        started,
    };
    if options.invocation_type == InvocationType::Event {
        // Lambda's asynchronous invocation: accepted now (admission above
        // still bounds how many wait), run when a slot is free, its result
        // logged. Not retried, and dropped if the server stops first.
        let id = pending.invocation.as_ref().map(|i| i.request_id.clone());
        let id = id.unwrap_or_default();
        let name = pending.function.name.clone();
        let (task_state, task_id) = (state.clone(), id.clone());
        tokio::spawn(async move {
            let r = pending.finish(&task_state, admission).await;
            tracing::info!(
                function = name,
                request = task_id,
                "asynchronous invocation ended: {}",
                r.status()
            );
        });
        let mut r = StatusCode::ACCEPTED.into_response();
        if let Ok(v) = HeaderValue::from_str(&id) {
            r.headers_mut().insert(super::lambda::REQUEST_ID_HEADER, v);
        }
        return r;
    }
    pending.finish(&state, admission).await
}

/// An invocation whose body is read and payload encoded, waiting for a
/// slot to run in.
struct Pending {
    function: Arc<super::function::Function>,
    limits: FunctionLimits,
    payload: Payload,
    invocation: Option<vmfork_machine::lambda::Invocation>,
    /// Numbers it in program functions' logs.
    request_id: u64,
    /// Behind an API Gateway proxy mapping.
    proxy: bool,
    tail_logs: bool,
    started: Instant,
}

impl Pending {
    /// Runs it in a clone once a slot is free, and answers.
    async fn finish(self, state: &Arc<AppState>, admission: Admission) -> Response {
        let Pending {
            function,
            limits,
            payload,
            invocation,
            request_id,
            proxy,
            tail_logs,
            started,
        } = self;
        // The slot goes with the VM: it is freed when the VM is stopped, not
        // when this handler is dropped (a client that hangs up).
        let Some(slot) = admission.run_slot().await else {
            return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
        };
        let reaper = state.reaper.clone();
        let (timeout, metrics, f) = (limits.timeout, state.metrics.clone(), function.clone());
        let (reply, outcome) = tokio::sync::oneshot::channel();
        // A job the invokers no longer take (shutting down) drops `reply`:
        // the outcome below is then an error.
        let _ = state.invokers.run(move || {
            f.invoke(
                Some(slot),
                &payload,
                timeout,
                &metrics,
                &reaper,
                |outcome| {
                    let _ = reply.send(outcome);
                },
            )
        });
        let outcome = outcome.await;
        // Refill the warm pool for the next request, off this one's path (a
        // blocking task only when there is something to make, one at a time).
        if function.claim_refill() {
            let refill = function.clone();
            // Once the server is shutting down there is nothing to refill.
            let _ = state.invokers.run(move || refill.refill_claimed());
        }
        let response = match outcome {
            Err(e) => {
                state.metrics.count(Counted::Error);
                text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("invocation task failed: {e}"),
                )
            }
            Ok(Outcome::Timeout) => {
                state.metrics.count(Counted::Timeout);
                text(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "the function ran longer than {:.1} s; its clone was stopped",
                        timeout.as_secs_f64()
                    ),
                )
            }
            Ok(Outcome::Crash(reason)) => {
                state.metrics.count(Counted::Crash);
                text(
                    StatusCode::BAD_GATEWAY,
                    format!("the function's VM crashed: {reason}"),
                )
            }
            Ok(Outcome::Error(reason)) => {
                state.metrics.count(Counted::Error);
                text(StatusCode::INTERNAL_SERVER_ERROR, reason)
            }
            Ok(Outcome::Ran {
                output,
                clone_us,
                run_us,
            }) => {
                let (mut r, counted) = match &invocation {
                    Some(invocation) => super::lambda::respond(
                        &function.name,
                        &invocation.request_id,
                        output,
                        limits.max_output,
                        proxy,
                        tail_logs,
                    ),
                    None => super::program::respond(
                        &function.name,
                        request_id,
                        output,
                        limits.max_output,
                    ),
                };
                state.metrics.count(counted);
                timing_headers(r.headers_mut(), clone_us, run_us, None);
                r
            }
            Ok(Outcome::Done {
                response,
                clone_us,
                run_us,
            }) => {
                let (code, outcome) = answer_for(&response.status);
                state.metrics.count(outcome);
                let mut r = (code, response.body).into_response();
                timing_headers(
                    r.headers_mut(),
                    clone_us,
                    run_us,
                    Some(u64::from(response.invocations)),
                );
                r
            }
        };
        state.metrics.observe(started.elapsed());
        response
    }
}

fn timing_headers(headers: &mut HeaderMap, clone_us: u64, run_us: u64, invocations: Option<u64>) {
    let values = [
        ("x-vmfork-clone-us", Some(clone_us)),
        ("x-vmfork-run-us", Some(run_us)),
        ("x-vmfork-invocations", invocations),
    ];
    for (key, value) in values {
        if let Some(v) = value.and_then(|v| HeaderValue::from_str(&v.to_string()).ok()) {
            headers.insert(key, v);
        }
    }
}

/// The Content-Length a request declares, if any (hyper has already
/// refused a malformed one).
fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn too_large(state: &AppState) -> Response {
    state.metrics.count(Counted::TooLarge);
    text(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over {} bytes", state.max_body),
    )
}

/// The whole body, within `--max-body` and `--body-timeout`.
async fn read_body(body: Body, state: &AppState) -> Result<Bytes, Response> {
    let limited = Limited::new(body, state.max_body).collect();
    match tokio::time::timeout(state.body_timeout, limited).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large(state)),
        Ok(Err(e)) => Err(text(
            StatusCode::BAD_REQUEST,
            format!("reading the body: {e}"),
        )),
        Err(_) => {
            state.metrics.count(Counted::SlowBody);
            Err(text(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body took longer than {:.1} s",
                    state.body_timeout.as_secs_f64()
                ),
            ))
        }
    }
}

/// The HTTP status and metrics outcome for each status a guest may answer
/// with (docs/serve.md); a response the mailbox refuses is a crash (502).
pub fn answer_for(status: &Status) -> (StatusCode, Counted) {
    match status {
        Status::Ok => (StatusCode::OK, Counted::Ok),
        Status::Rejected => (StatusCode::UNPROCESSABLE_ENTITY, Counted::Rejected),
        Status::BadRequest => (StatusCode::BAD_REQUEST, Counted::BadRequest),
    }
}
