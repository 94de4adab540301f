//! wasm-peer: the "plain Wasmtime on the host" peer of vmfork's Wasm
//! functions, for scripts/bench-wasm.sh.
//!
//! `wasm-peer --listen 127.0.0.1:0 --module NAME=FILE.wasm [...]` serves
//! `POST /v1/functions/NAME/invoke` the way `vmfork serve` serves a Wasm
//! template, minus the VM: each request runs the module's `_start` in a
//! new instance (a new `Store`, from an `InstancePre` made once at start)
//! on a blocking thread, with the request body as stdin and stdout as the
//! response: 200, or 502 on a trap or a nonzero exit status.
//!
//! What it shares with vmfork: the HTTP front end (tokio with two
//! workers, hyper's HTTP/1.1 connection driver, an axum router), the
//! engine settings (wasm/src/engine_config.rs, compiled in as is, plus
//! the target and Cranelift flags of `vmfork_wasm::host_config`), and
//! Wasmtime 48. WASI preview 1 is `wasmtime-wasi`'s, with in-memory pipes.
//! `wasmtime-wasi`'s newest 48 release is 48.0.8 and it pins every
//! Wasmtime crate to its own version, so this peer runs Wasmtime 48.0.8
//! where vmfork runs 48.0.11 (patch releases of the same Cranelift).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

/// vmfork's engine settings, the very file the host and the Wasm guest
/// compile in.
#[path = "../../../wasm/src/engine_config.rs"]
#[allow(dead_code)]
mod engine_config;

/// The most stdout a request may produce (vmfork serve's --max-output
/// default): more is a 502.
const MAX_OUTPUT: usize = 1 << 20;

/// `vmfork_wasm::host_config()` with code it may run: the same settings,
/// target and Cranelift flags, and Wasmtime's own code memory (the
/// default) so that compiled code is made executable on the host.
fn config() -> Result<Config, String> {
    let mut config = Config::new();
    engine_config::apply_shared(&mut config);
    config
        .target(engine_config::TARGET)
        .map_err(|e| format!("{e:#}"))?;
    // SAFETY: Cranelift flags Wasmtime knows, as host_config sets them:
    // required off without signals-based traps.
    unsafe {
        config.cranelift_flag_set("enable_heap_access_spectre_mitigation", "false");
        config.cranelift_flag_set("enable_table_access_spectre_mitigation", "false");
    }
    config.with_custom_code_memory(None);
    Ok(config)
}

struct Function {
    name: String,
    pre: InstancePre<WasiP1Ctx>,
}

type Functions = Arc<HashMap<String, Arc<Function>>>;

/// What one run of `_start` ended with.
enum Outcome {
    Exited(i32),
    Trapped(String),
}

/// Runs `function` once in a new store and instance: `body` on stdin,
/// stdout returned with the outcome.
fn run(function: &Function, body: Bytes) -> Result<(Outcome, Bytes), String> {
    let stdout = MemoryOutputPipe::new(MAX_OUTPUT);
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(body.clone()))
        .stdout(stdout.clone())
        .arg(&function.name)
        .env("REQUEST_METHOD", "POST")
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .build_p1();
    let mut store = Store::new(function.pre.module().engine(), wasi);
    let instance = function
        .pre
        .instantiate(&mut store)
        .map_err(|e| format!("instantiating: {e:#}"))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|e| format!("{e:#}"))?;
    let outcome = match start.call(&mut store, ()) {
        Ok(()) => Outcome::Exited(0),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(status)) => Outcome::Exited(*status),
            None => Outcome::Trapped(format!("{e:#}")),
        },
    };
    drop(store);
    Ok((outcome, stdout.contents()))
}

async fn invoke(
    State(functions): State<Functions>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    let Some(function) = functions.get(&name).cloned() else {
        return (StatusCode::NOT_FOUND, format!("no function {name:?}\n")).into_response();
    };
    let ran = tokio::task::spawn_blocking(move || run(&function, body)).await;
    match ran {
        Ok(Ok((Outcome::Exited(0), out))) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            out,
        )
            .into_response(),
        Ok(Ok((Outcome::Exited(status), _))) => (
            StatusCode::BAD_GATEWAY,
            format!("the function exited with status {status}\n"),
        )
            .into_response(),
        Ok(Ok((Outcome::Trapped(why), _))) => (
            StatusCode::BAD_GATEWAY,
            format!("the function trapped: {why}\n"),
        )
            .into_response(),
        Ok(Err(why)) => (StatusCode::BAD_GATEWAY, format!("{why}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Compiles every module once and links it with WASI preview 1.
fn load(engine: &Engine, modules: &[(String, String)]) -> Result<Functions, String> {
    let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).map_err(|e| format!("{e:#}"))?;
    let mut functions = HashMap::new();
    for (name, path) in modules {
        let wasm = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        let module =
            Module::new(engine, &wasm).map_err(|e| format!("compiling {path}: {e:#}"))?;
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| format!("linking {path}: {e:#}"))?;
        let function = Function {
            name: name.clone(),
            pre,
        };
        functions.insert(name.clone(), Arc::new(function));
    }
    Ok(Arc::new(functions))
}

/// Serves `app` on `listener`, a connection per task, with hyper's
/// HTTP/1.1 driver as vmfork serve configures it.
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                eprintln!("wasm-peer: accepting a connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                hyper::service::Service::call(&service, request)
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .half_close(true)
                .max_buf_size(64 << 10)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

struct Args {
    listen: SocketAddr,
    modules: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = None;
    let mut modules = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = Some(v.parse().map_err(|e| format!("--listen {v}: {e}"))?);
            }
            "--module" => {
                let v = value("--module")?;
                let (name, path) = v
                    .split_once('=')
                    .ok_or(format!("--module {v}: expected NAME=FILE.wasm"))?;
                modules.push((name.to_string(), path.to_string()));
            }
            other => return Err(format!("unexpected argument {other:?}")),
        }
    }
    if modules.is_empty() {
        return Err("at least one --module NAME=FILE.wasm is needed".into());
    }
    Ok(Args {
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
        modules,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("wasm-peer: {e}");
            eprintln!("usage: wasm-peer [--listen ADDR] --module NAME=FILE.wasm [--module ...]");
            return ExitCode::from(2);
        }
    };
    let engine = match config().and_then(|c| Engine::new(&c).map_err(|e| format!("{e:#}"))) {
        Ok(engine) => engine,
        Err(e) => {
            eprintln!("wasm-peer: configuring the engine: {e}");
            return ExitCode::FAILURE;
        }
    };
    let functions = match load(&engine, &args.modules) {
        Ok(functions) => functions,
        Err(e) => {
            eprintln!("wasm-peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    // As vmfork serve: two async workers, invocations on blocking threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building the tokio runtime");
    let app = Router::new()
        .route("/v1/functions/{name}/invoke", post(invoke))
        .with_state(functions);
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("wasm-peer: --listen {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            Ok(local) => {
                use std::io::Write as _;
                let mut out = std::io::stdout();
                let _ = writeln!(out, "wasm-peer: listening on http://{local}");
                let _ = out.flush();
            }
            Err(e) => {
                eprintln!("wasm-peer: {e}");
                return ExitCode::FAILURE;
            }
        }
        serve(listener, app).await;
        ExitCode::SUCCESS
    })
}
