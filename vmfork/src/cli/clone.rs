//! `vmfork clone`: start N clones of a template, each proving it is alive,
//! hold them, then stop them all and check nothing leaked.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::clone_args::CloneArgs;
use super::floor::{floor_json, measure_floor};
use super::progress::{Progress, ProgressMode};
use super::signals;
use vmfork_clone::fleet::{Fleet, FleetOptions, FleetReport, FleetSource};
use vmfork_clone::interrupt::Interrupt;
use vmfork_clone::workers::{WorkerReport, CLONES_UP};
use vmfork_isolation::cgroup::Joined;
use vmfork_machine::control::{StopLatch, StopReason};
use vmfork_machine::error::{Error, Result};

pub fn run(args: &CloneArgs, started: Instant) -> Result<()> {
    if args.processes > 1 && args.isolation.jail.is_some() {
        return Err(Error::InvalidArgument(
            "--jail runs one process; it cannot be combined with --processes".into(),
        ));
    }
    // Worker processes inherit their parent's cgroup and jail.
    let cgroup = if args.worker {
        None
    } else {
        args.isolation.apply()?
    };
    // The jail needs system calls no list allows: the main thread's filter
    // goes on right after it, before any VM exists. With --processes this
    // process starts the workers, so it may also spawn.
    vmfork_isolation::seccomp::install(if args.processes > 1 {
        vmfork_isolation::seccomp::ThreadKind::Launcher
    } else {
        vmfork_isolation::seccomp::ThreadKind::Vmm
    })?;
    if args.processes > 1 {
        if !args.exec.command.is_empty() {
            return Err(Error::InvalidArgument(
                "a command (-- CMD) runs in one process's clones; leave out --processes".into(),
            ));
        }
        return super::clone_procs::run(args, started);
    }
    // The KVM floor, measured in the same run as the clones it is compared
    // to, before any of them exists.
    let floor = measure_floor(args.floor)?;
    // A stop signal stops the clones wherever they are: while they start,
    // run a command or are held. (A worker's clones are its parent's to
    // stop: it closes the worker's stdin.)
    let interrupt = Interrupt::default();
    let signal = Arc::new(AtomicI32::new(0));
    if !args.worker {
        let (interrupt, signal) = (interrupt.clone(), signal.clone());
        signals::on_first_then_exit(
            move |number| {
                signal.store(number, Ordering::Relaxed);
                interrupt.fire();
            },
            "vmfork clone",
        );
    }
    let progress = Progress::new(
        Some(args.count),
        "clone",
        ProgressMode::detect(args.json || args.worker),
    );
    progress.set_message("starting");
    let fleet = Fleet::start(fleet_options(args, &interrupt)?, |up| progress.set(up))?;
    if fleet.all_up() {
        progress.finish(&format!("{} clones up", args.count));
    } else {
        drop(progress);
    }
    // Also after a failure: what the clones that came up printed shows
    // they were unaffected.
    if args.console {
        for (id, text) in fleet.consoles() {
            for line in text.lines() {
                outln!("clone {id}: {line}");
            }
        }
    }
    let failed_status = if fleet.all_up() && !args.exec.command.is_empty() {
        super::clone_exec::print_results(&fleet, &args.exec, &interrupt)
    } else {
        None
    };
    // A signal that ends a hold is how a hold is meant to end; one that
    // cut the starts or the command short is not.
    let cut_short = interrupt.fired();
    if fleet.all_up() && !cut_short {
        hold(args, &interrupt);
    }
    let started_clones = fleet.started();
    let report = fleet.stop();
    if cut_short {
        let number = signal.load(Ordering::Relaxed);
        eprintln!(
            "vmfork: interrupted by {}; stopped {started_clones} of {} clones",
            signals::name(number),
            args.count
        );
        return Err(Error::Reported(128 + number));
    }
    let report = report?;
    print_report(args, &report, floor, cgroup.as_ref(), started);
    match failed_status {
        Some(code) => Err(Error::Reported(code)),
        None => Ok(()),
    }
}

fn fleet_options(args: &CloneArgs, interrupt: &Interrupt) -> Result<FleetOptions> {
    let source = match (&args.holder, &args.template) {
        (Some(sock), _) => FleetSource::Holder(sock.clone()),
        (None, Some(dir)) => FleetSource::Template(dir.clone()),
        (None, None) => return Err(Error::InvalidArgument("give a TEMPLATE or --holder".into())),
    };
    Ok(FleetOptions {
        source,
        count: args.count,
        backend: args.backend.backend(),
        prefetch: args.prefetch,
        shells: args.shells,
        capture_consoles: args.console,
        exec: super::clone_exec::request(&args.exec)?,
        verify_rootfs: args.verify,
        interrupt: Some(interrupt.clone()),
    })
}

/// Keeps the clones up: a worker until its parent closes its stdin, else
/// for --hold or until a signal.
fn hold(args: &CloneArgs, interrupt: &Interrupt) {
    if args.worker {
        // The parent counts clones as up when every worker said so, and
        // ends the hold by closing our stdin.
        outln!("{CLONES_UP}");
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
    } else if !args.hold.is_zero() {
        // A latch of its own turns the hold time or a signal into one
        // wake-up.
        let holder = StopLatch::default();
        interrupt.watch(&holder);
        if let Some(StopReason::Requested) = holder.wait_timeout(args.hold) {
            tracing::info!("interrupted; stopping clones");
        }
    }
}

fn print_report(
    args: &CloneArgs,
    r: &FleetReport,
    floor: Option<Duration>,
    cgroup: Option<&Joined>,
    started: Instant,
) {
    let mut summary = summary_json(args, r, floor, cgroup, started);
    if args.worker {
        let w = WorkerReport::from_fleet(r);
        summary["latencies_us"] = json!(w
            .latencies
            .iter()
            .map(|d| d.as_micros() as u64)
            .collect::<Vec<_>>());
        summary["private_kib"] = json!(w.private_kib);
    }
    if args.json {
        outln!("{summary}");
        return;
    }
    // With a command, stdout is the command's: the summary goes beside
    // the clones' stderr.
    let exec = !args.exec.command.is_empty();
    let count = r.count;
    let floor = floor.map_or(String::new(), |f| {
        format!("; KVM floor {} us", f.as_micros())
    });
    let line = format!(
        "{count} clones ({}): p50 {} us, p99 {} us, total {:.1} ms; {} KiB private and {} KiB host memory per clone{floor}",
        args.backend.name(),
        r.p50.as_micros(),
        r.p99.as_micros(),
        r.total.as_secs_f64() * 1e3,
        r.private_kib / count,
        r.host_kib / count,
    );
    if exec {
        eprintln!("{line}");
    } else {
        outln!("{line}");
    }
}

fn summary_json(
    args: &CloneArgs,
    r: &FleetReport,
    floor: Option<Duration>,
    cgroup: Option<&Joined>,
    started: Instant,
) -> Value {
    let count = r.count;
    let (floor_us, ratio_vs_floor) = floor_json(r.p50, floor);
    json!({
        "clones": count,
        "backend": args.backend.name(),
        "clone_p50_us": r.p50.as_micros() as u64,
        "clone_p99_us": r.p99.as_micros() as u64,
        "total_ms": r.total.as_secs_f64() * 1e3,
        "private_kib_per_clone": r.private_kib / count,
        "faults_per_clone": r.faults / count,
        "uffd_faults_per_clone": r.uffd_faults / count,
        "prefetch_pages": r.prefetch_pages,
        "host_kib_per_clone": r.host_kib / count,
        "floor_us": floor_us,
        "ratio_vs_floor": ratio_vs_floor,
        "template_load_ms": r.template_load_ms,
        "shells": args.shells,
        "vcpus_restored_ahead": r.vcpus_restored_ahead,
        "cgroup": cgroup.map(|c| json!({
            "version": c.version.name(),
            "setup_us": c.setup_us,
            "dirs": c.dirs,
        })),
        "shell_pool_ms": r.shell_pool_ms,
        "teardown_ms": r.teardown_ms,
        "fds_before": r.fds_before,
        "fds_after": r.fds_after,
        "threads_before": r.threads_before,
        "threads_running": r.threads_running,
        "memfd_seals": r.memfd_seals,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
        "mean_phases_us": r
            .mean_phases_us
            .iter()
            .map(|(name, us)| (name.to_string(), json!(us)))
            .collect::<serde_json::Map<_, _>>(),
    })
}
