//! `vmfork serve`: the function-as-a-service HTTP front end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::args::{count, parse_duration, parse_size, Parsed};
use super::isolation::IsolationArgs;
use super::signals;
use vmfork_isolation::seccomp::{self, ThreadKind};
use vmfork_machine::control::StopLatch;
use vmfork_machine::error::{Error, Result};
use vmfork_serve::{bind, run as serve, HttpLimits, Recycle, ServeConfig};
use vmfork_template::trust::TrustPolicy;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A function: NAME=TEMPLATE_DIR (repeatable). Build templates with
    /// `vmfork template build --function sha256 --cmdline quiet=1 ...`.
    /// Without any, functions come from deploys (PUT /v1/functions/NAME)
    /// and --state-dir.
    #[arg(long = "template", value_name = "NAME=DIR")]
    pub templates: Vec<String>,
    /// Serve this Lambda function (a --template NAME) as an API Gateway
    /// REST proxy integration: any method and sub-path, the request as a
    /// proxy event, the function's statusCode/headers/body as the
    /// response (repeatable; docs/linux-functions.md). Without it a Lambda
    /// function is invoked as by Lambda's Invoke API.
    #[arg(long = "api-gateway", value_name = "NAME")]
    pub api_gateway: Vec<String>,
    /// A file holding the bearer token deploys (PUT and DELETE
    /// /v1/functions/NAME) need. Without it, deploying is open to anyone
    /// who can reach a loopback listener, and off on any other.
    #[arg(long, value_name = "PATH")]
    pub admin_token_file: Option<PathBuf>,
    /// Keep deployed functions here, and serve them again after a
    /// restart. Without it they last as long as the server.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Believe only templates inside this directory (repeatable): their
    /// recorded kernel digest may let clones resume straight into their
    /// request. Without it, any template only this user or root can
    /// write is believed (docs/security.md, "Templates").
    #[arg(long = "trusted-templates", value_name = "DIR")]
    pub trusted_templates: Vec<PathBuf>,
    /// Largest module a deploy may send.
    #[arg(long, default_value = "32MiB", value_name = "SIZE", value_parser = Parsed(parse_size))]
    pub max_module: u64,
    /// Guest memory of a deployed function unless its deploy says
    /// (`?memory=`).
    #[arg(long, default_value = "128M", value_name = "SIZE", value_parser = Parsed(parse_size))]
    pub memory: u64,
    /// Address to listen on (port 0 picks a free one; the address is
    /// printed on the first line of stdout).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Invocations running at once; more wait in a bounded queue.
    #[arg(long, default_value = "8", value_name = "N", value_parser = count::<usize>(1, 4096))]
    pub max_concurrency: usize,
    /// Invocations that may wait for a slot before new ones get 503.
    #[arg(long, default_value = "64", value_name = "N", value_parser = count::<usize>(0, 1 << 20))]
    pub queue: usize,
    /// Per-invocation time limit; the clone is stopped and the caller gets 504.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub timeout: Duration,
    /// Largest request body; larger ones get 413.
    #[arg(long, default_value = "1MiB", value_name = "SIZE", value_parser = Parsed(parse_size))]
    pub max_body: u64,
    /// Bytes of stdout, and of stderr, a program function (a Linux
    /// `--exec` template) may write; past it the caller gets 502.
    #[arg(long, default_value = "1MiB", value_name = "SIZE", value_parser = Parsed(parse_size))]
    pub max_output: u64,
    /// VM shells to keep ready per function ahead of demand.
    #[arg(long, default_value = "0", value_name = "N", value_parser = count::<usize>(0, 10_000))]
    pub warm: usize,
    /// Cold-boot the template's guest for every request instead of
    /// cloning it: the baseline clones are benchmarked against.
    #[arg(long, conflicts_with = "warm")]
    pub cold_boot: bool,
    /// What becomes of a clone's VM after its request (docs/serve.md,
    /// "Recycled VMs").
    #[arg(long, value_enum, default_value = "in-place")]
    pub recycle: RecycleArg,
    /// Time from a request's first byte to the end of its headers; a
    /// slower client's connection is closed.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub header_timeout: Duration,
    /// Time from the end of a request's headers to the end of its body;
    /// a slower client gets 408.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub body_timeout: Duration,
    /// A connection with no request and no byte moving either way for
    /// this long is closed.
    #[arg(long, default_value = "60s", value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub idle_timeout: Duration,
    /// Client connections open at once; at the limit the least recently
    /// active idle one is closed to make room, or the new one when every
    /// connection has a request running.
    #[arg(long, default_value = "1024", value_name = "N", value_parser = count::<usize>(1, 1 << 20))]
    pub max_connections: usize,
    /// After SIGTERM/SIGINT, how long in-flight requests may take before
    /// the server stops anyway (a second signal stops it at once).
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub drain_timeout: Duration,
    /// --jail, --uid, --gid, --cgroup and its limits, as for `clone`: the
    /// listener is bound and --admin-token-file read first; --template
    /// and --state-dir are paths inside the jail (docs/security.md,
    /// "Serve in a jail").
    #[command(flatten)]
    pub isolation: IsolationArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RecycleArg {
    /// Reuse it for a later clone, refilling only the pages it wrote.
    InPlace,
    /// Reuse it for a later clone with all its memory dropped.
    Remap,
    /// Close it; every clone gets a new VM.
    Off,
}

pub fn run(args: &ServeArgs) -> Result<()> {
    let mut templates = Vec::new();
    for t in &args.templates {
        let (name, dir) = t.split_once('=').ok_or_else(|| {
            Error::InvalidArgument(format!("--template {t:?}: expected NAME=DIR"))
        })?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(Error::InvalidArgument(format!(
                "--template {t:?}: a name is letters, digits, '-' and '_'"
            )));
        }
        if templates.iter().any(|(n, _)| n == name) {
            return Err(Error::InvalidArgument(format!(
                "--template {t:?}: the name {name:?} is given twice"
            )));
        }
        templates.push((name.to_string(), PathBuf::from(dir)));
    }
    let mut config = ServeConfig {
        templates,
        api_gateway: args.api_gateway.clone(),
        listen: args.listen,
        max_concurrency: args.max_concurrency,
        queue: args.queue,
        timeout: args.timeout,
        max_body: usize::try_from(args.max_body).map_err(|_| {
            Error::InvalidArgument(format!("--max-body {}: too large", args.max_body))
        })?,
        warm: args.warm,
        cold_boot: args.cold_boot,
        admin_token: args
            .admin_token_file
            .as_deref()
            .map(read_token)
            .transpose()?,
        state_dir: args.state_dir.clone(),
        // Set once inside the jail: its directories are resolved there.
        trust: TrustPolicy::Owner,
        max_module: usize::try_from(args.max_module).map_err(|_| {
            Error::InvalidArgument(format!("--max-module {}: too large", args.max_module))
        })?,
        memory: args.memory,
        max_output: u32::try_from(args.max_output)
            .ok()
            .filter(|n| *n <= vmfork_machine::exec::DEFAULT_OUTPUT_CAP)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "--max-output {}: at most {} bytes (the mailbox holds both streams)",
                    args.max_output,
                    vmfork_machine::exec::DEFAULT_OUTPUT_CAP
                ))
            })?,
        recycle: match args.recycle {
            RecycleArg::InPlace => Recycle::InPlace,
            RecycleArg::Remap => Recycle::Remap,
            RecycleArg::Off => Recycle::Off,
        },
        http: HttpLimits {
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            idle_timeout: args.idle_timeout,
            max_connections: args.max_connections,
            drain_timeout: args.drain_timeout,
        },
    };
    // Bound from the host's network and as root; the jail then takes
    // both away, and the socket stays.
    let listener = bind(args.listen)?;
    args.isolation.apply()?;
    // The jail needs calls no list allows: the main thread's filter goes
    // on after it, before any thread or VM exists.
    seccomp::install(ThreadKind::Vmm)?;
    // --trusted-templates are paths where the server runs (in the jail).
    if !args.trusted_templates.is_empty() {
        config.trust = TrustPolicy::stores(&args.trusted_templates)
            .map_err(|e| Error::InvalidArgument(format!("--trusted-templates: {e}")))?;
    }
    let stop = StopLatch::default();
    signals::forward_then_exit(stop.clone(), "vmfork serve");
    serve(config, listener, stop)
}

/// The token in `path`: its first line, which must not be empty.
fn read_token(path: &std::path::Path) -> Result<String> {
    let bad = |why: String| {
        Error::InvalidArgument(format!("--admin-token-file {}: {why}", path.display()))
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !meta.is_file() || meta.len() > 4096 {
        return Err(bad("not a regular file of at most 4096 bytes".into()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.len() < 16 {
        return Err(bad("the token must be at least 16 characters".into()));
    }
    Ok(token.to_string())
}
