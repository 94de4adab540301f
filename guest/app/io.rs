//! Port I/O from ring 3 (RFLAGS.IOPL=3: each access is one VM exit and no
//! trip through the emulated ring 0) and the ring-0 service call.

use core::arch::asm;
use core::fmt;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::abi::{
    ConsoleRecord, CONSOLE_ACK_PORT, CONSOLE_PORT, CONSOLE_PRESENT, CONSOLE_RECORD_BYTES, EXIT_TAG, PANIC_TAG,
    QEMU_EXIT_CRASH, QEMU_EXIT_PORT, READY_PORT, SERIAL_PORT, SVC_HALT,
};

// No `nomem` on the port accesses: they double as compiler barriers, so
// memory the VMM may inspect at an exit (a snapshot) is up to date.
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no memory; the TSS bitmap opens ports
    // below 0x1000 to ring 3, so no port here faults.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack, preserves_flags)) }
}

#[inline(always)]
pub fn outl(port: u16, value: u32) {
    // SAFETY: port I/O touches no memory; the TSS bitmap opens ports
    // below 0x1000 to ring 3, so no port here faults.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack, preserves_flags))
    }
}

#[inline(always)]
pub fn outw(port: u16, value: u16) {
    // SAFETY: port I/O touches no memory; the TSS bitmap opens ports
    // below 0x1000 to ring 3, so no port here faults.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nostack, preserves_flags)) }
}

#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: port I/O touches no memory; the TSS bitmap opens ports
    // below 0x1000 to ring 3, so no port here faults.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nostack, preserves_flags)) }
    value
}

#[inline(always)]
pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: port I/O touches no memory; the TSS bitmap opens ports
    // below 0x1000 to ring 3, so no port here faults.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nostack, preserves_flags)) }
    value
}

#[inline(always)]
pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: port I/O touches no memory; the TSS bitmap opens ports
    // below 0x1000 to ring 3, so no port here faults.
    unsafe {
        asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack, preserves_flags))
    }
    value
}

#[inline(always)]
pub fn rdtsc() -> u64 {
    // SAFETY: RDTSC reads a counter; CR4.TSD is clear, so ring 3 may.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Calls ring-0 service `number` (ring0/cpu.S service_gate).
pub fn service(number: u64, arg: u64) -> u64 {
    let result: u64;
    // SAFETY: the gate preserves everything but the C ABI's scratch
    // registers, which are declared clobbered here.
    unsafe {
        asm!(
            "int3",
            inlateout("rax") number => result,
            inlateout("rdi") arg => _,
            out("rcx") _, out("rdx") _, out("rsi") _,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
        );
    }
    result
}

/// Whether the VMM drains console records (docs/guest-abi.md, "Console
/// records"). Until [`probe_console`] says so, and under QEMU, lines go
/// to the UART. Kept in guest memory, so clones inherit it.
static CONSOLE_RECORDS: AtomicBool = AtomicBool::new(false);

/// One exit, once per boot: asks the VMM whether it takes console records.
pub fn probe_console() {
    CONSOLE_RECORDS.store(inl(CONSOLE_PORT) == CONSOLE_PRESENT, Ordering::Relaxed);
}

/// One line of console output, gathered in a record on the stack and
/// handed over in one exit (the console doorbell) instead of one exit per
/// byte on the UART: about 27 us per byte on a PVM host.
pub struct Line {
    record: ConsoleRecord,
}

impl Line {
    pub fn new() -> Line {
        Line {
            record: ConsoleRecord {
                len: 0,
                bytes: [0; CONSOLE_RECORD_BYTES],
            },
        }
    }

    /// Adds `bytes` to the line, printing each full record as it fills.
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            let len = self.record.len as usize;
            if len == CONSOLE_RECORD_BYTES {
                self.flush();
                continue;
            }
            let n = rest.len().min(CONSOLE_RECORD_BYTES - len);
            self.record.bytes[len..len + n].copy_from_slice(&rest[..n]);
            self.record.len += n as u32;
            rest = &rest[n..];
        }
    }

    /// Prints what is gathered so far.
    pub fn flush(&mut self) {
        self.ring(CONSOLE_PORT);
    }

    /// Prints what is gathered so far and acknowledges the last command in
    /// the same exit, when the VMM takes records; returns whether it did
    /// (else the caller still owes the acknowledgement).
    pub fn flush_and_ack(&mut self) -> bool {
        self.record.len > 0 && self.ring(CONSOLE_ACK_PORT)
    }

    /// Rings `doorbell` with the record, or prints it on the UART where
    /// the VMM takes no records; returns whether the doorbell rang.
    fn ring(&mut self, doorbell: u16) -> bool {
        let len = self.record.len as usize;
        if len == 0 {
            return false;
        }
        let at = (&raw const self.record) as u64;
        // Identity mapped, so the record's address is its guest-physical
        // one; the doorbell carries 32 bits of it.
        let rang = match u32::try_from(at) {
            Ok(at) if CONSOLE_RECORDS.load(Ordering::Relaxed) => {
                outl(doorbell, at);
                true
            }
            _ => {
                // The UART's transmit register, written without polling:
                // the VMM's UART is always ready, and polling LSR would
                // double the exits.
                for &b in &self.record.bytes[..len] {
                    outb(SERIAL_PORT, b);
                }
                false
            }
        };
        self.record.len = 0;
        rang
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Prints one line on the console: one exit for the whole line.
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let mut line = $crate::io::Line::new();
        let _ = writeln!(line, $($arg)*);
        line.flush();
    }};
}
pub(crate) use say;

/// Stops the vCPU for good. Only reached when no VMM acted on the ready
/// port or QEMU's exit port.
pub fn halt() -> ! {
    service(SVC_HALT, 0);
    loop {
        core::hint::spin_loop();
    }
}

/// "EX" + status: the VMM stops the VM. Under QEMU, isa-debug-exit ends it
/// with status (status << 1) | 1.
pub fn exit(status: u8) -> ! {
    outl(READY_PORT, EXIT_TAG | u32::from(status));
    outl(QEMU_EXIT_PORT, u32::from(status));
    halt()
}

/// "PN" + code, after the caller printed the details.
pub fn crash(code: u32) -> ! {
    outl(READY_PORT, PANIC_TAG | (code & 0xff));
    outl(QEMU_EXIT_PORT, QEMU_EXIT_CRASH);
    halt()
}
