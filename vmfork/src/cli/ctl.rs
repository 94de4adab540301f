//! `vmfork ctl`: talk to a running VM's control socket.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use vmfork_machine::error::Result;
use vmfork_template::api::{self, Request};

#[derive(Debug, Args)]
pub struct CtlArgs {
    /// The VM's control socket (`--api-sock` of boot or restore).
    pub socket: PathBuf,
    #[command(subcommand)]
    pub request: CtlRequest,
}

#[derive(Debug, Subcommand)]
pub enum CtlRequest {
    /// Save the VM as a template; it keeps running afterwards unless paused.
    Snapshot {
        /// Write only the pages changed since the VM was restored.
        #[arg(long)]
        diff: bool,
        /// The template directory to create (must not exist).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Ask the guest to answer; prints the round-trip time.
    Ping,
    /// Ask the default guest to write to N pages of its heap (benchmarks).
    DirtyPages {
        /// How many pages.
        pages: u32,
    },
    /// Stop running the vCPUs (the VM can be snapshotted, then resumed).
    Pause,
    /// Resume a paused VM.
    Resume,
    /// Stop the VM; its vmfork process exits.
    Stop,
}

pub fn run(args: &CtlArgs) -> Result<()> {
    let request = match &args.request {
        CtlRequest::Snapshot { diff, out } => {
            // The VM's process may run elsewhere in the tree; give it an
            // absolute path.
            let out = std::path::absolute(out)?;
            Request::Snapshot { out, diff: *diff }
        }
        CtlRequest::Ping => Request::Ping,
        CtlRequest::DirtyPages { pages } => Request::DirtyPages { pages: *pages },
        CtlRequest::Pause => Request::Pause,
        CtlRequest::Resume => Request::Resume,
        CtlRequest::Stop => Request::Stop,
    };
    let result = api::call(&args.socket, &request)?;
    match result {
        serde_json::Value::String(s) => outln!("{s}"),
        other => outln!("{other}"),
    }
    Ok(())
}
