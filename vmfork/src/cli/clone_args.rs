//! The arguments of `vmfork clone`, shared by its one-process run
//! (clone.rs) and its worker processes (clone_procs.rs).

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::args::{count, parse_duration, parse_hold, parse_size, Parsed};
use super::isolation::IsolationArgs;
use vmfork_clone::Backend;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendArg {
    /// Private mappings of a sealed memfd loaded once per process.
    Memfd,
    /// Private mappings of the template's memory file.
    File,
    /// Empty memory filled on first touch by a userfaultfd handler.
    Uffd,
}

impl BackendArg {
    /// The name on the command line and in JSON summaries.
    pub fn name(self) -> &'static str {
        match self {
            BackendArg::Memfd => "memfd",
            BackendArg::File => "file",
            BackendArg::Uffd => "uffd",
        }
    }

    pub fn backend(self) -> Backend {
        match self {
            BackendArg::Memfd => Backend::Memfd,
            BackendArg::File => Backend::File,
            BackendArg::Uffd => Backend::Uffd,
        }
    }
}

#[derive(Debug, Args)]
pub struct CloneArgs {
    /// The template directory (or use --holder).
    #[arg(required_unless_present = "holder")]
    pub template: Option<PathBuf>,
    /// Take the template and its sealed memfd from a holder started with
    /// `vmfork template serve` instead of loading it in this process.
    #[arg(long, value_name = "SOCK", conflicts_with = "template")]
    pub holder: Option<PathBuf>,
    /// How many clones to start.
    #[arg(short = 'n', long = "count", default_value = "1", value_name = "N", value_parser = count::<u64>(1, MAX_CLONES))]
    pub count: u64,
    /// Where clone memory comes from.
    #[arg(long, value_enum, default_value = "memfd")]
    pub backend: BackendArg,
    /// Keep the clones running this long (or until Ctrl-C), then stop them.
    #[arg(long, default_value = "0", value_name = "SECONDS", value_parser = Parsed(parse_hold))]
    pub hold: Duration,
    /// With --backend uffd: install the pages the first clone touched (saved
    /// beside the template as `working-set`) before each clone resumes.
    #[arg(long)]
    pub prefetch: bool,
    /// Create every clone's VM and vCPUs ahead of time (a pool of empty VM
    /// shells), so a clone request only maps memory, restores and runs.
    #[arg(long)]
    pub shells: bool,
    /// Spread the clones over P processes (sharing one sealed memfd through
    /// a template holder) instead of threads in this one.
    #[arg(long, default_value = "1", value_name = "P", value_parser = count::<u64>(1, 256))]
    pub processes: u64,
    /// Internal: run as a worker of `--processes`: print `clones-up` once
    /// every clone acknowledged, hold until stdin closes, report latencies.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Also measure the KVM floor (50 fresh VMs run to their first HLT)
    /// and report `floor_us` and `ratio_vs_floor` against it.
    #[arg(long)]
    pub floor: bool,
    /// Print each clone's console, prefixed with its id, once all are up.
    #[arg(long)]
    pub console: bool,
    /// Hash the template's rootfs image again before cloning (see `restore --verify`).
    #[arg(long)]
    pub verify: bool,
    /// Print a JSON summary on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub isolation: IsolationArgs,
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// `vmfork clone DIR -- CMD ARGS`: a command every clone runs through its
/// guest agent (docs/guest-abi.md, "Running a command").
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Run CMD with ARGS in every clone (needs a guest with the agent, such
    /// as the Linux guest); each line it prints is prefixed with the
    /// clone's id, and vmfork exits with the first failing status.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<OsString>,
    /// With a command: an environment entry for it (repeatable). Its
    /// environment is exactly these, plus a default PATH if none is given.
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE", value_parser = Parsed(parse_env), requires = "command")]
    pub env: Vec<String>,
    /// With a command: its working directory in the guest.
    #[arg(long, value_name = "DIR", requires = "command")]
    pub cwd: Option<PathBuf>,
    /// With a command: a file whose bytes are its stdin in every clone
    /// (`-` for vmfork's own stdin); /dev/null otherwise.
    #[arg(long, value_name = "FILE", requires = "command")]
    pub stdin: Option<PathBuf>,
    /// With a command: kill it (and its process group) after this long.
    #[arg(long, default_value = "60", value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub exec_timeout: Duration,
    /// With a command: bytes of its stdout, and of its stderr, kept per
    /// clone (at most 1M); the rest is dropped and reported.
    #[arg(long, default_value = "1M", value_name = "SIZE", value_parser = Parsed(parse_output_cap))]
    pub output_cap: u64,
}

fn parse_env(text: &str) -> Result<String, String> {
    match text.split_once('=') {
        Some((name, _)) if !name.is_empty() && !name.contains('\0') => Ok(text.to_string()),
        _ => Err(format!("{text:?}: expected NAME=VALUE")),
    }
}

fn parse_output_cap(text: &str) -> Result<u64, String> {
    let size = parse_size(text)?;
    if size > u64::from(vmfork_machine::exec::DEFAULT_OUTPUT_CAP) {
        return Err(format!(
            "{text}: at most 1M (two streams share the mailbox)"
        ));
    }
    Ok(size)
}

const MAX_CLONES: u64 = 100_000;
