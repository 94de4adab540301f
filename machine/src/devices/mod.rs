//! pc-lite's devices: a UART, the console doorbell, the ready port, an
//! empty PCI bus (a host bridge, for distribution kernels: pci_host.rs),
//! and what it takes to notice a guest resetting the machine. Nothing else;
//! every other port and unbacked MMIO access is unclaimed (unclaimed.rs
//! has the policy).

pub mod console;
pub mod console_doorbell;
pub mod pci_host;
pub mod ready_port;
pub mod serial;
pub mod unclaimed;

use vm_memory::GuestMemory;

use console_doorbell::CONSOLE_PORT;
use pci_host::{PciHostBridge, PciHostEvent};
use serial::{SerialPort, COM1_BASE, COM1_LEN};
use unclaimed::{Access, UnclaimedAccesses, UnclaimedCounts};

/// i8042 command port: writing 0xfe pulses the CPU reset line.
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_RESET_CPU: u8 = 0xfe;

/// Platform events a port write can raise, decided by the vCPU loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformEvent {
    /// The guest pulsed the reset line; the string names how.
    ResetRequested(&'static str),
}

/// Port I/O other than the ready port, which the vCPU loop handles itself
/// because it can park the vCPU, and MMIO exits (pc-lite has no MMIO
/// device, so all of them are unclaimed). One per VM: a guest flooding
/// it contends with no other VM.
pub struct PortIoBus {
    pub serial: SerialPort,
    pub pci_host: PciHostBridge,
    unclaimed: UnclaimedAccesses,
}

impl PortIoBus {
    /// A bus for a machine at power-on.
    pub fn new(serial: SerialPort) -> Self {
        Self::restored(serial, PciHostBridge::default())
    }

    /// A bus around restored devices.
    pub fn restored(serial: SerialPort, pci_host: PciHostBridge) -> Self {
        PortIoBus {
            serial,
            pci_host,
            unclaimed: UnclaimedAccesses::default(),
        }
    }

    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port) {
            if let Some(first) = data.first_mut() {
                *first = self.serial.read(port - COM1_BASE);
            }
            return;
        }
        if port == CONSOLE_PORT {
            console_doorbell::read_presence(data);
            return;
        }
        if pci_host::PORTS.contains(&port) {
            self.pci_host.read(port, data);
            return;
        }
        self.unclaimed.note(Access::PortRead(port));
        // Floating bus: reads of absent ports return all ones, as on a PC.
        data.fill(0xff);
    }

    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<PlatformEvent> {
        if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port) {
            if let Some(&b) = data.first() {
                self.serial.write(port - COM1_BASE, b);
            }
            return None;
        }
        if port == I8042_COMMAND_PORT && data.first() == Some(&I8042_RESET_CPU) {
            return Some(PlatformEvent::ResetRequested("the i8042 controller"));
        }
        if pci_host::PORTS.contains(&port) {
            return self.pci_host.write(port, data).map(|PciHostEvent::Reset| {
                PlatformEvent::ResetRequested("the reset control register (0xcf9)")
            });
        }
        // Console doorbells need guest memory: the vCPU loop hands them
        // to `console_doorbell`, so one arriving here is unclaimed.
        self.unclaimed.note(Access::PortWrite(port));
        None
    }

    /// A 32-bit `out` to CONSOLE_PORT or CONSOLE_ACK_PORT (`port`):
    /// prints the record it names on the console and returns true. A bad
    /// one (wrong width, outside RAM, too long) prints nothing, counts as
    /// an unclaimed port write and returns false.
    pub fn console_doorbell<M: GuestMemory>(&mut self, port: u16, data: &[u8], mem: &M) -> bool {
        match console_doorbell::read_record(data, mem) {
            Ok(record) => {
                self.serial.write_console(record.bytes());
                true
            }
            Err(why) => {
                tracing::debug!("bad console doorbell on {port:#x}: {why:?}");
                self.unclaimed.note(Access::PortWrite(port));
                false
            }
        }
    }

    /// A read of guest-physical memory KVM has no slot for: all ones, as
    /// a PC's bus answers for nothing there.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.unclaimed.note(Access::MmioRead(addr));
        data.fill(0xff);
    }

    /// A write to unbacked or read-only (the rootfs) guest-physical
    /// memory: dropped.
    pub fn mmio_write(&mut self, addr: u64) {
        self.unclaimed.note(Access::MmioWrite(addr));
    }

    pub fn unclaimed(&self) -> UnclaimedCounts {
        self.unclaimed.counts()
    }
}
