//! A pc-lite machine: its VM, memory, vCPUs and devices; running it on one
//! thread per vCPU; pausing, stopping and capturing its state.

mod cold_boot;
mod config;

pub use config::{MachineConfig, MAX_MEM_SIZE, MAX_VCPUS, MIN_MEM_SIZE};

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vm_memory::GuestMemoryMmap;
use vmfork_snapshot::state::{DeviceState, MachineState};
use vmfork_snapshot::Persist;

use crate::boot::loader::KernelInfo;
use crate::control::{Control, StopReason};
use crate::devices::serial::IrqTrigger;
use crate::devices::unclaimed::UnclaimedCounts;
use crate::devices::PortIoBus;
use crate::error::{Error, Result};
use crate::kvm_host::KvmHost;
use crate::memory::{GuestRam, RamGuard};
use crate::persist::pmem::PmemSlot;
use crate::vcpu::run::{run_loop, Commander, VcpuContext};
use crate::vcpu::threads::{Runners, VcpuThread, VcpuWork};
use crate::vcpu::{kick, Vcpu};
use crate::vm::Vm;

pub struct Machine {
    // Field order is drop order: vCPUs and the VM go before the memory
    // they map.
    vcpus: Vec<Vcpu>,
    vm: Vm,
    ram: GuestRam,
    pmem: Option<PmemSlot>,
    bus: Arc<Mutex<PortIoBus>>,
    control: Control,
    host: &'static KvmHost,
    /// (phase, microseconds since the start instant) for each setup step.
    pub phases: Vec<(&'static str, u64)>,
    origin: Arc<Origin>,
}

/// What a machine was made from, as its snapshots record it. Shared by
/// every machine restored from one template, so a restore copies nothing.
#[derive(Debug)]
pub struct Origin {
    pub kernel: KernelInfo,
    /// The template it was restored from; None for a cold boot.
    pub template: Option<PathBuf>,
    /// That template's identity as it was loaded (the hex SHA-256 of its
    /// `template.json`), which a diff snapshot records for its base.
    pub template_sha256: Option<String>,
    /// The program its template runs per request, if it is a function
    /// template of that kind (a diff snapshot keeps it).
    pub exec: Option<crate::exec::ExecEntry>,
}

/// Everything a restore has rebuilt, handed over to become a Machine.
pub struct RestoredParts {
    pub vcpus: Vec<Vcpu>,
    pub vm: Vm,
    pub ram: GuestRam,
    pub pmem: Option<PmemSlot>,
    pub bus: PortIoBus,
    pub control: Control,
    pub phases: Vec<(&'static str, u64)>,
    pub origin: Arc<Origin>,
}

impl Machine {
    pub fn from_restored(parts: RestoredParts) -> Result<Machine> {
        Ok(Machine {
            vcpus: parts.vcpus,
            vm: parts.vm,
            ram: parts.ram,
            pmem: parts.pmem,
            bus: Arc::new(Mutex::new(parts.bus)),
            control: parts.control,
            host: KvmHost::get()?,
            phases: parts.phases,
            origin: parts.origin,
        })
    }

    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    pub fn control(&self) -> &Control {
        &self.control
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.ram.mem
    }

    /// The rootfs window, for a VM booted or restored with one.
    pub fn pmem(&self) -> Option<&PmemSlot> {
        self.pmem.as_ref()
    }

    /// Port and MMIO accesses no device claimed, ignored so far.
    pub fn unclaimed_accesses(&self) -> UnclaimedCounts {
        self.bus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unclaimed()
    }

    /// Starts (or resumes) one thread per vCPU.
    pub fn start(self) -> Result<RunningMachine> {
        self.start_on(None)
    }

    /// Starts the vCPUs on `runners`' kept threads when given, else on
    /// threads of their own.
    pub fn start_on(self, runners: Option<&Arc<Runners>>) -> Result<RunningMachine> {
        self.start_with(runners, None)
    }

    /// [`Self::start_on`], with `commander` deciding each parked guest's
    /// next command on its vCPU's thread instead of the owner (see
    /// [`Commander`]). The vCPUs return once it answers None.
    pub fn start_commanded(
        self,
        runners: Option<&Arc<Runners>>,
        commander: Commander,
    ) -> Result<RunningMachine> {
        self.start_with(runners, Some(commander))
    }

    fn start_with(
        mut self,
        runners: Option<&Arc<Runners>>,
        commander: Option<Commander>,
    ) -> Result<RunningMachine> {
        kick::install_kick_handler()?;
        self.control.pause().clear();
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for mut vcpu in std::mem::take(&mut self.vcpus) {
            let index = vcpu.index;
            let latch = self.control.latch().clone();
            let commands = self.control.commands().clone();
            let bus = self.bus.clone();
            // Regions are shared, not copied; the clone is dropped when
            // the vCPU's run ends, before the machine and its memory.
            let mem = self.ram.mem.clone();
            let host = self.host.virt;
            let commander = commander.clone();
            // Filtered before this thread runs a guest instruction or
            // handles a single exit.
            let work: VcpuWork = Box::new(move |filter| {
                if let Err(e) = filter {
                    let why = format!("vCPU {}: {e}", vcpu.index);
                    latch.stop(StopReason::VcpuFailed(why));
                    return vcpu;
                }
                let ctx = VcpuContext {
                    latch: &latch,
                    commands: &commands,
                    bus: &bus,
                    mem: &mem,
                    host,
                    commander: commander.as_ref(),
                };
                run_loop(vcpu.index, &mut vcpu.fd, &ctx);
                vcpu
            });
            let started = match runners {
                Some(runners) => runners.run(work),
                None => VcpuThread::spawn(format!("vcpu{index}"), work),
            };
            match started {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Leave no vCPU of a half-started VM running.
                    self.control.latch().stop(StopReason::Requested);
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(Error::Vcpu {
                        index: index.into(),
                        reason: format!(
                            "cannot start its thread: {e} (is a pids.max or RLIMIT_NPROC limit reached?)"
                        ),
                    });
                }
            }
        }
        Ok(RunningMachine {
            machine: self,
            threads,
        })
    }

    /// Lets KVM finish an I/O exit the vCPU loop already answered, so the
    /// registers are architecturally consistent (KVM's API documentation
    /// requires this before reading state after KVM_EXIT_IO), and so no
    /// completion is left to land on state restored later.
    fn complete_pending_io(&mut self, why: &str) -> Result<()> {
        for vcpu in &mut self.vcpus {
            vcpu.fd.set_kvm_immediate_exit(1);
            let result = vcpu.fd.run();
            let outcome = match result {
                Err(e) if e.errno() == libc::EINTR => Ok(()),
                Ok(exit) => Err(format!("unexpected exit {exit:?}")),
                Err(e) => Err(e.to_string()),
            };
            vcpu.fd.set_kvm_immediate_exit(0);
            outcome.map_err(|reason| Error::Vcpu {
                index: usize::from(vcpu.index),
                reason: format!("completing pending I/O {why}: {reason}"),
            })?;
        }
        Ok(())
    }

    /// The whole machine's state, through each component's `Persist`. The
    /// machine must be paused (not running).
    pub fn save_state(&mut self) -> Result<MachineState> {
        if self.vcpus.is_empty() {
            return Err(Error::Snapshot(
                "the machine has no stopped vCPUs to save".into(),
            ));
        }
        self.complete_pending_io("before a snapshot")?;
        let vm = self.vm.save()?;
        let vcpus = self
            .vcpus
            .iter()
            .map(Persist::save)
            .collect::<Result<Vec<_>>>()?;
        let bus = self.bus.lock().unwrap_or_else(|p| p.into_inner());
        let devices = DeviceState {
            serial: bus.serial.save()?,
            ready_port: self.control.commands().save()?,
            pci_host: bus.pci_host.save()?,
        };
        drop(bus);
        Ok(MachineState {
            vm,
            vcpus,
            devices,
            memory: self.ram.save()?,
            pmem: self.pmem.as_ref().map(Persist::save).transpose()?,
        })
    }
}

/// A stopped machine taken apart to run another clone: its VM, vCPUs and
/// interrupt line, and what it kept alive beside its memory (for a clone
/// in a VM shell, the shell's reserved address range).
pub struct ReusableParts {
    pub vm: Vm,
    pub vcpus: Vec<Vcpu>,
    pub serial_irq: IrqTrigger,
    pub ram_guard: RamGuard,
    /// The rootfs window, kept: the image mapping lives as long as the
    /// slot that points at it.
    pub pmem: Option<PmemSlot>,
}

impl Machine {
    /// Takes a stopped machine apart for reuse ([`crate::shell::VmShell::recycle`]).
    /// Every piece of guest-visible state is overwritten by the next
    /// restore; the one thing a restore cannot overwrite, an I/O exit KVM
    /// has not completed yet, is completed here. A rootfs slot stays; the
    /// next restore checks it maps that template's image at its address.
    pub fn into_reusable(mut self) -> Result<ReusableParts> {
        if self.vcpus.is_empty() {
            return Err(Error::Snapshot(
                "only a stopped machine can be reused".into(),
            ));
        }
        self.complete_pending_io("before reusing the VM")?;
        let serial_irq = self
            .bus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .serial
            .irq_trigger();
        Ok(ReusableParts {
            vm: self.vm,
            vcpus: self.vcpus,
            serial_irq,
            ram_guard: self.ram.guard,
            pmem: self.pmem,
        })
    }
}

pub struct RunningMachine {
    machine: Machine,
    threads: Vec<VcpuThread>,
}

impl RunningMachine {
    pub fn control(&self) -> &Control {
        &self.machine.control
    }

    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// Blocks until the VM stops; after `ready_timeout` without the
    /// guest being ready, stops it with [`StopReason::Timeout`].
    pub fn wait(&self, ready_timeout: Option<Duration>) -> StopReason {
        let control = &self.machine.control;
        if let Some(t) = ready_timeout {
            if !control.commands().wait_ready(std::time::Instant::now() + t) {
                control.latch().stop(StopReason::Timeout(t));
            }
        }
        control.latch().wait()
    }

    /// Waits until every vCPU thread has returned (a commanded machine's
    /// do once their commander answers None), or until `deadline`.
    /// Returns whether they have.
    pub fn wait_vcpus_until(&self, deadline: std::time::Instant) -> bool {
        self.threads.iter().all(|t| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            t.wait_finished(left)
        })
    }

    /// Kicks every vCPU thread out of KVM_RUN and takes its vCPU back. A
    /// kick can land just before a thread enters KVM_RUN and be lost, so it
    /// is repeated until the thread has returned.
    fn join_vcpus(&mut self) -> Result<()> {
        for handle in self.threads.drain(..) {
            // A parked vCPU leaves on the stop itself, without a signal;
            // one in KVM_RUN needs kicking, repeatedly, since a kick that
            // lands just before it enters KVM_RUN is lost.
            while !handle.wait_finished(Duration::from_micros(50)) {
                kick::kick(handle.pthread());
                handle.wait_finished(Duration::from_micros(150));
            }
            let vcpu = handle.join().ok_or_else(|| Error::Vcpu {
                index: self.machine.vcpus.len(),
                reason: "vCPU thread panicked".into(),
            })?;
            self.machine.vcpus.push(vcpu);
        }
        self.machine.vcpus.sort_by_key(|v| v.index);
        self.machine
            .bus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .serial
            .flush();
        Ok(())
    }

    /// Pauses the VM: every vCPU out of KVM_RUN, the machine handed back
    /// with its vCPUs so its state can be read; `Machine::start` resumes.
    pub fn pause(mut self) -> Result<Machine> {
        self.machine.control.pause().request();
        self.join_vcpus()?;
        Ok(self.machine)
    }

    /// Stops every vCPU thread for good.
    pub fn stop(mut self, reason: StopReason) -> Result<Machine> {
        self.machine.control.latch().stop(reason);
        self.join_vcpus()?;
        Ok(self.machine)
    }
}

/// Resident set size of this process, in KiB, from /proc/self/status.
pub fn vmm_rss_kib() -> u64 {
    proc_field_kib("/proc/self/status", "VmRSS:")
}

/// The first number after `key` in a /proc file such as `/proc/meminfo`
/// or `/proc/self/smaps_rollup` (KiB there); 0 when absent.
pub fn proc_field_kib(path: &str, key: &str) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
