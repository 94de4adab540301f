//! The vCPU run loop. Every KVM exit is decided here, in one match.

use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_SYSTEM_EVENT_RESET;
use kvm_ioctls::{VcpuExit, VcpuFd};

use vm_memory::GuestMemoryMmap;

use crate::control::{CommandChannel, StopLatch, StopReason};
use crate::devices::console_doorbell::{CONSOLE_ACK_PORT, CONSOLE_PORT};
use crate::devices::ready_port::{self, GuestSignal, ACK_WAIT_PORT, READY_PORT};
use crate::devices::{PlatformEvent, PortIoBus};
use crate::kvm_host::HostVirt;

/// What the vCPU loop does after one exit.
enum Next {
    Run,
    /// KVM_RUN returned EAGAIN: try again, a bounded number of times.
    Again,
    Stop(StopReason),
    /// The VM is stopping for a reason already recorded.
    Quit,
}

/// Transient EAGAINs clear after a retry or two; a thousand in a row is a
/// permanent failure.
const MAX_EAGAIN_IN_A_ROW: u32 = 1000;

pub struct VcpuContext<'a> {
    pub latch: &'a StopLatch,
    pub commands: &'a CommandChannel,
    pub bus: &'a Mutex<PortIoBus>,
    /// The guest's RAM, where console doorbells point.
    pub mem: &'a GuestMemoryMmap,
    pub host: HostVirt,
    /// Who gives a parked guest its next command: None for the owner, by
    /// way of `commands` from another thread.
    pub commander: Option<&'a Commander>,
}

/// Decides a parked guest's next command on the vCPU's own thread, from
/// the number of acknowledgements so far; None ends the run, with the
/// guest still parked and its vCPU handed back. A round trip to the owner
/// thread per command costs ~45 us each way on this host (a cross-CPU
/// wake-up in a nested VM): `vmfork serve` runs a request this way, and
/// `vmfork clone` ends a clone's run at its first park.
pub type Commander = Arc<dyn Fn(u64) -> Option<u32> + Send + Sync>;

/// Runs until the VM stops. The guest's own stop reasons are recorded in
/// `latch`; this returns when the thread should end.
pub fn run_loop(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) {
    let mut eagain_in_a_row = 0u32;
    loop {
        if ctx.latch.is_leaving() {
            return;
        }
        match step(index, vcpu, ctx) {
            Next::Run => eagain_in_a_row = 0,
            Next::Again => {
                // KVM_RUN fails with EAGAIN for good when KVM cannot start
                // the per-VM kernel worker it needs on the first run (for
                // instance under a pids.max limit): retrying would spin.
                eagain_in_a_row += 1;
                if eagain_in_a_row >= MAX_EAGAIN_IN_A_ROW {
                    ctx.latch.stop(StopReason::VcpuFailed(format!(
                        "vCPU {index}: KVM_RUN keeps failing with EAGAIN (KVM could not start its per-VM worker thread; is a pids.max limit reached?)"
                    )));
                    return;
                }
            }
            Next::Quit => return,
            Next::Stop(reason) => {
                ctx.latch.stop(reason);
                return;
            }
        }
    }
}

fn step(index: u8, vcpu: &mut VcpuFd, ctx: &VcpuContext) -> Next {
    let exit = match vcpu.run() {
        Ok(exit) => exit,
        Err(e) if e.errno() == libc::EINTR => return Next::Run,
        Err(e) if e.errno() == libc::EAGAIN => return Next::Again,
        Err(e) => {
            return Next::Stop(StopReason::VcpuFailed(format!(
                "vCPU {index}: KVM_RUN failed: {e}"
            )))
        }
    };
    match exit {
        VcpuExit::IoOut(READY_PORT, data) => on_ready_port_write(ready_port::decode_write(data), ctx),
        VcpuExit::IoIn(port @ (READY_PORT | ACK_WAIT_PORT), data) => {
            park(data, port == ACK_WAIT_PORT, ctx)
        }
        VcpuExit::IoOut(port @ (CONSOLE_PORT | CONSOLE_ACK_PORT), data) => {
            let printed = lock(ctx.bus).console_doorbell(port, data, ctx.mem);
            // A line and its command's acknowledgement in one exit: the
            // same as an `AC` write, after the line is out.
            if printed && port == CONSOLE_ACK_PORT {
                ctx.commands.mark_ack();
            }
            Next::Run
        }
        VcpuExit::IoOut(port, data) => {
            let event = lock(ctx.bus).write(port, data);
            match event {
                Some(PlatformEvent::ResetRequested(how)) => Next::Stop(StopReason::GuestShutdown {
                    what: format!("guest reset the machine through {how}"),
                    rip: rip(vcpu),
                }),
                None => Next::Run,
            }
        }
        VcpuExit::IoIn(port, data) => {
            lock(ctx.bus).read(port, data);
            Next::Run
        }
        // Unclaimed ports and MMIO never stop the VM (devices/unclaimed.rs):
        // a guest flooding them spends its own vCPU time, which the owner's
        // timeouts bound.
        VcpuExit::MmioRead(addr, data) => {
            lock(ctx.bus).mmio_read(addr, data);
            Next::Run
        }
        VcpuExit::MmioWrite(addr, _) => {
            lock(ctx.bus).mmio_write(addr);
            Next::Run
        }
        VcpuExit::Shutdown => Next::Stop(StopReason::GuestShutdown {
            what: "guest triple-faulted or shut down (KVM_EXIT_SHUTDOWN)".into(),
            rip: rip(vcpu),
        }),
        VcpuExit::SystemEvent(kind, _) => Next::Stop(StopReason::GuestShutdown {
            what: if kind == KVM_SYSTEM_EVENT_RESET {
                "guest requested a reset (KVM_SYSTEM_EVENT_RESET)".into()
            } else {
                format!("guest requested shutdown (KVM system event {kind})")
            },
            rip: rip(vcpu),
        }),
        VcpuExit::Hlt => Next::Stop(StopReason::GuestShutdown {
            what: "guest halted with no interrupt source (KVM_EXIT_HLT)".into(),
            rip: rip(vcpu),
        }),
        VcpuExit::InternalError => {
            let message = internal_error_message(index, vcpu, ctx.host);
            Next::Stop(StopReason::GuestEmulation(message))
        }
        VcpuExit::FailEntry(reason, cpu) => Next::Stop(StopReason::GuestEmulation(format!(
            "KVM could not enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}, host cpu {cpu}) at RIP={:#x}",
            rip(vcpu)
        ))),
        VcpuExit::Intr => Next::Run,
        other => {
            let exit = format!("{other:?}");
            Next::Stop(StopReason::GuestEmulation(format!(
                "vCPU {index}: unexpected KVM exit {exit} at RIP={:#x}",
                rip(vcpu)
            )))
        }
    }
}

fn on_ready_port_write(signal: GuestSignal, ctx: &VcpuContext) -> Next {
    match signal {
        GuestSignal::Ready => {
            if ctx.commands.mark_ready() {
                Next::Quit
            } else {
                Next::Run
            }
        }
        GuestSignal::Exit(code) => Next::Stop(StopReason::GuestExit(code)),
        GuestSignal::Panic(vector) => Next::Stop(StopReason::GuestCrash { vector }),
        GuestSignal::Ack(_) => {
            ctx.commands.mark_ack();
            Next::Run
        }
        GuestSignal::Unknown(value) => {
            tracing::debug!("guest wrote unknown value {value:#x} to the ready port");
            Next::Run
        }
    }
}

/// A guest parked in an `in` from the ready port gets the next command.
/// `ack`: the `in` also acknowledged the last one (ACK_WAIT_PORT).
fn park(data: &mut [u8], ack: bool, ctx: &VcpuContext) -> Next {
    let command = match ctx.commander {
        Some(commander) => {
            let acks = ctx.commands.parked_with(ack);
            // A command queued by the restore (RESUMED, for a guest saved
            // between commands) goes first.
            let next = if ctx.latch.is_leaving() {
                None
            } else {
                ctx.commands.take_command().or_else(|| commander(acks))
            };
            if next.is_some() {
                ctx.commands.unpark();
            }
            next
        }
        None => ctx.commands.wait_command(ack),
    };
    match command {
        Some(command) => {
            ready_port::encode_command(command, data);
            Next::Run
        }
        None => {
            // Leaving while parked (stop, pause, snapshot): the `in`
            // completes on the next KVM_RUN with this value, which is
            // therefore what the guest sees first after a restore.
            ready_port::encode_command(ready_port::CMD_RESUMED, data);
            Next::Quit
        }
    }
}

fn lock(bus: &Mutex<PortIoBus>) -> std::sync::MutexGuard<'_, PortIoBus> {
    bus.lock().unwrap_or_else(|p| p.into_inner())
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|r| r.rip).unwrap_or(0)
}

const KVM_INTERNAL_ERROR_EMULATION: u32 = 1;

fn internal_error_message(index: u8, vcpu: &mut VcpuFd, host: HostVirt) -> String {
    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the active member of the kvm_run union.
    let (suberror, ndata, data) = unsafe {
        let internal = vcpu.get_kvm_run().__bindgen_anon_1.internal;
        (internal.suberror, internal.ndata, internal.data)
    };
    let shown = (ndata as usize).min(data.len()).min(4);
    let detail: Vec<String> = data[..shown].iter().map(|d| format!("{d:#x}")).collect();
    let rip = rip(vcpu);
    let what = if suberror == KVM_INTERNAL_ERROR_EMULATION {
        "instruction emulation failure"
    } else {
        "internal error"
    };
    let hint = if host == HostVirt::Pvm && suberror == KVM_INTERNAL_ERROR_EMULATION {
        "; this host's KVM is PVM (no VMX/SVM), which emulates guest ring 0 and cannot run this instruction (e.g. XSAVE), so Linux guests only reach their early console here: use a VMX/SVM host"
    } else {
        ""
    };
    format!(
        "KVM internal error on vCPU {index} (suberror {suberror}: {what}, data [{}]) at RIP={rip:#x}{hint}",
        detail.join(", ")
    )
}
