//! `vmfork serve`: function-as-a-service. Each HTTP invocation runs in a
//! fresh clone of the function's template; the request and response cross
//! the guest's mailbox (docs/guest-abi.md). docs/serve.md has the API.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cgi;
pub mod connection;
pub mod deploy;
pub mod function;
pub mod http;
pub mod invokers;
pub mod lambda;
pub mod limits;
pub use vmfork_machine::mailbox;
pub mod metrics;
mod module;
pub mod pool;
pub mod program;
pub mod progress;
pub mod registry;
pub mod server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deploy::{Admin, BuildSettings, Builder};
use function::Function;
use http::AppState;
use limits::Limits;
use metrics::Metrics;
pub use pool::Recycle;
use registry::{Entry, FunctionLimits, Registry};
use server::Drained;
pub use server::HttpLimits;
use vmfork_machine::control::StopLatch;
use vmfork_machine::error::{Error, Result};
use vmfork_template::trust::TrustPolicy;

pub struct ServeConfig {
    pub templates: Vec<(String, PathBuf)>,
    /// Lambda functions (by --template name) served through an API
    /// Gateway proxy mapping rather than the Invoke API.
    pub api_gateway: Vec<String>,
    pub listen: SocketAddr,
    pub max_concurrency: usize,
    pub queue: usize,
    pub timeout: Duration,
    pub max_body: usize,
    pub warm: usize,
    /// Boot a fresh VM per request instead of cloning (a benchmark baseline).
    pub cold_boot: bool,
    /// What becomes of a finished clone's VM (docs/serve.md).
    pub recycle: Recycle,
    /// Connections, header/body/idle timeouts and the drain deadline.
    pub http: HttpLimits,
    /// Bytes of stdout, and of stderr, a program function may produce
    /// (a deployed one's default).
    pub max_output: u32,
    /// Guest memory of a deployed function unless its deploy says.
    pub memory: u64,
    /// The bearer token deploys need (`--admin-token-file`).
    pub admin_token: Option<String>,
    /// Where deployed functions are kept across restarts; None keeps them
    /// in a directory of this process's, removed when it ends.
    pub state_dir: Option<PathBuf>,
    /// Largest module a deploy may send.
    pub max_module: usize,
    /// Which templates' recorded facts are believed (`--trusted-templates`).
    pub trust: TrustPolicy,
}

/// The operator's trust policy, with `state_dir` (where serve builds the
/// templates of deployed functions itself) added to its stores when it
/// names any; made now so that it can be canonicalized.
fn with_store(trust: &TrustPolicy, state_dir: &std::path::Path) -> Result<TrustPolicy> {
    let TrustPolicy::Stores(stores) = trust else {
        return Ok(trust.clone());
    };
    let canonical = std::fs::create_dir_all(state_dir)
        .and_then(|()| state_dir.canonicalize())
        .map_err(|e| {
            Error::InvalidArgument(format!("state directory {}: {e}", state_dir.display()))
        })?;
    let mut all = stores.to_vec();
    all.push(canonical);
    Ok(TrustPolicy::Stores(all.into()))
}

/// Loads every function (`--template`, then those kept in the state
/// directory), starts the reapers and the deploy builder: the state one
/// server shares between requests. Call it from the main thread (the
/// builder's seccomp list narrows it). Join the threads after the last
/// clone of the state is dropped; they end once every clone is closed and
/// the builder's queue is gone. Tests and the HTTP fuzzer
/// (serve/examples/fuzz_http.rs) serve it themselves.
pub fn new_state(
    config: &ServeConfig,
) -> Result<(Arc<AppState>, Vec<std::thread::JoinHandle<()>>)> {
    let defaults = FunctionLimits {
        timeout: config.timeout,
        max_output: config.max_output,
        memory: config.memory,
    };
    let registry = Registry::default();
    let state_dir = match &config.state_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("vmfork-serve-{}", std::process::id())),
    };
    let trust = with_store(&config.trust, &state_dir)?;
    for (name, dir) in &config.templates {
        let function = Function::load(
            name,
            dir,
            config.warm,
            config.recycle,
            config.max_concurrency,
            config.cold_boot,
            &trust,
        )?;
        let limits = FunctionLimits {
            memory: function.mem_size(),
            ..defaults
        };
        let api_gateway = config.api_gateway.iter().any(|n| n == name);
        let is_lambda = function.program().is_some_and(|p| p.lambda.is_some());
        if api_gateway && !is_lambda {
            return Err(Error::InvalidArgument(format!(
                "--api-gateway {name}: its template {} is not a Lambda function's (template build --lambda)",
                dir.display()
            )));
        }
        registry.insert(
            name,
            Entry {
                function: Arc::new(function),
                template: dir.clone(),
                limits,
                deployed: false,
                api_gateway,
            },
        );
    }
    if let Some(name) = config
        .api_gateway
        .iter()
        .find(|n| !config.templates.iter().any(|(t, _)| t == *n))
    {
        return Err(Error::InvalidArgument(format!(
            "--api-gateway {name}: no --template of that name"
        )));
    }
    let settings = BuildSettings {
        state_dir: state_dir.clone(),
        warm: config.warm,
        recycle: config.recycle,
        max_concurrency: config.max_concurrency,
        trust,
    };
    if config.state_dir.is_some() {
        deploy::restore_all(&settings, &registry)?;
    }
    let metrics = Arc::new(Metrics::default());
    let (reaper, mut threads) = pool::spawn_reapers(metrics.clone())?;
    let (invokers, first_invokers) = invokers::Invokers::spawn(blocking_threads(config))?;
    threads.extend(first_invokers);
    // `--cold-boot` is a benchmark of the embedded guest: nothing to deploy.
    let builder = if config.cold_boot {
        None
    } else {
        let (builder, thread) = Builder::spawn(settings)?;
        threads.push(thread);
        Some(builder)
    };
    let state = Arc::new(AppState {
        registry,
        metrics,
        limits: Limits::new(config.max_concurrency, config.queue),
        defaults,
        admin: Admin {
            token: config.admin_token.clone(),
            loopback: config.listen.ip().is_loopback(),
        },
        builder,
        state_dir,
        max_module: config.max_module,
        max_body: config.max_body,
        body_timeout: config.http.body_timeout,
        reaper,
        invokers,
        proc_status: std::fs::File::open("/proc/self/status").ok(),
        next_request: std::sync::atomic::AtomicU64::new(1),
    });
    Ok((state, threads))
}

/// Invoker threads the server may need (invokers.rs): one per running
/// VM's invocation, as many again finishing theirs (resetting a VM after
/// its slot is freed), one warm-pool refill per function, and one spare.
/// Jobs past this wait in the queue, and each of those holds a running
/// slot, so the queue is bounded too.
/// Refills of deployed functions' warm pools running at once, beyond one
/// per `--template` function.
const MAX_REFILLS: usize = 8;

pub fn blocking_threads(config: &ServeConfig) -> usize {
    2 * config.max_concurrency + config.templates.len() + MAX_REFILLS + 1
}

/// Binds `--listen`, as `run` needs it: before a jail drops privileges
/// and takes the host's network out of sight (the socket keeps both).
pub fn bind(listen: SocketAddr) -> Result<std::net::TcpListener> {
    let bound = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::InvalidArgument(format!("--listen {listen}: {e}")))?;
    Ok(bound)
}

/// Serves on `listener` (from `bind`) until `stop` is stopped
/// (SIGINT/SIGTERM in the CLI), then lets in-flight requests finish and
/// stops every clone, within `config.http.drain_timeout`.
pub fn run(config: ServeConfig, listener: std::net::TcpListener, stop: StopLatch) -> Result<()> {
    if config.max_body > mailbox::MAX_BODY {
        return Err(Error::InvalidArgument(format!(
            "--max-body {} is over the guest mailbox's {} bytes",
            config.max_body,
            mailbox::MAX_BODY
        )));
    }
    let (state, reapers) = new_state(&config)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        // Workers and blocking threads alike, before they run any task.
        // VM work runs on invoker threads (invokers.rs), so neither kind
        // needs KVM, new threads or open (docs/seccomp.md). The only
        // blocking task, the wait for the stop signal, is started from
        // the main thread (block_on).
        .max_blocking_threads(1)
        .on_thread_start(|| {
            vmfork_isolation::seccomp::install_in_thread(
                vmfork_isolation::seccomp::ThreadKind::Http,
            )
        })
        .build()?;
    let app = http::router(state.clone());
    let (vms, metrics) = (state.limits.clone(), state.metrics.clone());
    let drained = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let local = listener.local_addr()?;
        {
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = writeln!(out, "vmfork serve: listening on http://{local}");
            let _ = out.flush();
        }
        let shutdown = async move {
            let _ = tokio::task::spawn_blocking(move || stop.wait()).await;
        };
        Ok::<_, Error>(server::serve(listener, app, config.http, vms, metrics, shutdown).await)
    })?;
    if let Drained::DeadlinePassed { running } = drained {
        // The VMs still running end with the process. One line, whatever
        // the log level: the operator asked for a drain and did not get it.
        eprintln!(
            "vmfork serve: the drain deadline ({:.1} s) passed with {running} VMs running; stopping now",
            config.http.drain_timeout.as_secs_f64()
        );
        runtime.shutdown_background();
        return Ok(());
    }
    // In-flight requests are done; drop the warm shells and let the
    // reapers finish every clone still being torn down.
    let private_dir = config.state_dir.is_none().then(|| state.state_dir.clone());
    drop(state);
    drop(runtime);
    for r in reapers {
        let _ = r.join();
    }
    // Functions deployed without --state-dir last as long as the server.
    if let Some(dir) = private_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(())
}
