//! The ready port protocol (docs/guest-abi.md, "The ready/exit port"):
//! the ports, what the guest writes to them and the command words it
//! reads back.

/// The 8250 UART the guest prints on (docs/guest-abi.md, "Serial console").
pub const SERIAL_PORT: u16 = 0x3f8;
/// Carries everything between guest and VMM: 32-bit writes are the
/// tags below, a 32-bit read parks the vCPU until the VMM has a command.
pub const READY_PORT: u16 = 0x0df0;
/// A read here acknowledges the last command and then parks like a read
/// of [`READY_PORT`]: one exit where `out` AC then `in` take two.
pub const ACK_WAIT_PORT: u16 = 0x0df4;
/// QEMU's `isa-debug-exit` (`-device isa-debug-exit,iobase=0xf4,iosize=4`):
/// writing v makes QEMU exit with status (v << 1) | 1. The guest mirrors
/// its final writes there so it also ends cleanly under QEMU.
pub const QEMU_EXIT_PORT: u16 = 0xf4;
/// Written to [`QEMU_EXIT_PORT`] on a crash: QEMU then exits with 255.
pub const QEMU_EXIT_CRASH: u32 = 0x7f;
/// The guest's TSS I/O bitmap opens ports `0..IOMAP_PORTS` to ring 3:
/// PVM checks the bitmap even with IOPL=3 (docs/guest-abi.md), so every
/// port the app uses must be below it.
pub const IOMAP_PORTS: u16 = 0x1000;

const _: () = {
    assert!(SERIAL_PORT + 8 <= IOMAP_PORTS);
    assert!(READY_PORT < IOMAP_PORTS && ACK_WAIT_PORT < IOMAP_PORTS);
    assert!(QEMU_EXIT_PORT < IOMAP_PORTS);
};

/// The high half of a guest write says what it is; the low half carries
/// the argument.
pub const TAG_MASK: u32 = 0xffff_0000;
/// `"REDY"`: the guest reached its ready point.
pub const READY: u32 = 0x5245_4459;
/// `"EX"` + status (0..=255 in the low byte): exit.
pub const EXIT_TAG: u32 = 0x4558_0000;
/// `"PN"` + code (low byte): the guest crashed on exception vector `code`.
pub const PANIC_TAG: u32 = 0x504e_0000;
/// `"AC"` + the guest's command counter (low 16 bits): acknowledged.
pub const ACK_TAG: u32 = 0x4143_0000;
/// The `PN` code of a fatal error the guest detected itself rather than
/// an exception.
pub const PANIC_GUEST_FATAL: u32 = 0xff;

/// PING: print a `pong` line, acknowledge, wait again.
pub const CMD_PING: u32 = 1;
/// EXIT: the guest writes `EX` with status 0.
pub const CMD_EXIT: u32 = 2;
/// What the VMM completes a parked `in` with when it leaves it for a
/// snapshot or pause, so what a restored or cloned guest sees first.
pub const CMD_RESUMED: u32 = 3;
/// DIRTY n: write one byte in each of the first n init-heap pages. The
/// opcode is the low byte ([`CMD_OPCODE_MASK`]), n the bits from
/// [`CMD_ARG_SHIFT`] up; build one with [`dirty_command`].
pub const CMD_DIRTY: u32 = 4;
/// INVOKE: run the configured function on the mailbox's request.
pub const CMD_INVOKE: u32 = 5;
/// RESUMED, then INVOKE, acknowledged once: a clone resumed straight into
/// its request.
pub const CMD_RESUME_INVOKE: u32 = 6;
/// EXEC: run the program the mailbox's request describes (the exec
/// protocol, [`crate::exec`]) and put its result in the response. Guests
/// with an agent (the Linux guest) answer it; the default guest does not.
pub const CMD_EXEC: u32 = 7;
/// RESUMED, then EXEC, acknowledged once: a clone resumed straight into
/// its program's run, as RESUME_INVOKE is for INVOKE. Only guests known
/// to take it get it (the Wasm guest); any other gets RESUMED, then EXEC.
pub const CMD_RESUME_EXEC: u32 = 8;
/// What an `in` from an unclaimed port returns (all ones): no vmfork VMM
/// is listening, e.g. under QEMU.
pub const CMD_NO_VMM: u32 = 0xffff_ffff;

/// A parameterized command keeps its opcode in the low byte...
pub const CMD_OPCODE_MASK: u32 = 0xff;
/// ...and its argument in the bits above.
pub const CMD_ARG_SHIFT: u32 = 8;
/// DIRTY's page count must fit the 24 argument bits.
pub const DIRTY_MAX_PAGES: u32 = (1 << (32 - CMD_ARG_SHIFT)) - 1;

/// The opcode of a command word (the word itself for unparameterized ones).
pub const fn command_opcode(command: u32) -> u32 {
    command & CMD_OPCODE_MASK
}

/// The argument of a parameterized command word.
pub const fn command_arg(command: u32) -> u32 {
    command >> CMD_ARG_SHIFT
}

/// DIRTY `pages`, or None when the count does not fit.
pub const fn dirty_command(pages: u32) -> Option<u32> {
    if pages <= DIRTY_MAX_PAGES {
        Some(CMD_DIRTY | (pages << CMD_ARG_SHIFT))
    } else {
        None
    }
}
