//! The arguments of `vmfork clone`, shared by its one-process run
//! (clone.rs) and its worker processes (clone_procs.rs).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::args::{count, parse_hold, Parsed};
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
}

const MAX_CLONES: u64 = 100_000;
