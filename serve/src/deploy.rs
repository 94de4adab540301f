//! Deploying functions over HTTP: `PUT /v1/functions/NAME` with a
//! WebAssembly module as its body builds the function's template and
//! serves it; `DELETE` removes it. Deploying is administrative: with
//! `--admin-token-file` it needs that bearer token; without one it is open
//! only on a loopback listener (any local user may deploy then).
//!
//! Compiling a module and building its template run on the builder
//! thread, with a seccomp list of its own (no network, no serving), never
//! on the HTTP threads. One build runs at a time; a few more may wait.

use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use vmfork_template::trust::TrustPolicy;

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::function::Function;
use super::registry::{Entry, FunctionLimits, Record, Registry, Stored};
use super::Recycle;
use vmfork_machine::error::{Error, Result};

/// Builds waiting behind the running one before a deploy gets 503.
const PENDING_BUILDS: usize = 4;

/// Who may deploy.
pub struct Admin {
    /// The bearer token `--admin-token-file` holds.
    pub token: Option<String>,
    /// The listener is on a loopback address.
    pub loopback: bool,
}

impl Admin {
    /// None when the request may deploy; otherwise the answer it gets.
    pub fn refuse(&self, headers: &HeaderMap) -> Option<Response> {
        let Some(token) = &self.token else {
            return (!self.loopback).then(|| {
                text(
                    StatusCode::FORBIDDEN,
                    "deploying is off: this server listens beyond loopback and has no --admin-token-file",
                )
            });
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return None;
        }
        let mut r = text(
            StatusCode::UNAUTHORIZED,
            "deploying needs the admin bearer token",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Some(r)
    }
}

/// Compares without stopping at the first difference, so response times
/// do not reveal how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// What the builder thread needs to turn a module into a served function.
pub struct BuildSettings {
    /// Where deployed functions live: `--state-dir`, or a directory of this
    /// process's that is removed when it ends.
    pub state_dir: PathBuf,
    pub warm: usize,
    pub recycle: Recycle,
    pub max_concurrency: usize,
    /// Which templates are believed: the operator's, with the state
    /// directory among the stores when any are named.
    pub trust: TrustPolicy,
}

/// A build, or (without a module) the removal of a function's files: the
/// builder owns the state directory, and HTTP threads may not write files.
struct Job {
    name: String,
    module: Option<Bytes>,
    limits: FunctionLimits,
    reply: tokio::sync::oneshot::Sender<Result<Option<Entry>>>,
}

/// The handle HTTP threads queue builds on.
pub struct Builder {
    jobs: SyncSender<Job>,
}

impl Builder {
    /// Starts the builder thread. Call it from the main thread, before
    /// the HTTP runtime: the builder's seccomp list narrows the main
    /// thread's, which a thread started by an HTTP thread could not widen.
    pub fn spawn(settings: BuildSettings) -> Result<(Builder, std::thread::JoinHandle<()>)> {
        let (jobs, queue) = sync_channel(PENDING_BUILDS);
        let handle = std::thread::Builder::new()
            .name("builder".into())
            .spawn(move || builder_thread(settings, queue))?;
        Ok((Builder { jobs }, handle))
    }

    /// Queues a build; None when the queue is full.
    async fn build(
        &self,
        name: &str,
        module: Bytes,
        limits: FunctionLimits,
    ) -> Option<Result<Entry>> {
        self.send(name, Some(module), limits).await.map(|r| {
            r.and_then(|e| e.ok_or_else(|| Error::Io(std::io::Error::other("no entry built"))))
        })
    }

    /// Removes `name`'s files; None when the queue is full.
    async fn remove(&self, name: &str, limits: FunctionLimits) -> Option<Result<()>> {
        self.send(name, None, limits).await.map(|r| r.map(|_| ()))
    }

    async fn send(
        &self,
        name: &str,
        module: Option<Bytes>,
        limits: FunctionLimits,
    ) -> Option<Result<Option<Entry>>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            name: name.to_string(),
            module,
            limits,
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return None,
            Err(TrySendError::Disconnected(_)) => {
                return Some(Err(Error::Io(std::io::Error::other(
                    "the builder thread has stopped",
                ))))
            }
        }
        Some(
            answer.await.unwrap_or_else(|_| {
                Err(Error::Io(std::io::Error::other("the build was abandoned")))
            }),
        )
    }
}

fn builder_thread(settings: BuildSettings, queue: Receiver<Job>) {
    vmfork_isolation::seccomp::install_in_thread(vmfork_isolation::seccomp::ThreadKind::Builder);
    for job in queue {
        let result = match &job.module {
            Some(module) => build_function(&settings, &job.name, module, job.limits).map(Some),
            None => std::fs::remove_dir_all(Stored::new(&settings.state_dir, &job.name).dir)
                .or_else(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => Ok(()),
                    _ => Err(e),
                })
                .map(|()| None)
                .map_err(Error::Io),
        };
        let _ = job.reply.send(result);
    }
}

/// Builds `module`'s template as the next template of `name` in the state
/// directory, loads it and records it; a failed build leaves the function's
/// previous template (if any) as it was.
fn build_function(
    settings: &BuildSettings,
    name: &str,
    module: &[u8],
    limits: FunctionLimits,
) -> Result<Entry> {
    let stored = Stored::new(&settings.state_dir, name);
    let template_name = stored.next_template()?;
    let template = stored.dir.join(&template_name);
    let previous = stored.read().ok();
    let built = super::module::build_template(name, module, &limits, &template).and_then(|()| {
        Function::load(
            name,
            &template,
            settings.warm,
            settings.recycle,
            settings.max_concurrency,
            false,
            &settings.trust,
        )
    });
    let function = match built {
        Ok(f) => f,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&template);
            if previous.is_none() {
                let _ = std::fs::remove_dir_all(&stored.dir);
            }
            return Err(e);
        }
    };
    stored.write(&Record {
        template: template_name.clone(),
        limits,
        module_sha256: hex(&Sha256::digest(module)),
    })?;
    stored.prune(&template_name);
    Ok(Entry {
        function: Arc::new(function),
        template,
        limits,
        deployed: true,
        api_gateway: false,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads every function a state directory holds; one that cannot be
/// loaded is logged and skipped, so the others serve.
pub fn restore_all(settings: &BuildSettings, registry: &Registry) -> Result<()> {
    for name in super::registry::stored_names(&settings.state_dir)? {
        if registry.get(&name).is_some() {
            tracing::warn!("{name}: also given with --template; the deployed one is not served");
            continue;
        }
        let stored = Stored::new(&settings.state_dir, &name);
        let loaded = stored.read().and_then(|record| {
            let template = stored.dir.join(&record.template);
            let function = Function::load(
                &name,
                &template,
                settings.warm,
                settings.recycle,
                settings.max_concurrency,
                false,
                &settings.trust,
            )?;
            Ok(Entry {
                function: Arc::new(function),
                template,
                limits: record.limits,
                deployed: true,
                api_gateway: false,
            })
        });
        match loaded {
            Ok(entry) => {
                registry.insert(&name, entry);
            }
            Err(e) => tracing::warn!("{name}: not served: {e}"),
        }
    }
    Ok(())
}

/// `PUT /v1/functions/NAME?timeout=..&memory=..&max_output=..`
pub async fn put(
    registry: &Registry,
    builder: &Builder,
    name: &str,
    defaults: &FunctionLimits,
    query: Option<&str>,
    module: Bytes,
) -> Response {
    if let Err(why) = super::registry::check_name(name) {
        return text(StatusCode::BAD_REQUEST, why);
    }
    if registry.get(name).is_some_and(|e| !e.deployed) {
        return text(
            StatusCode::CONFLICT,
            format!("{name} is served from --template and cannot be replaced over HTTP"),
        );
    }
    let limits = match defaults.with_query(query) {
        Ok(l) => l,
        Err(why) => return text(StatusCode::BAD_REQUEST, why),
    };
    match builder.build(name, module, limits).await {
        None => {
            let mut r = text(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many builds waiting, retry later",
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            r
        }
        // A module vmfork refuses (not Wasm, imports it cannot satisfy, a
        // trap while initializing): the deployer's fault.
        Some(Err(e @ Error::InvalidArgument(_))) => {
            text(StatusCode::UNPROCESSABLE_ENTITY, format!("{name}: {e}"))
        }
        Some(Err(e)) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{name}: building its template failed: {e}"),
        ),
        Some(Ok(entry)) => {
            let body = describe(name, &entry);
            let replaced = registry.insert(name, entry).is_some();
            let status = if replaced {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            (status, axum::Json(body)).into_response()
        }
    }
}

/// `DELETE /v1/functions/NAME`
pub async fn delete(registry: &Registry, builder: &Builder, name: &str) -> Response {
    match registry.get(name) {
        None => text(StatusCode::NOT_FOUND, format!("no function named {name:?}")),
        Some(e) if !e.deployed => text(
            StatusCode::CONFLICT,
            format!("{name} is served from --template and cannot be removed over HTTP"),
        ),
        Some(e) => {
            registry.remove(name);
            // Requests running keep their clones: a clone maps its
            // template's memory, which outlives the files.
            match builder.remove(name, e.limits).await {
                Some(Ok(())) => StatusCode::NO_CONTENT.into_response(),
                Some(Err(err)) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("{name} is no longer served, but removing its files failed: {err}"),
                ),
                None => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("{name} is no longer served; its files stay until the builder is free"),
                ),
            }
        }
    }
}

/// One function as `GET /v1/functions` and a deploy describe it.
pub fn describe(name: &str, entry: &Entry) -> serde_json::Value {
    json!({
        "name": name,
        "template": entry.template,
        "kind": if entry.function.program().is_some() { "program" } else { "built-in" },
        "deployed": entry.deployed,
        "warm": entry.function.warm_len(),
        "resumes_into_request": entry.function.resumes_into_request(),
        "limits": {
            "timeout_ms": entry.limits.timeout.as_millis() as u64,
            "max_output": entry.limits.max_output,
            "memory": entry.limits.memory,
        },
    })
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    let mut body = message.into();
    body.push('\n');
    (status, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        h
    }

    #[test]
    fn the_token_decides_when_there_is_one() {
        let admin = Admin {
            token: Some("s3cret".into()),
            loopback: true,
        };
        assert!(admin.refuse(&bearer("s3cret")).is_none());
        for wrong in ["s3cre", "s3cret!", "", "S3CRET"] {
            let r = admin.refuse(&bearer(wrong)).expect("refused");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{wrong}");
        }
        let r = admin.refuse(&HeaderMap::new()).expect("refused");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn without_a_token_only_loopback_deploys() {
        let open = Admin {
            token: None,
            loopback: true,
        };
        assert!(open.refuse(&HeaderMap::new()).is_none());
        let closed = Admin {
            token: None,
            loopback: false,
        };
        let r = closed.refuse(&bearer("anything")).expect("refused");
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
}
