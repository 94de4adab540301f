//! One deployed function: a template, its clone factory, its pool of VM
//! shells (pool.rs), and the path of one invocation in a fresh clone. A
//! function is built in (the embedded guest's, through the mailbox) or a
//! program (its template records one: a Linux `--exec` template or a Wasm
//! module), run through the exec protocol with CGI conventions (cgi.rs).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::limits::Slot;
use super::metrics::Metrics;
use super::pool::{Finished, Recycle, ShellPool};
use super::progress::{Ending, Progress};
use vmfork_clone::{Backend, CloneFactory, CloneOptions};
use vmfork_machine::boot::loader::{BootProtocol, KernelSource, EMBEDDED_KERNEL};
use vmfork_machine::control::StopReason;
use vmfork_machine::devices::console::Console;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::exec::{self, ExecEntry, ExecOutput, CMD_EXEC, CMD_RESUME_EXEC};
use vmfork_machine::machine::{Machine, MachineConfig, RunningMachine};
use vmfork_machine::mailbox::{self, Response, CMD_INVOKE, CMD_RESUME_INVOKE};
use vmfork_machine::vcpu::threads::Runners;
use vmfork_template::trust::TrustPolicy;
use vmfork_template::{LoadOptions, LoadedTemplate};

/// How long a fresh VM may take to be ready for its request.
const START_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Function {
    pub name: String,
    source: Source,
    next_id: AtomicU64,
    /// vCPU threads kept between this function's clones.
    runners: Arc<Runners>,
    /// A background refill of the warm pool is running: one at a time, so
    /// requests never pile up blocking threads making shells.
    refilling: AtomicBool,
    /// The program each request runs, for a program function.
    program: Option<ExecEntry>,
    /// Its template's guest memory.
    mem_size: u64,
}

/// What one invocation hands its guest: a built-in function's request
/// body, or a program function's encoded exec request (ExecSpec::encode).
pub enum Payload {
    Body(axum::body::Bytes),
    Exec(Vec<u8>),
}

/// Where each invocation's VM comes from.
enum Source {
    /// A fresh clone of the template, in a warm VM shell when one is ready.
    Clones {
        factory: Box<CloneFactory>,
        /// What the template's guest resumes with when it goes straight
        /// into its request (RESUME_INVOKE, RESUME_EXEC): one of this
        /// build's embedded guests, parked. None: RESUMED, then a command.
        resume_command: Option<u32>,
        pool: Arc<ShellPool>,
        warm_target: usize,
    },
    /// A cold boot of the template's guest and command line per request:
    /// the baseline that clones are measured against (`--cold-boot`).
    ColdBoot {
        cmdline: String,
        mem_size: u64,
        vcpus: u8,
    },
}

/// How one invocation ended.
pub enum Outcome {
    Done {
        response: Response,
        clone_us: u64,
        run_us: u64,
    },
    /// A program function's program ran (whatever its outcome).
    Ran {
        output: ExecOutput,
        clone_us: u64,
        run_us: u64,
    },
    Timeout,
    Crash(String),
    Error(String),
}

impl Function {
    /// `max_concurrency`: how many recycled VMs are worth keeping.
    pub fn load(
        name: &str,
        dir: &Path,
        warm: usize,
        recycle: Recycle,
        max_concurrency: usize,
        cold_boot: bool,
        trust: &TrustPolicy,
    ) -> Result<Function> {
        let load = LoadOptions {
            trust: trust.clone(),
            ..LoadOptions::default()
        };
        let template = LoadedTemplate::load_with(dir, load)?;
        let program = template.manifest.exec.clone();
        let mem_size = template.manifest.mem_size;
        let source = if cold_boot {
            let manifest = &template.manifest;
            if manifest.kernel.source != EMBEDDED_KERNEL {
                return Err(Error::InvalidArgument(format!(
                    "--cold-boot: template {} was not built from the embedded guest",
                    dir.display()
                )));
            }
            // A cold boot would open the image by path on every request,
            // past the identity check a load makes.
            if manifest.rootfs.is_some() {
                return Err(Error::InvalidArgument(format!(
                    "--cold-boot: template {} has a rootfs image; serve its clones instead",
                    dir.display()
                )));
            }
            Source::ColdBoot {
                cmdline: manifest.kernel.cmdline.clone(),
                mem_size: manifest.mem_size,
                vcpus: u8::try_from(manifest.vcpus).unwrap_or(u8::MAX),
            }
        } else {
            let resume_command = resume_command(&template)?.filter(|&command| {
                // The command must start what the payload asks for.
                (command == CMD_RESUME_EXEC) == template.manifest.exec.is_some()
            });
            let factory = CloneFactory::new(template, Backend::Memfd, false)?;
            let in_place = factory.in_place_reset();
            // A VM whose vCPU state cannot all be restored is never reused.
            let recycle = match factory.vcpus_reusable() {
                Ok(()) => recycle,
                Err(why) => {
                    tracing::warn!("{name}: finished clones' VMs are closed, not reused: {why}");
                    Recycle::Off
                }
            };
            let pool = Arc::new(ShellPool::new(
                recycle,
                warm,
                max_concurrency,
                factory.template.state.memory.clone(),
                in_place,
            ));
            Source::Clones {
                factory: Box::new(factory),
                resume_command,
                pool,
                warm_target: warm,
            }
        };
        let function = Function {
            name: name.to_string(),
            source,
            next_id: AtomicU64::new(1),
            runners: Runners::new(),
            refilling: AtomicBool::new(false),
            program,
            mem_size,
        };
        function.refill();
        Ok(function)
    }

    /// Its template's guest memory.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// The program each request runs, for a program function.
    pub fn program(&self) -> Option<&ExecEntry> {
        self.program.as_ref()
    }

    /// Tops the warm pool up to its target; called off the request path.
    pub fn refill(&self) {
        let Source::Clones {
            factory,
            pool,
            warm_target,
            resume_command,
        } = &self.source
        else {
            return;
        };
        while pool.owned() < *warm_target {
            match factory.warm_shell(Some(&self.runners), *resume_command) {
                Ok(shell) => pool.put(shell),
                Err(e) => {
                    tracing::warn!("{}: cannot create a warm VM shell: {e}", self.name);
                    return;
                }
            }
        }
    }

    /// Whether the warm pool is below its target.
    pub fn needs_refill(&self) -> bool {
        match &self.source {
            Source::Clones {
                pool, warm_target, ..
            } => pool.owned() < *warm_target,
            Source::ColdBoot { .. } => false,
        }
    }

    /// Whether the caller should run [`Self::refill_claimed`]: the pool is
    /// below its target and no other refill is running.
    pub fn claim_refill(&self) -> bool {
        self.needs_refill() && !self.refilling.swap(true, Ordering::AcqRel)
    }

    /// The refill [`Self::claim_refill`] gave to the caller.
    pub fn refill_claimed(&self) {
        self.refill();
        self.refilling.store(false, Ordering::Release);
    }

    pub fn warm_len(&self) -> usize {
        match &self.source {
            Source::Clones { pool, .. } => pool.owned(),
            Source::ColdBoot { .. } => 0,
        }
    }

    /// Shells in the pool now, not counting those lent to running clones.
    pub fn pooled_vms(&self) -> usize {
        match &self.source {
            Source::Clones { pool, .. } => pool.ready(),
            Source::ColdBoot { .. } => 0,
        }
    }

    /// Whether its clones resume straight into their request
    /// (RESUME_INVOKE or RESUME_EXEC, docs/guest-abi.md) rather than
    /// acknowledging the resume first.
    pub fn resumes_into_request(&self) -> bool {
        matches!(
            self.source,
            Source::Clones {
                resume_command: Some(_),
                ..
            }
        )
    }

    /// A clone that will never reach the reapers gives up its lent shell
    /// (with recycling on, every clone runs in one).
    fn abandon_shell(&self) {
        if let Source::Clones { pool, .. } = &self.source {
            if pool.recycles() {
                pool.returned(None);
            }
        }
    }

    /// A new VM for one request, not yet started.
    fn new_vm(&self, requested: Instant) -> Result<Machine> {
        match &self.source {
            Source::Clones {
                factory,
                pool,
                resume_command,
                ..
            } => {
                // A VM that is to be recycled must be built as a shell.
                let shell = match pool.take() {
                    Some(shell) => Some(shell),
                    None if pool.recycles() => Some(pool.lend_new(factory.shell()?)),
                    None => None,
                };
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let lent = shell.is_some() && pool.recycles();
                let machine = factory
                    .clone_vm(CloneOptions {
                        clone_id: id,
                        shell,
                        console: Console::Discard,
                        requested,
                        resume_command: *resume_command,
                    })
                    .map(|(machine, _)| machine);
                if machine.is_err() && lent {
                    pool.returned(None);
                }
                machine
            }
            Source::ColdBoot {
                cmdline,
                mem_size,
                vcpus,
            } => Machine::cold_boot(MachineConfig {
                kernel: KernelSource::Embedded(vmfork_machine::EMBEDDED_GUEST),
                initrd: None,
                rootfs: None,
                mem_size: *mem_size,
                vcpus: *vcpus,
                cmdline: cmdline.clone(),
                protocol: BootProtocol::Linux64,
                console: Console::Discard,
                exit_on_ready: false,
                started: requested,
            }),
        }
    }

    /// Runs `body` through the function in a fresh VM and gives `reply`
    /// the outcome. Then the VM is recycled here, when it answered and its
    /// pool takes it back (the caller is answered by then, and handing it
    /// to a reaper would cost another cross-thread wake-up); otherwise it
    /// goes to `reaper` to be stopped and closed. `slot` is freed once the
    /// VM is stopped (or was never started), however the caller fares.
    pub fn invoke(
        &self,
        slot: Option<Slot>,
        payload: &Payload,
        timeout: Duration,
        metrics: &Metrics,
        reaper: &Sender<Finished>,
        reply: impl FnOnce(Outcome),
    ) {
        let (outcome, running) = self.run(payload, timeout, metrics);
        let Some(running) = running else {
            return reply(outcome);
        };
        let reusable = matches!(outcome, Outcome::Done { .. } | Outcome::Ran { .. });
        reply(outcome);
        // Only a clone that answered normally is recycled; one that
        // crashed, hung or misbehaved is closed.
        let pool = match &self.source {
            Source::Clones { pool, .. } => Some(pool.clone()),
            Source::ColdBoot { .. } => None,
        };
        let finished = Finished::new(running, pool, reusable, slot);
        if finished.recycles() {
            return finished.reap(metrics);
        }
        if let Err(std::sync::mpsc::SendError(finished)) = reaper.send(finished) {
            finished.reap(metrics);
        }
    }

    /// One invocation: its outcome, and its VM if one was started.
    fn run(
        &self,
        payload: &Payload,
        timeout: Duration,
        metrics: &Metrics,
    ) -> (Outcome, Option<RunningMachine>) {
        let requested = Instant::now();
        let machine = match self.new_vm(requested) {
            Ok(m) => m,
            Err(e) => return (Outcome::Error(format!("creating the VM: {e}")), None),
        };
        // A clone's request is in place before its first instruction; a
        // cold-booted guest initialises its heap first, so it gets its
        // request once it is parked after READY.
        let cloned = matches!(self.source, Source::Clones { .. });
        let (command, body) = match payload {
            Payload::Body(body) => (CMD_INVOKE, &body[..]),
            Payload::Exec(request) => (CMD_EXEC, &request[..]),
        };
        if cloned {
            let written = match payload {
                Payload::Body(_) => mailbox::write_request(machine.memory(), body),
                Payload::Exec(_) => exec::write_request(machine.memory(), body),
            };
            if let Err(e) = written {
                self.abandon_shell();
                return (Outcome::Error(e.to_string()), None);
            }
        }
        let latch = machine.control().latch().clone();
        let acks = machine.control().commands().acks();
        // A clone is driven from its vCPU thread; a cold boot, from here.
        let progress = cloned.then(|| Progress::new(requested, acks, command));
        let started = match &progress {
            Some(progress) => {
                if self.resumes_into_request() {
                    progress.invoked_with_resume();
                }
                machine.start_commanded(Some(&self.runners), progress.commander())
            }
            None => machine.start_on(Some(&self.runners)),
        };
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                self.abandon_shell();
                return (Outcome::Error(format!("starting the VM: {e}")), None);
            }
        };
        metrics.live_clones.fetch_add(1, Ordering::Relaxed);
        let outcome = if let Some(progress) = &progress {
            match progress.wait(&running, START_TIMEOUT, timeout) {
                Ending::Answered { clone_us, run_us } => match payload {
                    Payload::Body(_) => response(&running, clone_us, run_us),
                    Payload::Exec(_) => ran(&running, clone_us, run_us),
                },
                Ending::TimedOut => stopped(&latch).unwrap_or(Outcome::Timeout),
                Ending::Returned(why) => {
                    stopped(&latch).unwrap_or_else(|| Outcome::Crash(why.into()))
                }
            }
        } else {
            cold_boot_invoke(&running, body, requested, timeout)
        };
        if matches!(outcome, Outcome::Timeout) {
            // The caller only learns that time ran out; what the guest was
            // doing meanwhile, if the VMM saw it, goes to the log.
            let unclaimed = running.machine().unclaimed_accesses();
            if unclaimed.total() > 0 {
                tracing::warn!("{}: a clone timed out after {unclaimed}", self.name);
            }
        }
        (outcome, Some(running))
    }
}

/// What clones of `template` can resume with to go straight into their
/// request: RESUME_INVOKE when its guest is the default guest embedded in
/// this build, RESUME_EXEC when it is the embedded Wasm guest (their ABI
/// is known to have them), either saved parked in its `in`. The recorded
/// digest says so only for a trusted template (docs/security.md,
/// "Templates"); any other gets RESUMED and then its command, which every
/// guest understands.
fn resume_command(template: &LoadedTemplate) -> Result<Option<u32>> {
    let Some(kernel) = template.trusted_kernel() else {
        return Ok(None);
    };
    if kernel.source != EMBEDDED_KERNEL || !template.resumes_parked() {
        return Ok(None);
    }
    let [default_guest, wasm_guest] = embedded_guest_sha256s()?;
    Ok(if kernel.sha256 == *default_guest {
        Some(CMD_RESUME_INVOKE)
    } else if kernel.sha256 == *wasm_guest {
        Some(CMD_RESUME_EXEC)
    } else {
        None
    })
}

/// The digests of the default guest and the Wasm guest, computed once.
fn embedded_guest_sha256s() -> Result<&'static [String; 2]> {
    static SHAS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    if let Some(shas) = SHAS.get() {
        return Ok(shas);
    }
    let sha = |elf| KernelSource::Embedded(elf).sha256();
    let shas = [
        sha(vmfork_machine::EMBEDDED_GUEST)?,
        sha(vmfork_wasm::template::GUEST_ELF)?,
    ];
    Ok(SHAS.get_or_init(|| shas))
}

/// The function's answer in the mailbox of a clone that acknowledged it.
fn response(running: &RunningMachine, clone_us: u64, run_us: u64) -> Outcome {
    match mailbox::read_response(running.machine().memory()) {
        Ok(response) => Outcome::Done {
            response,
            clone_us,
            run_us,
        },
        Err(e) => Outcome::Crash(e.to_string()),
    }
}

/// A program function's result in the mailbox of a clone that
/// acknowledged EXEC.
fn ran(running: &RunningMachine, clone_us: u64, run_us: u64) -> Outcome {
    match exec::read_result(running.machine().memory()) {
        Ok(output) => Outcome::Ran {
            output,
            clone_us,
            run_us,
        },
        Err(e) => Outcome::Crash(e.to_string()),
    }
}

/// A cold-booted guest initialises its heap first, so it gets its request
/// once it is parked after READY, from this (the owner's) thread.
fn cold_boot_invoke(
    running: &RunningMachine,
    body: &[u8],
    requested: Instant,
    timeout: Duration,
) -> Outcome {
    let control = running.control();
    let commands = control.commands();
    let acks = commands.acks();
    if !commands.wait_acks_parked(acks, Some(requested + START_TIMEOUT)) {
        return stopped(control.latch()).unwrap_or(Outcome::Timeout);
    }
    let clone_us = requested.elapsed().as_micros() as u64;
    if let Err(e) = mailbox::write_request(running.machine().memory(), body) {
        return Outcome::Error(e.to_string());
    }
    let run_start = Instant::now();
    commands.send_command(CMD_INVOKE);
    if !commands.wait_acks(acks + 1, Some(run_start + timeout)) {
        return stopped(control.latch()).unwrap_or(Outcome::Timeout);
    }
    response(running, clone_us, run_start.elapsed().as_micros() as u64)
}

/// The guest's own reason for stopping, if it stopped.
fn stopped(latch: &vmfork_machine::control::StopLatch) -> Option<Outcome> {
    match latch.reason()? {
        StopReason::GuestCrash { vector } => Some(Outcome::Crash(format!(
            "guest crashed (exception vector {vector})"
        ))),
        StopReason::GuestShutdown { what, .. } => Some(Outcome::Crash(what)),
        StopReason::GuestEmulation(what) => Some(Outcome::Crash(what)),
        StopReason::GuestExit(code) => {
            Some(Outcome::Crash(format!("guest exited with status {code}")))
        }
        other => Some(Outcome::Error(format!("clone stopped: {other:?}"))),
    }
}
