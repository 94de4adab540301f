//! `vmfork template build`: cold-boot to the ready point and save the VM;
//! `push` and `pull`: a template through an OCI registry.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::json;

use super::args::{parse_duration, Parsed};
use super::boot::VmArgs;
use super::progress::{Progress, ProgressMode};
use super::signals;
use vmfork_machine::devices::console::Console;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::exec::ExecEntry;
use vmfork_registry::Reference;
use vmfork_wasm::template::{build_template, WasmTemplate};

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Cold-boot a VM to its ready point and save it as a template directory.
    #[command(after_help = "Examples:
  vmfork template build --out /tmp/tpl --json
  vmfork template build --cmdline \"quiet=1 touch_mib=8\" --out /tmp/tpl")]
    Build(Box<BuildArgs>),
    /// Hold a template's memory in a sealed memfd and hand it to clone
    /// processes (`vmfork clone --holder SOCK`) until stopped.
    Serve {
        /// The template directory.
        dir: PathBuf,
        /// The Unix socket to listen on.
        #[arg(long, value_name = "PATH")]
        sock: PathBuf,
    },
    /// Write a template's guest RAM (a diff applied over its base) as one
    /// flat file, for inspection and comparison.
    Flatten {
        /// The template directory.
        dir: PathBuf,
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Push a template to an OCI registry, as an artifact of vmfork's own
    /// media types (docs/registry.md). Diffs and rootfs templates are not
    /// supported yet.
    #[command(after_help = "Examples:
  vmfork template push /tmp/tpl 127.0.0.1:5000/fn/echo:v1
  printf '%s' \"$PASS\" | vmfork template push /tmp/tpl reg.example/fn/echo:v1 --username ci --password-stdin")]
    Push(PushArgs),
    /// Pull a template pushed by `template push` into a new directory,
    /// checking every blob's digest and size, and the template as a
    /// restore would, before it appears.
    #[command(after_help = "Examples:
  vmfork template pull 127.0.0.1:5000/fn/echo:v1 --out /tmp/echo
  vmfork template pull 127.0.0.1:5000/fn/echo@sha256:... --out /tmp/echo --json")]
    Pull(PullArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The template directory.
    pub dir: PathBuf,
    /// Where to push it: [REGISTRY/]REPOSITORY[:TAG].
    #[arg(id = "REF", value_name = "REF", value_parser = Parsed(parse_reference))]
    pub reference: Reference,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print what was pushed as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// What to pull: [REGISTRY/]REPOSITORY[:TAG] or REPOSITORY@sha256:DIGEST.
    #[arg(id = "REF", value_name = "REF", value_parser = Parsed(parse_reference))]
    pub reference: Reference,
    /// The template directory to create (must not exist).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Print what was pulled as one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// User name for the registry's basic auth (or VMFORK_REGISTRY_USERNAME).
    #[arg(long, value_name = "NAME")]
    pub username: Option<String>,
    /// Read the password from the first line of stdin (otherwise from
    /// VMFORK_REGISTRY_PASSWORD); never give it on the command line.
    #[arg(long)]
    pub password_stdin: bool,
    /// Plain HTTP even to a registry that is not on loopback (loopback
    /// registries always get plain HTTP).
    #[arg(long)]
    pub plain_http: bool,
}

fn parse_reference(s: &str) -> std::result::Result<Reference, String> {
    s.parse::<Reference>().map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// The template directory to create (must not exist).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Fail if the guest is not ready within this time.
    #[arg(long, default_value = "60", value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub timeout: Duration,
    /// Print the build time and sizes as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Make a function template whose every request runs this program in a
    /// fresh clone, with the CGI conventions of `vmfork serve` (body on
    /// stdin, request in the environment, stdout the response; see
    /// docs/serve.md), e.g. '/usr/bin/prog --flag'. Split as a shell would,
    /// without expansion. Needs a guest with the vmfork agent: a Linux
    /// kernel (--kernel) with --rootfs.
    #[arg(long, value_name = "COMMAND", value_parser = Parsed(parse_exec))]
    pub exec: Option<ExecEntry>,
    /// Make a WebAssembly function's template: the module (a WASI preview
    /// 1 command, binary or text) is compiled, loaded into vmfork's Wasm
    /// guest, initialized (`wizer.initialize` if it exports it) and saved
    /// at its ready point; every request or `vmfork clone -- ARGS` runs
    /// its `_start` in a fresh clone (docs/wasm.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["kernel", "initrd", "rootfs", "function", "cmdline", "exec", "vcpus", "lambda"])]
    pub wasm: Option<PathBuf>,
    /// Make an AWS Lambda function's template: start this program (a
    /// custom runtime's `bootstrap`, or e.g. `python3 -m awslambdaric
    /// app.handler`) with the Lambda Runtime API at
    /// AWS_LAMBDA_RUNTIME_API, and take the template once it waits for
    /// its first invocation, so its init ran once. Each request to `vmfork
    /// serve` is then one invocation in a fresh clone
    /// (docs/linux-functions.md). Needs --kernel and --rootfs.
    #[arg(long, value_name = "COMMAND", conflicts_with = "exec")]
    pub lambda: Option<String>,
    /// The Lambda function's name (AWS_LAMBDA_FUNCTION_NAME, and its ARN);
    /// by default the --out directory's name.
    #[arg(long, value_name = "NAME", requires = "lambda")]
    pub function_name: Option<String>,
    /// How long the Lambda function's init may take, to its first wait
    /// for an invocation (Lambda's own limit is 10 s).
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = Parsed(parse_duration), requires = "lambda")]
    pub init_timeout: Duration,
    /// An environment variable NAME=VALUE for the --lambda or --exec
    /// program (repeatable; it wins over vmfork's defaults).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
}

/// The program an --exec or --lambda template records, with --env.
fn program_entry(args: &BuildArgs) -> Result<Option<ExecEntry>> {
    if let Some(command) = &args.lambda {
        let name = match &args.function_name {
            Some(name) => name.clone(),
            None => args
                .out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        vmfork_machine::lambda::check_function_name(&name).map_err(|e| match e {
            Error::InvalidArgument(why) => {
                Error::InvalidArgument(format!("{why} (name it with --function-name)"))
            }
            other => other,
        })?;
        return vmfork_machine::lambda::entry(
            command,
            &name,
            args.vm.mem >> 20,
            &args.env,
            args.init_timeout,
        )
        .map(Some);
    }
    let Some(mut entry) = args.exec.clone() else {
        return Ok(None);
    };
    vmfork_machine::lambda::check_env(&args.env)?;
    entry.env.extend(args.env.iter().cloned());
    Ok(Some(entry))
}

fn parse_exec(s: &str) -> std::result::Result<ExecEntry, String> {
    ExecEntry::parse(s).map_err(|e| match e {
        Error::InvalidArgument(why) => why,
        other => other.to_string(),
    })
}

pub fn run(command: &TemplateCommand, started: Instant) -> Result<()> {
    match command {
        TemplateCommand::Build(args) => build(args, started),
        TemplateCommand::Flatten { dir, out } => flatten(dir, out),
        TemplateCommand::Serve { dir, sock } => serve(dir, sock),
        TemplateCommand::Push(args) => push(args),
        TemplateCommand::Pull(args) => pull(args),
    }
}

fn registry_options(args: &RegistryArgs) -> Result<vmfork_registry::Options> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let username = args
        .username
        .clone()
        .or_else(|| env("VMFORK_REGISTRY_USERNAME"));
    let password = if args.password_stdin {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Some(line.trim_end_matches(['\r', '\n']).to_string())
    } else {
        env("VMFORK_REGISTRY_PASSWORD")
    };
    let credentials = match (username, password) {
        (Some(username), Some(password)) => {
            Some(vmfork_registry::Credentials { username, password })
        }
        (None, None) => None,
        (Some(_), None) => return Err(Error::InvalidArgument(
            "a registry user name needs a password: --password-stdin or VMFORK_REGISTRY_PASSWORD"
                .into(),
        )),
        (None, Some(_)) => {
            return Err(Error::InvalidArgument(
                "a registry password needs a user name: --username or VMFORK_REGISTRY_USERNAME"
                    .into(),
            ))
        }
    };
    Ok(vmfork_registry::Options {
        credentials,
        plain_http: args.plain_http,
    })
}

/// The registry crate's errors as the CLI's: a template's own failure
/// keeps its status, authentication has its own, the rest are registry
/// errors.
fn registry_error(e: vmfork_registry::Error) -> Error {
    match e {
        vmfork_registry::Error::Template(e) => e,
        e @ vmfork_registry::Error::Auth { .. } => Error::RegistryAuth(e.to_string()),
        e => Error::Registry(e.to_string()),
    }
}

fn push(args: &PushArgs) -> Result<()> {
    let opts = registry_options(&args.registry)?;
    let report =
        vmfork_registry::push(&args.dir, &args.reference, &opts).map_err(registry_error)?;
    if args.json {
        outln!(
            "{}",
            json!({
                "dir": args.dir,
                "reference": report.reference,
                "digest": report.digest,
                "layers": report.layers,
                "bytes": report.bytes,
            })
        );
    } else {
        outln!(
            "pushed {} to {} ({}, {} layers, {})",
            args.dir.display(),
            report.reference,
            report.digest,
            report.layers,
            human(report.bytes)
        );
    }
    Ok(())
}

fn pull(args: &PullArgs) -> Result<()> {
    let opts = registry_options(&args.registry)?;
    let report =
        vmfork_registry::pull(&args.reference, &args.out, &opts).map_err(registry_error)?;
    if args.json {
        outln!(
            "{}",
            json!({
                "reference": report.reference,
                "out": report.out,
                "digest": report.digest,
                "bytes": report.bytes,
                "memory_bytes": report.memory_bytes,
                "memory_on_disk_bytes": disk_usage(&args.out.join(vmfork_template::manifest::MEMORY_FILE)),
            })
        );
    } else {
        outln!(
            "pulled {} to {} ({}, {} received)",
            report.reference,
            args.out.display(),
            report.digest,
            human(report.bytes)
        );
    }
    Ok(())
}

fn progress(message: &str) {
    if std::io::stderr().is_terminal() {
        eprintln!("vmfork: {message}");
    }
}

fn build(args: &BuildArgs, started: Instant) -> Result<()> {
    let timeout = args.timeout;
    let flag = match (&args.exec, &args.lambda) {
        (Some(_), _) => Some("--exec"),
        (_, Some(_)) => Some("--lambda"),
        _ => None,
    };
    if let Some(flag) = flag {
        if args.vm.kernel.is_none() || args.vm.rootfs.is_none() {
            return Err(Error::InvalidArgument(format!(
                "{flag} needs a guest with the vmfork agent: a Linux kernel (--kernel) with --rootfs"
            )));
        }
    } else if !args.env.is_empty() {
        return Err(Error::InvalidArgument(
            "--env sets the environment of an --exec or --lambda program".into(),
        ));
    }
    let exec = program_entry(args)?;
    // No progress hook inside the build: a spinner over the whole build,
    // its step as the message, and MiB written at the end.
    let progress = Progress::new(
        None,
        "template build",
        ProgressMode::detect(args.vm.quiet || args.json),
    );
    let built = match &args.wasm {
        Some(path) => build_wasm(args, path, &progress)?,
        None => vmfork_template::build::build(
            args.vm.machine_config(started, false)?,
            &args.out,
            timeout,
            exec,
            |latch| signals::forward_to(latch.clone()),
            |step| progress.set_message(step),
        )?,
    };
    let (ready_at, report) = (built.ready_at, built.report);
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    let on_disk = disk_usage(&args.out.join(vmfork_template::manifest::MEMORY_FILE));
    progress.finish(&format!(
        "done: {} MiB written, {} KiB on disk, {} MiB apparent, state {} B",
        report.memory_written >> 20,
        on_disk >> 10,
        report.memory_bytes >> 20,
        report.state_bytes,
    ));
    if args.json {
        outln!(
            "{}",
            json!({
                "out": args.out,
                "build_ms": build_ms,
                "ready_us": ready_at.as_micros() as u64,
                "state_bytes": report.state_bytes,
                "memory_bytes": report.memory_bytes,
                "memory_on_disk_bytes": on_disk,
                "memory_written_bytes": report.memory_written,
            })
        );
    }
    Ok(())
}

/// Bytes a file really occupies (st_blocks), which for a sparse memory
/// file is far below its length.
pub fn disk_usage(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

fn flatten(dir: &std::path::Path, out: &std::path::Path) -> Result<()> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let template = vmfork_template::LoadedTemplate::load(dir)?;
    let mem = template.map_memory()?.mem;
    let file = std::fs::File::create(out)?;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::GuestMemory(e.to_string()))?;
        // SAFETY: a live mapping of region.len() bytes owned by `mem`, which
        // no vCPU uses.
        let bytes = unsafe { std::slice::from_raw_parts(host, region.len() as usize) };
        use std::io::Write;
        (&file).write_all(bytes)?;
    }
    Ok(())
}

fn serve(dir: &std::path::Path, sock: &std::path::Path) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let stop = Arc::new(AtomicBool::new(false));
    // Ctrl-C / SIGTERM end the holder cleanly (socket removed).
    let latch = vmfork_machine::control::StopLatch::default();
    signals::forward_to(latch.clone());
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("stop-flag".into())
        .spawn(move || {
            vmfork_isolation::seccomp::install_in_thread(
                vmfork_isolation::seccomp::ThreadKind::Watchdog,
            );
            latch.wait();
            flag.store(true, Ordering::Release);
        })?;
    let served = vmfork_clone::holder::serve(dir, sock, stop, || {
        progress(&format!("holding {} on {}", dir.display(), sock.display()))
    })?;
    progress(&format!("served {served} clone processes"));
    Ok(())
}

/// `--wasm FILE`: the module's template, named after the file.
fn build_wasm(
    args: &BuildArgs,
    path: &std::path::Path,
    progress: &Progress,
) -> Result<vmfork_template::build::Built> {
    let module = std::fs::read(path)
        .map_err(|e| Error::InvalidArgument(format!("--wasm {}: {e}", path.display())))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "module.wasm".into());
    let console = if args.vm.quiet || args.json {
        Console::Discard
    } else {
        Console::stdout()
    };
    let template = WasmTemplate {
        module: &module,
        name: &name,
        mem_size: args.vm.mem,
        timeout: args.timeout,
        console,
    };
    build_template(
        template,
        &args.out,
        |latch| signals::forward_to(latch.clone()),
        |step| progress.set_message(step),
    )
    .map_err(|e| match e {
        vmfork_wasm::Error::Vm(e) => e,
        other => Error::InvalidArgument(format!("--wasm {}: {other}", path.display())),
    })
}

/// A transfer size for people: "27.0 KiB", "1.2 MiB".
fn human(bytes: u64) -> String {
    if bytes < 1 << 20 {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
