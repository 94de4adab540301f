//! Misbehaviour on purpose, for tests of the VMM: the `test=` modes and
//! the matching built-in functions (docs/guest-abi.md). Each one either
//! ends the VM (a crash, a triple fault, an exit) or never ends (a flood,
//! a storm, a hang, silence); either way the VMM must stop only this VM
//! and say why.

use core::ops::Range;
use core::ptr::{read_volatile, write_volatile};

use crate::abi::{
    CMD_NO_VMM, PANIC_GUEST_FATAL, READY_PORT, SVC_EMULATION_ERROR, SVC_INTERRUPT_STORM,
    SVC_TRIPLE_FAULT,
};
use crate::io::{crash, exit, inb, inl, inw, outb, outl, outw, rdtsc, say, service};

/// Ports the port flood uses. pc-lite has no device there, and the range
/// stays clear of what KVM's in-kernel irqchip and PIT claim (PIC 0x20 and
/// 0xa0, PIT 0x40-0x43, speaker 0x61, ELCR 0x4d0), of the i8042 reset at
/// 0x64, QEMU's isa-debug-exit at 0xf4, the UART at 0x3f8 (a dword at
/// 0x3ec still ends below it) and the ready port: every access exits to
/// the VMM as unclaimed.
pub const FLOOD_PORTS: Range<u16> = 0x100..0x3f0;

/// Guest-physical window the MMIO flood uses: inside pc-lite's 32-bit MMIO
/// gap (0xc0000000..4 GiB, never RAM), below the IOAPIC and LAPIC pages
/// the in-kernel irqchip handles, and identity mapped by ring0/boot.S.
pub const FLOOD_MMIO: Range<u64> = 0xd000_0000..0xd010_0000;
/// Not a multiple of the page size, so the flood visits every offset in a
/// page over its rounds.
const MMIO_STRIDE: u64 = 0x1008;

/// Self-IPIs per service call: big enough that ring 0 spends its time
/// taking interrupts, small enough that the first report comes quickly.
const STORM_BURST: u64 = 2000;

/// A `test=` misbehaviour from the command line (config.rs parses it).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Test {
    None,
    Panic,
    TripleFault,
    Exit(u8),
    Hang,
    EmulationError,
    /// Endless writes and reads of ports no device claims.
    PortFlood,
    /// Endless writes and reads of unbacked guest-physical addresses.
    MmioFlood,
    /// Endless bursts of self-IPIs from ring 0.
    InterruptStorm,
    /// Becomes ready, then takes commands and never acknowledges them.
    NoAck,
}

impl Test {
    pub fn name(self) -> &'static str {
        match self {
            Test::None => "none",
            Test::Panic => "panic",
            Test::TripleFault => "triple_fault",
            Test::Exit(_) => "exit",
            Test::Hang => "hang",
            Test::EmulationError => "emulation_error",
            Test::PortFlood => "port_flood",
            Test::MmioFlood => "mmio_flood",
            Test::InterruptStorm => "interrupt_storm",
            Test::NoAck => "no_ack",
        }
    }
}

/// The `test=` misbehaviours that happen before READY. `no_ack` is not
/// one of them: main runs it after READY.
pub fn before_ready(test: Test) -> ! {
    say!("vmfork-guest: test {}", test.name());
    match test {
        // #UD in ring 3; ring 0 reports it with PN 6.
        // SAFETY: ud2 raises #UD and never returns.
        Test::Panic => unsafe { core::arch::asm!("ud2", options(noreturn)) },
        Test::TripleFault => triple_fault(),
        Test::Exit(status) => exit(status),
        Test::Hang => loop {
            core::hint::spin_loop();
        },
        Test::EmulationError => {
            match service(SVC_EMULATION_ERROR, 0) {
                0 => say!("vmfork-guest: panic: xsave ran in ring 0 without an emulation error: this host runs ring 0 natively"),
                _ => say!("vmfork-guest: panic: the CPU has no XSAVE, so no emulation error can be provoked"),
            }
            crash(PANIC_GUEST_FATAL)
        }
        Test::PortFlood => port_flood(),
        Test::MmioFlood => mmio_flood(),
        Test::InterruptStorm => interrupt_storm(),
        Test::None | Test::NoAck => {
            say!(
                "vmfork-guest: panic: test {} is not a before-ready test",
                test.name()
            );
            crash(PANIC_GUEST_FATAL)
        }
    }
}

/// Ring 0 loads an empty IDT and executes ud2: #UD, #GP, #DF, shutdown.
pub fn triple_fault() -> ! {
    service(SVC_TRIPLE_FAULT, 0);
    say!("vmfork-guest: panic: the triple fault service returned");
    crash(PANIC_GUEST_FATAL)
}

/// Writes and reads every port of FLOOD_PORTS in byte, word and dword
/// widths, forever. The VMM's documented answer to an unclaimed read is
/// all ones; anything else is reported as a guest-detected fatal error,
/// so a test sees a crash instead of a timeout if the policy breaks.
pub fn port_flood() -> ! {
    let mut rounds: u64 = 0;
    loop {
        for port in FLOOD_PORTS {
            let (read, all_ones) = match port % 4 {
                0 => {
                    outl(port, 0x5a5a_5a5a);
                    (u64::from(inl(port)), 0xffff_ffff)
                }
                2 => {
                    outw(port, 0x5a5a);
                    (u64::from(inw(port)), 0xffff)
                }
                _ => {
                    outb(port, 0x5a);
                    (u64::from(inb(port)), 0xff)
                }
            };
            if read != all_ones {
                say!(
                    "vmfork-guest: panic: unclaimed port {:#x} read {:#x}, not all ones",
                    port,
                    read
                );
                crash(PANIC_GUEST_FATAL)
            }
        }
        if rounds == 0 {
            say!(
                "vmfork-guest: port flood: {} accesses to ports {:#x}..{:#x}, every read all ones; flooding on",
                2 * FLOOD_PORTS.len(),
                FLOOD_PORTS.start,
                FLOOD_PORTS.end
            );
        }
        rounds = rounds.wrapping_add(1);
    }
}

/// Writes and reads addresses across FLOOD_MMIO, forever; like the port
/// flood, every read must come back all ones.
pub fn mmio_flood() -> ! {
    let mut rounds: u64 = 0;
    loop {
        let mut addr = FLOOD_MMIO.start;
        let mut accesses = 0;
        while addr + 8 <= FLOOD_MMIO.end {
            // SAFETY: FLOOD_MMIO is identity mapped (ring0/boot.S maps the
            // first 4 GiB) and backed by no RAM, so these accesses exit to
            // the VMM and touch nothing of this program.
            let (wide, narrow) = unsafe {
                write_volatile(addr as *mut u32, 0x5a5a_5a5a);
                write_volatile(addr as *mut u8, 0x5a);
                (
                    read_volatile(addr as *const u64),
                    read_volatile(addr as *const u16),
                )
            };
            if wide != u64::MAX || narrow != u16::MAX {
                say!(
                    "vmfork-guest: panic: unbacked MMIO at {:#x} read {:#x} and {:#x}, not all ones",
                    addr,
                    wide,
                    narrow
                );
                crash(PANIC_GUEST_FATAL)
            }
            accesses += 4;
            addr += MMIO_STRIDE;
        }
        if rounds == 0 {
            say!(
                "vmfork-guest: mmio flood: {} accesses to {:#x}..{:#x}, every read all ones; flooding on",
                accesses,
                FLOOD_MMIO.start,
                FLOOD_MMIO.end
            );
        }
        rounds = rounds.wrapping_add(1);
    }
}

/// Bursts of self-IPIs from ring 0, forever (ring0/cpu.S
/// svc_interrupt_storm). The in-kernel LAPIC delivers and the guest EOIs
/// each one; the VMM sees none of it.
pub fn interrupt_storm() -> ! {
    let mut bursts: u64 = 0;
    loop {
        let start = rdtsc();
        let handled = service(SVC_INTERRUPT_STORM, STORM_BURST);
        if handled == 0 {
            say!("vmfork-guest: panic: the CPU has no x2APIC, so no interrupt storm");
            crash(PANIC_GUEST_FATAL)
        }
        if bursts == 0 {
            say!(
                "vmfork-guest: interrupt storm: {} self-IPIs sent, {} handled in {} TSC cycles; storming on",
                STORM_BURST,
                handled,
                rdtsc().wrapping_sub(start)
            );
        }
        bursts = bursts.wrapping_add(1);
    }
}

/// `test=no_ack`, after READY: takes every command off the ready port and
/// never acknowledges one, parked (no CPU) between them.
pub fn ignore_commands() -> ! {
    loop {
        if inl(READY_PORT) == CMD_NO_VMM {
            // No VMM will ever send anything (QEMU): end instead of spinning.
            exit(0)
        }
    }
}

/// Sets a software-available bit (bit 9, which the CPU ignores) in the
/// page-directory entry of the last 2 MiB below 4 GiB, which nothing uses,
/// and says whether it was already set: a guest writing its own page
/// tables, harmless to itself, that the VMM must notice before it reuses
/// the VM (`page-table-write`). A fresh clone always finds the bit clear.
pub fn mark_page_table() -> bool {
    const SOFTWARE_BIT: u64 = 1 << 9;
    // SAFETY: the entry is a u64 in the image's page tables, mapped
    // user-accessible and writable; only this vCPU runs, and the bit
    // changes no translation.
    unsafe {
        let entry = &raw mut crate::abi::vmfork_pd[2047];
        let old = core::ptr::read_volatile(entry);
        core::ptr::write_volatile(entry, old | SOFTWARE_BIT);
        old & SOFTWARE_BIT != 0
    }
}
