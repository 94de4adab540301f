//! `vmfork restore`: bring a template back to life and resume it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use super::args::{parse_duration, Parsed};
use super::boot::{phases_json, stop_name};
use super::isolation::IsolationArgs;
use super::signals;
use vmfork_machine::devices::console::Console;
use vmfork_machine::error::Result;
use vmfork_machine::machine::vmm_rss_kib;
use vmfork_machine::persist::vm::ClockMode;
use vmfork_machine::stop::stop_result;
use vmfork_template::{api, owner};
use vmfork_template::{LoadOptions, LoadedTemplate, RamSource, RestoreOptions};

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The template directory.
    pub template: PathBuf,
    /// Stop once the guest has acknowledged its resume.
    #[arg(long)]
    pub exit_on_ready: bool,
    /// Fail if the guest does not acknowledge within this time.
    #[arg(long, value_name = "DURATION", value_parser = Parsed(parse_duration))]
    pub timeout: Option<Duration>,
    /// Listen for control requests (snapshot [--diff], ping, pause, resume,
    /// stop) on this Unix socket; see `vmfork ctl`.
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,
    /// Set the guest clock to the host's present instead of the snapshot's.
    #[arg(long)]
    pub clock_now: bool,
    /// Hash the template's rootfs image again and refuse it unless it is
    /// what the template was built with (its size and identity are checked
    /// on every restore; its contents only with this).
    #[arg(long)]
    pub verify: bool,
    /// Discard the guest console.
    #[arg(long)]
    pub quiet: bool,
    /// Print one JSON object with `restore_us` on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub isolation: IsolationArgs,
}

pub fn run(args: &RestoreArgs, started: Instant) -> Result<()> {
    args.isolation.apply()?;
    // The jail needs system calls no list allows: the main thread's filter
    // goes on right after it, before any VM exists.
    vmfork_isolation::seccomp::install(vmfork_isolation::seccomp::ThreadKind::Vmm)?;
    let timeout = args.timeout;
    let load = LoadOptions {
        verify_rootfs: args.verify,
        ..LoadOptions::default()
    };
    let template = LoadedTemplate::load_with(&args.template, load)?;
    let machine = vmfork_template::restore(
        &template,
        RamSource::TemplateFile,
        RestoreOptions {
            console: if args.quiet {
                Console::Discard
            } else {
                Console::stdout()
            },
            resume_command: None,
            clock: if args.clock_now {
                ClockMode::HostNow
            } else {
                ClockMode::AsSaved
            },
            started,
            exit_on_ack: args.exit_on_ready,
            clone_id: 0,
        },
    )?;
    let dirty_logging = machine.vm().dirty_logging();
    let rootfs = machine.pmem().map(|p| {
        json!({
            "path": p.image.path,
            "guest_addr": p.guest_addr,
            "size": p.image.size,
            "slot": p.slot,
        })
    });
    let phases = phases_json(&machine.phases);
    let control = machine.control();
    let latch = control.latch().clone();
    let _api = args
        .api_sock
        .as_deref()
        .map(|p| api::serve(p, latch.clone(), control.requests().clone()))
        .transpose()?;
    let commands = control.commands().clone();
    let deadline = timeout.map(|t| (t, Instant::now() + t));
    let watchdog = commands.clone();
    // Stop signals stay blocked (and pending) until the signal thread
    // waits for them, so it can start after the vCPUs, as the watchdog can.
    let after_start = move || -> Result<()> {
        signals::forward_to(latch.clone());
        if let Some((t, at)) = deadline {
            // Before the first acknowledgement the guest is not "ready" for the
            // purposes of a timeout.
            std::thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || {
                    vmfork_isolation::seccomp::install_in_thread(
                        vmfork_isolation::seccomp::ThreadKind::Watchdog,
                    );
                    if !watchdog.wait_acks(watchdog.acks() + 1, Some(at))
                        && watchdog.first_ack_at().is_none()
                    {
                        latch.stop(vmfork_machine::control::StopReason::Timeout(t));
                    }
                })?;
        }
        Ok(())
    };
    let (reason, machine) = owner::run_then(machine, None, after_start)?;
    let rss = vmm_rss_kib();
    drop(machine);
    if args.json {
        outln!(
            "{}",
            json!({
                "restore_us": commands.first_ack_at().map(|d| d.as_micros() as u64),
                "vmm_rss_kib": rss,
                "stop": stop_name(&reason),
                "dirty_logging": dirty_logging,
                "rootfs": rootfs,
                "phases_us": phases,
            })
        );
    }
    stop_result(&reason)
}
