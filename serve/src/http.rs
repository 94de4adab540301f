//! The HTTP API of `vmfork serve` (axum on tokio).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;
use tokio::sync::Semaphore;

use super::function::{Function, Outcome};
use super::mailbox::Status;
use super::metrics::{Counted, Metrics};
use super::pool::Finished;
use vmfork_machine::machine::vmm_rss_kib;

pub struct AppState {
    pub functions: Vec<Arc<Function>>,
    pub templates: Vec<String>,
    pub metrics: Arc<Metrics>,
    pub slots: Semaphore,
    /// Invocations running or queued for a slot.
    pub admitted: AtomicUsize,
    /// --max-concurrency + --queue.
    pub admission_limit: usize,
    pub timeout: Duration,
    /// Where a finished clone goes to be stopped and closed.
    pub reaper: std::sync::mpsc::Sender<Finished>,
}

pub fn router(state: Arc<AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/functions", get(list))
        .route("/v1/functions/{name}/invoke", post(invoke))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(
            vmm_rss_kib(),
            state.functions.iter().map(|f| f.pooled_vms()).sum(),
        ),
    )
        .into_response()
}

async fn list(State(state): State<Arc<AppState>>) -> Response {
    let list: Vec<_> = state
        .functions
        .iter()
        .zip(&state.templates)
        .map(|(f, t)| {
            json!({
                "name": f.name,
                "template": t,
                "warm": f.warm_len(),
                "resumes_into_request": f.resumes_into_request(),
            })
        })
        .collect();
    axum::Json(json!({ "functions": list })).into_response()
}

/// One admitted invocation, running or queued for a slot; leaving (on any
/// path, including a client that hangs up) frees its place.
struct Admission<'a>(&'a AtomicUsize);

impl<'a> Admission<'a> {
    fn enter(state: &'a AppState) -> Option<Self> {
        let admitted = &state.admitted;
        if admitted.fetch_add(1, Ordering::AcqRel) >= state.admission_limit {
            admitted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admission(admitted))
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (status, body).into_response()
}

async fn invoke(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let Some(function) = state.functions.iter().find(|f| f.name == name).cloned() else {
        return text(StatusCode::NOT_FOUND, format!("no function named {name:?}"));
    };
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                state.metrics.count(Counted::TooLarge);
            }
            return text(status, rejection.body_text());
        }
    };
    // Running plus queued invocations are bounded; past that, shed load.
    let Some(_admitted) = Admission::enter(&state) else {
        state.metrics.count(Counted::Overloaded);
        let mut r = text(StatusCode::SERVICE_UNAVAILABLE, "overloaded, retry later");
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return r;
    };
    let Ok(_permit) = state.slots.acquire().await else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    };
    let reaper = state.reaper.clone();
    let (timeout, metrics, f) = (state.timeout, state.metrics.clone(), function.clone());
    let (reply, outcome) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        f.invoke(&body, timeout, &metrics, &reaper, |outcome| {
            let _ = reply.send(outcome);
        })
    });
    let outcome = outcome.await;
    // Refill the warm pool for the next request, off this one's path (a
    // blocking task only when there is something to make).
    if function.needs_refill() {
        let refill = function.clone();
        tokio::task::spawn_blocking(move || refill.refill());
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
        Ok(Outcome::Done {
            response,
            clone_us,
            run_us,
        }) => {
            let (code, outcome) = answer_for(&response.status);
            state.metrics.count(outcome);
            let mut r = (code, response.body).into_response();
            let headers = r.headers_mut();
            for (key, value) in [
                ("x-vmfork-clone-us", clone_us),
                ("x-vmfork-run-us", run_us),
                ("x-vmfork-invocations", u64::from(response.invocations)),
            ] {
                if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
                    headers.insert(key, v);
                }
            }
            r
        }
    };
    state.metrics.observe(started.elapsed());
    response
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
