//! `vmfork clone --processes P`: the clones spread over P worker processes
//! (`vmfork_clone::workers`), each `vmfork clone --holder SOCK --worker`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde_json::json;

use super::clone_args::CloneArgs;
use super::floor::{floor_json, measure_floor};
use vmfork_clone::workers::{Workers, WorkersOptions};
use vmfork_machine::control::StopLatch;
use vmfork_machine::error::{Error, Result};
use vmfork_template::{LoadOptions, LoadedTemplate};

pub fn run(args: &CloneArgs, started: Instant) -> Result<()> {
    let template = args
        .template
        .clone()
        .ok_or_else(|| Error::InvalidArgument("--processes needs a TEMPLATE directory".into()))?;
    let opts = WorkersOptions {
        template,
        count: args.count,
        processes: args.processes,
        backend: args.backend.backend(),
    };
    opts.validate()?;
    if args.verify {
        // Once, here: the workers' own loads still check the image's
        // identity, which any rewrite since changes.
        let load = LoadOptions {
            verify_rootfs: true,
            ..LoadOptions::default()
        };
        LoadedTemplate::load_with(&opts.template, load)?;
    }
    let floor = measure_floor(args.floor)?;
    let exe = std::env::current_exe()?;
    let workers = Workers::start(opts, |sock, share| worker_command(&exe, args, sock, share))?;
    if workers.all_up() && !args.hold.is_zero() {
        // As without --processes, SIGINT/SIGTERM end the hold early.
        let held = StopLatch::default();
        super::signals::forward_to(held.clone());
        held.wait_timeout(args.hold);
    }
    let r = workers.stop()?;
    let (floor_us, ratio_vs_floor) = floor_json(r.p50, floor);
    let summary = json!({
        "clones": r.count,
        "processes": r.processes,
        "backend": args.backend.name(),
        "clone_p50_us": r.p50.as_micros() as u64,
        "clone_p99_us": r.p99.as_micros() as u64,
        "total_ms": r.total.as_secs_f64() * 1e3,
        "private_kib_per_clone": r.private_kib / r.count,
        "host_kib_per_clone": r.host_kib / r.count,
        "floor_us": floor_us,
        "ratio_vs_floor": ratio_vs_floor,
        "worker_fd_leaks": r.fd_leaks,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
    });
    outln!("{summary}");
    Ok(())
}

/// `vmfork clone --holder SOCK -n SHARE ... --json --worker`: one worker,
/// with this run's backend, shells and prefetch.
fn worker_command(exe: &Path, args: &CloneArgs, sock: &Path, share: u64) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["clone", "--holder"]).arg(sock).args([
        "-n",
        &share.to_string(),
        "--backend",
        args.backend.name(),
        "--json",
        "--worker",
    ]);
    if args.shells {
        cmd.arg("--shells");
    }
    if args.prefetch {
        cmd.arg("--prefetch");
    }
    if !vmfork_isolation::seccomp::enabled() {
        cmd.arg("--no-seccomp");
    }
    cmd
}
