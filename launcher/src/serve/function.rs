//! One deployed function: a template, its clone factory, a pool of warm VM
//! shells, and the path of one invocation in a fresh clone.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::mailbox::{self, Response, CMD_INVOKE};
use super::metrics::Metrics;
use crate::boot::loader::{BootProtocol, KernelSource, EMBEDDED_KERNEL};
use crate::clone::shell::VmShell;
use crate::clone::{Backend, CloneFactory};
use crate::control::StopReason;
use crate::devices::console::Console;
use crate::error::{Error, Result};
use crate::machine::{Machine, MachineConfig, RunningMachine};
use crate::template::LoadedTemplate;

/// How long a fresh VM may take to be ready for its request.
const START_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Function {
    pub name: String,
    source: Source,
    next_id: AtomicU64,
}

/// Where each invocation's VM comes from.
enum Source {
    /// A fresh clone of the template, in a warm VM shell when one is ready.
    Clones {
        factory: Box<CloneFactory>,
        warm: Mutex<Vec<VmShell>>,
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
    Timeout,
    Crash(String),
    Error(String),
}

impl Function {
    pub fn load(name: &str, dir: &Path, warm: usize, cold_boot: bool) -> Result<Function> {
        let template = LoadedTemplate::load(dir)?;
        let source = if cold_boot {
            let manifest = &template.manifest;
            if manifest.kernel.source != EMBEDDED_KERNEL {
                return Err(Error::InvalidArgument(format!(
                    "--cold-boot: template {} was not built from the embedded guest",
                    dir.display()
                )));
            }
            Source::ColdBoot {
                cmdline: manifest.kernel.cmdline.clone(),
                mem_size: manifest.mem_size,
                vcpus: u8::try_from(manifest.vcpus).unwrap_or(u8::MAX),
            }
        } else {
            Source::Clones {
                factory: Box::new(CloneFactory::new(template, Backend::Memfd, false)?),
                warm: Mutex::new(Vec::new()),
                warm_target: warm,
            }
        };
        let function = Function {
            name: name.to_string(),
            source,
            next_id: AtomicU64::new(1),
        };
        function.refill();
        Ok(function)
    }

    /// Tops the warm pool up to its target; called off the request path.
    pub fn refill(&self) {
        let Source::Clones {
            factory,
            warm,
            warm_target,
        } = &self.source
        else {
            return;
        };
        loop {
            let missing = warm
                .lock()
                .map_or(0, |w| warm_target.saturating_sub(w.len()));
            if missing == 0 {
                return;
            }
            match factory.shell() {
                Ok(shell) => {
                    if let Ok(mut w) = warm.lock() {
                        w.push(shell);
                    }
                }
                Err(e) => {
                    tracing::warn!("{}: cannot create a warm VM shell: {e}", self.name);
                    return;
                }
            }
        }
    }

    pub fn warm_len(&self) -> usize {
        match &self.source {
            Source::Clones { warm, .. } => warm.lock().map_or(0, |w| w.len()),
            Source::ColdBoot { .. } => 0,
        }
    }

    /// A new VM for one request, not yet started.
    fn new_vm(&self, requested: Instant) -> Result<Machine> {
        match &self.source {
            Source::Clones { factory, warm, .. } => {
                let shell = warm.lock().ok().and_then(|mut w| w.pop());
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                factory.clone_vm(id, shell, Console::Discard, requested)
            }
            Source::ColdBoot {
                cmdline,
                mem_size,
                vcpus,
            } => Machine::cold_boot(MachineConfig {
                kernel: KernelSource::Embedded(crate::EMBEDDED_GUEST),
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

    /// Runs `body` through the function in a fresh VM. The VM is handed
    /// to `reaper` afterwards, whatever happened.
    pub fn invoke(
        &self,
        body: &[u8],
        timeout: Duration,
        metrics: &Metrics,
        reaper: &Sender<RunningMachine>,
    ) -> Outcome {
        let requested = Instant::now();
        let machine = match self.new_vm(requested) {
            Ok(m) => m,
            Err(e) => return Outcome::Error(format!("creating the VM: {e}")),
        };
        // A clone's request is in place before its first instruction; a
        // cold-booted guest initialises its heap first, so it gets its
        // request once it is parked after READY.
        let cloned = matches!(self.source, Source::Clones { .. });
        if cloned {
            if let Err(e) = mailbox::write_request(machine.memory(), body) {
                return Outcome::Error(e.to_string());
            }
        }
        let control = machine.control().clone();
        let acks_at_start = control.acks();
        let running = match machine.start() {
            Ok(r) => r,
            Err(e) => return Outcome::Error(format!("starting the VM: {e}")),
        };
        metrics.live_clones.fetch_add(1, Ordering::Relaxed);
        let outcome = (|| {
            let deadline = Some(requested + START_TIMEOUT);
            // A fresh clone first acknowledges that it resumed.
            let up = if cloned {
                control.wait_acks(acks_at_start + 1, deadline)
            } else {
                true
            };
            if !up || !control.wait_parked(deadline) {
                return stopped(&control).unwrap_or(Outcome::Timeout);
            }
            let clone_us = requested.elapsed().as_micros() as u64;
            if !cloned {
                if let Err(e) = mailbox::write_request(running.machine().memory(), body) {
                    return Outcome::Error(e.to_string());
                }
            }
            let before = control.acks();
            let run_start = Instant::now();
            control.send_command(CMD_INVOKE);
            if !control.wait_acks(before + 1, Some(run_start + timeout)) {
                return stopped(&control).unwrap_or(Outcome::Timeout);
            }
            let run_us = run_start.elapsed().as_micros() as u64;
            match mailbox::read_response(running.machine().memory()) {
                Ok(response) => Outcome::Done {
                    response,
                    clone_us,
                    run_us,
                },
                Err(e) => Outcome::Crash(e.to_string()),
            }
        })();
        if matches!(outcome, Outcome::Timeout) {
            // The caller only learns that time ran out; what the guest was
            // doing meanwhile, if the VMM saw it, goes to the log.
            let unclaimed = running.machine().unclaimed_accesses();
            if unclaimed.total() > 0 {
                tracing::warn!("{}: a clone timed out after {unclaimed}", self.name);
            }
        }
        // Teardown (stop, join, close the VM: ~10 ms here) is not the
        // caller's latency.
        if let Err(std::sync::mpsc::SendError(running)) = reaper.send(running) {
            drop(running.stop(StopReason::Requested));
            metrics.live_clones.fetch_sub(1, Ordering::Relaxed);
        }
        outcome
    }
}

/// The guest's own reason for stopping, if it stopped.
fn stopped(control: &crate::control::Control) -> Option<Outcome> {
    match control.stop_reason()? {
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

/// Closing a VM takes ~10 ms on this host, mostly waiting in KVM, so
/// several reapers share the queue.
const REAPERS: usize = 16;

/// Stops and closes clones handed over by invocations, off the request
/// path. The threads end when every sender is dropped and the queue is
/// empty.
pub fn spawn_reapers(
    metrics: Arc<Metrics>,
) -> std::io::Result<(Sender<RunningMachine>, Vec<std::thread::JoinHandle<()>>)> {
    let (tx, rx) = std::sync::mpsc::channel::<RunningMachine>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::with_capacity(REAPERS);
    for _ in 0..REAPERS {
        let (rx, metrics) = (rx.clone(), metrics.clone());
        handles.push(
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || {
                    crate::seccomp::install_in_thread(crate::seccomp::ThreadKind::Reaper);
                    loop {
                        let next = rx.lock().map(|r| r.recv());
                        match next {
                            Ok(Ok(running)) => {
                                drop(running.stop(StopReason::Requested));
                                metrics.live_clones.fetch_sub(1, Ordering::Relaxed);
                            }
                            _ => return,
                        }
                    }
                })?,
        );
    }
    Ok((tx, handles))
}
