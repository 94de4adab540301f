//! `vmfork clone`: start N clones of a template, each proving it is alive,
//! hold them, then stop them all and check nothing leaked.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde_json::json;

use super::args::{count, parse_hold, Parsed};
use super::isolation::IsolationArgs;
use super::signals;
use vmfork_clone::uffd::PageServerLink;
use vmfork_clone::{Backend, CloneFactory, CloneOptions};
use vmfork_machine::control::{CommandChannel, StopLatch, StopReason};
use vmfork_machine::devices::console::Console;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::floor;
use vmfork_machine::machine::{proc_field_kib, RunningMachine};
use vmfork_machine::vcpu::threads::Runners;
use vmfork_template::LoadedTemplate;

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
    /// Print each clone's console, prefixed with its id, once all are up.
    #[arg(long)]
    pub console: bool,
    /// Print a JSON summary on the last line of stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub isolation: IsolationArgs,
}

/// How long an idle vCPU runner polls for the next clone before it sleeps:
/// about one clone's restore and start into a prepared shell. (1000
/// clones in shells, p50: 259 us without polling, 129 us with 100 us of
/// it, 138 us with 300 us.)
const RUNNER_SPIN: Duration = Duration::from_micros(100);

/// How long one clone may take to acknowledge its resume.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CLONES: u64 = 100_000;

struct Clone {
    id: u64,
    running: RunningMachine,
    console: Arc<Mutex<Vec<u8>>>,
    /// A uffd clone's page server, to release its vCPUs if it fails.
    page_server: Option<Arc<PageServerLink>>,
}

/// Closing a VM costs ~10 ms on this host, mostly waiting inside KVM, so
/// VMs are closed from several threads at once.
fn close_in_parallel(machines: Vec<vmfork_machine::machine::Machine>) {
    const CLOSERS: usize = 32;
    let per_thread = machines.len().div_ceil(CLOSERS).max(1);
    let mut machines = machines;
    std::thread::scope(|scope| {
        while !machines.is_empty() {
            let batch: Vec<_> = machines.drain(..per_thread.min(machines.len())).collect();
            // Should the thread not start, the closure and its batch are
            // dropped right here, which closes them all the same.
            let _ = std::thread::Builder::new()
                .name("closer".into())
                .spawn_scoped(scope, move || {
                    vmfork_isolation::seccomp::install_in_thread(
                        vmfork_isolation::seccomp::ThreadKind::Reaper,
                    );
                    drop(batch)
                });
        }
    });
}

pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Minor page faults of this process so far; KVM's faults on guest memory
/// are counted here too, so the delta per clone shows what a clone touches.
fn minor_faults() -> u64 {
    // SAFETY: getrusage fills a local struct.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_minflt as u64
    }
}

fn threads() -> u64 {
    proc_field_kib("/proc/self/status", "Threads:")
}

/// Waits for a started clone's first acknowledgement and returns its
/// latency from the request. The deadline also covers a clone whose vCPU
/// waits on a stalled page server: teardown releases it from the fault.
fn await_ack(
    id: u64,
    commands: &CommandChannel,
    latch: &StopLatch,
    acks: u64,
    requested: Instant,
) -> Result<Duration> {
    if !commands.wait_acks(acks + 1, Some(requested + ACK_TIMEOUT)) {
        return Err(match latch.reason() {
            Some(reason) => clone_failed(id, &reason, "before acknowledging", ""),
            None => Error::Timeout(format!(
                "clone {id} did not acknowledge within {} s",
                ACK_TIMEOUT.as_secs()
            )),
        });
    }
    Ok(commands.first_ack_at().unwrap_or(requested.elapsed()))
}

/// The error for a clone that stopped on its own `when`. A dead page
/// server has its own exit status; anything else counts as a crash.
fn clone_failed(id: u64, reason: &StopReason, when: &str, also: &str) -> Error {
    match reason {
        StopReason::PageServerDied(why) => {
            Error::PageServer(format!("clone {id} stopped {when}: {why}{also}"))
        }
        other => {
            // The same words `vmfork boot` would use for this stop.
            let why = match super::boot::stop_result(other) {
                Err(e) => e.to_string(),
                Ok(()) => format!("{other:?}"),
            };
            Error::GuestCrash(format!("clone {id} stopped {when}: {why}{also}"))
        }
    }
}

pub fn run(args: &CloneArgs, started: Instant) -> Result<()> {
    let (count, processes) = (args.count, args.processes);
    if processes > 1 && args.isolation.jail.is_some() {
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
    vmfork_isolation::seccomp::install(if processes > 1 {
        vmfork_isolation::seccomp::ThreadKind::Launcher
    } else {
        vmfork_isolation::seccomp::ThreadKind::Vmm
    })?;
    if processes > 1 {
        return super::clone_procs::run(args, count, processes, started);
    }
    let hold = (!args.hold.is_zero()).then_some(args.hold);
    let backend = match args.backend {
        BackendArg::Memfd => Backend::Memfd,
        BackendArg::File => Backend::File,
        BackendArg::Uffd => Backend::Uffd,
    };
    // The KVM floor, measured in the same run as the clones it is compared to.
    let floor = floor::median(&floor::measure(50)?);
    let fds_before = open_fds();
    let threads_before = threads();
    let private_before = proc_field_kib("/proc/self/smaps_rollup", "Private_Dirty:");
    let available_before = proc_field_kib("/proc/meminfo", "MemAvailable:");

    let load_start = Instant::now();
    let factory = match (&args.holder, &args.template) {
        (Some(sock), _) => {
            let (template, sealed) = vmfork_clone::holder::fetch(sock)?;
            CloneFactory::with_memory(template, Some(sealed), backend, args.prefetch)?
        }
        (None, Some(dir)) => CloneFactory::new(LoadedTemplate::load(dir)?, backend, args.prefetch)?,
        (None, None) => return Err(Error::InvalidArgument("give a TEMPLATE or --holder".into())),
    };
    let prefetch_pages = factory.prefetch_pages();
    let load_ms = load_start.elapsed().as_secs_f64() * 1e3;
    let pool_start = Instant::now();
    let mut shells = Vec::new();
    // vCPU threads are made ahead of time, shells or not (a thread is not
    // a VM: without shells each clone still creates its VM). A clone's
    // vCPU is handed back once the guest acknowledged and parked (it needs
    // no thread while parked), so a couple of runners serve every clone's
    // start, plus one per other vCPU of every clone (those stay in
    // KVM_RUN, waiting for their guest's IPIs).
    let runners = Runners::spinning(RUNNER_SPIN);
    let vcpus = factory.template.state.vcpus.len();
    runners.reserve(2 + count as usize * vcpus.saturating_sub(1))?;
    if args.shells {
        for _ in 0..count {
            shells.push(factory.warm_shell(Some(&runners), None)?);
        }
    }
    let shell_pool_ms = pool_start.elapsed().as_secs_f64() * 1e3;

    let faults_before = minor_faults();
    let first_request = Instant::now();
    let mut clones: Vec<Clone> = Vec::with_capacity(count as usize);
    let mut latencies = Vec::with_capacity(count as usize);
    // Sum over clones of each restore phase's time since the request.
    let mut phase_sums: Vec<(&'static str, u64)> = Vec::new();
    // Clones start one at a time: each is acknowledged before the next is
    // requested. Without shells a clone creating its VM contended with the
    // previous ones' page faults when overlapped (p50 2.2 -> 3.5 ms). In
    // shells, overlapping two starts measured 1000 clones in ~250 ms
    // against ~400 one at a time, but once runners poll for their next
    // clone (RUNNER_SPIN), one at a time is as fast in total (~180 ms)
    // and halves the latency: a polling runner and an overlapped start
    // are three busy threads on two CPUs.
    //
    // Clones whose shell had its vCPU state restored ahead of them.
    let mut restored_ahead = 0u64;
    let result = (|| -> Result<()> {
        for id in 1..=count {
            let requested = Instant::now();
            let console = Arc::new(Mutex::new(Vec::new()));
            let shell = shells.pop();
            if shell.as_ref().is_some_and(|s| s.vcpus_restored.is_some()) {
                restored_ahead += 1;
            }
            let (machine, page_server) = factory.clone_vm(CloneOptions {
                clone_id: id,
                shell,
                console: if args.console {
                    Console::Capture(console.clone())
                } else {
                    Console::Discard
                },
                requested,
                resume_command: None,
            })?;
            for (i, (name, us)) in machine.phases.iter().enumerate() {
                if phase_sums.len() <= i {
                    phase_sums.push((*name, 0u64));
                }
                phase_sums[i].1 += us;
            }
            let commands = machine.control().commands().clone();
            let latch = machine.control().latch().clone();
            let acks = commands.acks();
            // Its first park ends the run on the vCPU thread: the clone
            // is up, and the guest waits in its `in` for a command that
            // `clone` never sends.
            let running = machine.start_commanded(Some(&runners), Arc::new(|_| None))?;
            clones.push(Clone {
                id,
                running,
                console,
                page_server,
            });
            // (Also how the first clone of a --prefetch run records the
            // working set alone, before any other starts.)
            latencies.push(await_ack(id, &commands, &latch, acks, requested)?);
            if id == 1 {
                if let Some(pages) = factory.save_working_set()? {
                    tracing::info!("recorded a working set of {pages} pages");
                }
            }
        }
        Ok(())
    })();
    let total = first_request.elapsed();
    let faults = minor_faults().saturating_sub(faults_before);
    let private_kib =
        proc_field_kib("/proc/self/smaps_rollup", "Private_Dirty:").saturating_sub(private_before);
    let host_kib =
        available_before.saturating_sub(proc_field_kib("/proc/meminfo", "MemAvailable:"));
    let threads_running = threads();

    // Also after a failure: what the clones that came up printed shows
    // they were unaffected.
    if args.console {
        for c in &clones {
            let text = c
                .console
                .lock()
                .map(|b| String::from_utf8_lossy(&b).into_owned());
            for line in text.unwrap_or_default().lines() {
                outln!("clone {}: {line}", c.id);
            }
        }
    }
    if result.is_ok() {
        if args.worker {
            // The parent counts clones as up when every worker said so, and
            // ends the hold by closing our stdin.
            outln!("clones-up");
            let _ = std::io::Read::read(&mut std::io::stdin(), &mut [0u8; 1]);
        } else if let Some(hold) = hold {
            // A latch of its own turns the hold time or a signal into one
            // wake-up.
            let holder = StopLatch::default();
            signals::forward_to(holder.clone());
            if let Some(StopReason::Requested) = holder.wait_timeout(hold) {
                tracing::info!("interrupted; stopping clones");
            }
        }
    }

    let teardown_start = Instant::now();
    let mut crashed = Vec::new();
    let mut stuck = Vec::new();
    // Tell every clone to stop first, so their vCPU threads wind down in
    // parallel instead of one join at a time.
    for c in &clones {
        let latch = c.running.control().latch();
        let reason = latch.reason();
        let failed = reason.as_ref().is_some_and(|r| *r != StopReason::Requested);
        let unacknowledged = c.running.control().commands().first_ack_at().is_none();
        if let Some(r) = reason.filter(|r| *r != StopReason::Requested) {
            crashed.push((c.id, r));
        }
        latch.stop(StopReason::Requested);
        // A failed clone's vCPU may wait in a fault its page server will
        // never serve, and a kick does not end that wait on this host.
        if let (true, Some(link)) = (failed || unacknowledged, &c.page_server) {
            if let Err(e) = link.release_waiters() {
                stuck.push((c.id, e));
            }
        }
    }
    let mut stopped = Vec::with_capacity(clones.len());
    for c in clones.drain(..) {
        if stuck.iter().any(|(id, _)| *id == c.id) {
            // Its vCPU cannot be woken: leave it (memory and userfaultfd
            // included, so nothing is zero-filled) to the process exit.
            std::mem::forget(c.running);
            continue;
        }
        stopped.push(c.running.stop(StopReason::Requested)?);
    }
    let joined_ms = teardown_start.elapsed().as_secs_f64() * 1e3;
    close_in_parallel(stopped);
    let teardown_ms = teardown_start.elapsed().as_secs_f64() * 1e3;
    tracing::info!("teardown: vCPU threads joined after {joined_ms:.1} ms, VMs closed after {teardown_ms:.1} ms");
    let sealed = factory.sealed_memory().map(|m| m.seals());
    let uffd_faults = factory.uffd_faults();
    drop(factory);
    let fds_after = open_fds();
    if let Some((id, why)) = stuck.first() {
        return Err(Error::PageServer(format!(
            "clone {id} could not be released from its page faults: {why}"
        )));
    }
    result?;
    if let Some((id, reason)) = crashed.first() {
        let ids: Vec<String> = crashed.iter().map(|(id, _)| id.to_string()).collect();
        let all = format!(
            " ({} of {count} clones failed: {})",
            ids.len(),
            ids.join(", ")
        );
        return Err(clone_failed(*id, reason, "while held", &all));
    }

    let p50 = floor::median(&latencies);
    let p99 = floor::percentile(&latencies, 99.0);
    let summary = json!({
        "clones": count,
        "backend": args.backend.name(),
        "clone_p50_us": p50.as_micros() as u64,
        "clone_p99_us": p99.as_micros() as u64,
        "total_ms": total.as_secs_f64() * 1e3,
        "private_kib_per_clone": private_kib / count,
        "faults_per_clone": faults / count,
        "uffd_faults_per_clone": uffd_faults / count,
        "prefetch_pages": prefetch_pages,
        "host_kib_per_clone": host_kib / count,
        "floor_us": floor.as_micros() as u64,
        "ratio_vs_floor": p50.as_secs_f64() / floor.as_secs_f64().max(1e-9),
        "template_load_ms": load_ms,
        "shells": args.shells,
        "vcpus_restored_ahead": restored_ahead,
        "cgroup": cgroup.as_ref().map(|c| json!({
            "version": format!("{:?}", c.version).to_lowercase(),
            "setup_us": c.setup_us,
            "dirs": c.dirs,
        })),
        "shell_pool_ms": shell_pool_ms,
        "teardown_ms": teardown_ms,
        "fds_before": fds_before,
        "fds_after": fds_after,
        "threads_before": threads_before,
        "threads_running": threads_running,
        "memfd_seals": sealed,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
        "mean_phases_us": phase_sums
            .iter()
            .map(|(name, us)| (name.to_string(), json!(us / count)))
            .collect::<serde_json::Map<_, _>>(),
    });
    let mut summary = summary;
    if args.worker {
        summary["latencies_us"] = json!(latencies
            .iter()
            .map(|d| d.as_micros() as u64)
            .collect::<Vec<_>>());
        summary["private_kib"] = json!(private_kib);
    }
    if args.json {
        outln!("{summary}");
    } else {
        outln!(
            "{count} clones ({}): p50 {} us, p99 {} us, total {:.1} ms; {} KiB private and {} KiB host memory per clone; KVM floor {} us",
            summary["backend"].as_str().unwrap_or_default(),
            p50.as_micros(),
            p99.as_micros(),
            total.as_secs_f64() * 1e3,
            private_kib / count,
            host_kib / count,
            floor.as_micros()
        );
    }
    Ok(())
}
