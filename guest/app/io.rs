//! Port I/O from ring 3 (RFLAGS.IOPL=3: each access is one VM exit and no
//! trip through the emulated ring 0) and the ring-0 service call.

use core::arch::asm;
use core::fmt;

use crate::abi::{
    EXIT_TAG, PANIC_TAG, QEMU_EXIT_CRASH, QEMU_EXIT_PORT, READY_PORT, SERIAL_PORT, SVC_HALT,
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

/// The UART's transmit register, written without polling: the VMM's UART
/// is always ready, and polling LSR would double the exits.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            outb(SERIAL_PORT, b);
        }
        Ok(())
    }
}

/// Prints one line on the serial console.
macro_rules! say {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::io::Serial, $($arg)*);
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
