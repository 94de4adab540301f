//! pc-lite's devices: a UART, the ready port, and what it takes to notice
//! a guest resetting the machine. Nothing else.

pub mod console;
pub mod ready_port;
pub mod serial;

use serial::{SerialPort, COM1_BASE, COM1_LEN};

/// i8042 command port: writing 0xfe pulses the CPU reset line.
const I8042_COMMAND_PORT: u16 = 0x64;
const I8042_RESET_CPU: u8 = 0xfe;

/// Platform events a port write can raise, decided by the vCPU loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformEvent {
    ResetRequested,
}

/// Port I/O other than the ready port, which the vCPU loop handles itself
/// because it can park the vCPU.
pub struct PortIoBus {
    pub serial: SerialPort,
    unknown_accesses: u64,
}

impl PortIoBus {
    pub fn new(serial: SerialPort) -> Self {
        PortIoBus {
            serial,
            unknown_accesses: 0,
        }
    }

    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        if (COM1_BASE..COM1_BASE + COM1_LEN).contains(&port) {
            if let Some(first) = data.first_mut() {
                *first = self.serial.read(port - COM1_BASE);
            }
            return;
        }
        self.note_unknown(port, "read");
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
            return Some(PlatformEvent::ResetRequested);
        }
        self.note_unknown(port, "write");
        None
    }

    fn note_unknown(&mut self, port: u16, what: &str) {
        self.unknown_accesses += 1;
        // Port 0x80 is the POST-code delay port Linux pokes constantly.
        if port != 0x80 {
            tracing::debug!("guest {what} of unclaimed port {port:#x}");
        }
    }

    pub fn unknown_accesses(&self) -> u64 {
        self.unknown_accesses
    }
}
