//! The 8250 UART at 0x3f8 (COM1), a thin wrapper over vm-superio wired to
//! IRQ 4 of the in-kernel irqchip through an eventfd.

use kvm_ioctls::VmFd;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::console::Console;
use crate::error::{Error, Result};

pub const COM1_BASE: u16 = 0x3f8;
pub const COM1_LEN: u16 = 8;
const COM1_GSI: u32 = 4;

/// Shared, so a VM that is recycled into a shell keeps its registered
/// interrupt line without a syscall (see `Machine::into_reusable`).
#[derive(Clone)]
pub struct IrqTrigger(std::sync::Arc<EventFd>);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub struct SerialPort {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, Console>,
}

impl SerialPort {
    pub fn new(vm: &VmFd, console: Console) -> Result<Self> {
        Ok(SerialPort {
            uart: Serial::new(Self::irq(vm)?, console),
        })
    }

    /// `irq`: an interrupt line made ahead of time (a VM shell's), or None
    /// to register one now.
    pub fn from_state(
        vm: &VmFd,
        irq: Option<IrqTrigger>,
        state: &vm_superio::serial::SerialState,
        console: Console,
    ) -> Result<Self> {
        let irq = match irq {
            Some(irq) => irq,
            None => Self::irq(vm)?,
        };
        let uart = Serial::from_state(state, irq, vm_superio::serial::NoEvents, console)
            .map_err(|e| Error::Snapshot(format!("serial state: {e:?}")))?;
        Ok(SerialPort { uart })
    }

    /// The UART's interrupt line: an eventfd wired to GSI 4. Registering it
    /// costs ~140 us on this host, which VM shells pay ahead of time.
    /// vCPU threads ring it, and may write only to descriptors from
    /// `VCPU_FD_FLOOR` up (docs/seccomp.md), so it is moved there.
    pub fn irq(vm: &VmFd) -> Result<IrqTrigger> {
        use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
        let irq = EventFd::new(libc::EFD_NONBLOCK)?;
        // SAFETY: into_raw_fd hands over the eventfd's only owner.
        let owned = unsafe { OwnedFd::from_raw_fd(irq.into_raw_fd()) };
        let moved = vmfork_isolation::seccomp::to_vcpu_fd_range(owned)?;
        // SAFETY: `moved` is an eventfd (a duplicate of one), owned here.
        let irq = unsafe { EventFd::from_raw_fd(moved.into_raw_fd()) };
        vm.register_irqfd(&irq, COM1_GSI)
            .map_err(Error::kvm("KVM_IRQFD (serial)"))?;
        Ok(IrqTrigger(std::sync::Arc::new(irq)))
    }

    pub fn irq_trigger(&self) -> IrqTrigger {
        self.uart.interrupt_evt().clone()
    }

    pub fn read(&mut self, offset: u16) -> u8 {
        self.uart.read(offset as u8)
    }

    pub fn write(&mut self, offset: u16, value: u8) {
        // A console write failure (closed stdout) must not kill the guest.
        if let Err(e) = self.uart.write(offset as u8, value) {
            tracing::debug!("serial write: {e:?}");
        }
    }

    /// Output that reached the VMM other than through the transmit
    /// register (the console doorbell): same sink, same text.
    pub fn write_console(&mut self, bytes: &[u8]) {
        use std::io::Write;
        if let Err(e) = self.uart.writer_mut().write_all(bytes) {
            tracing::debug!("console write: {e:?}");
        }
    }

    pub fn flush(&mut self) {
        use std::io::Write;
        let _ = self.uart.writer_mut().flush();
    }

    pub fn state(&self) -> vm_superio::serial::SerialState {
        self.uart.state()
    }
}
