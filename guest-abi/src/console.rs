//! The console doorbell (docs/guest-abi.md, "Console records"): the guest
//! puts a line of console output in a record in its own RAM and rings
//! the doorbell once with the record's address, instead of one port
//! write (one VM exit) per byte on the UART.

use core::mem::{offset_of, size_of};

use crate::port::IOMAP_PORTS;

/// A 32-bit `out` here carries the guest-physical address of a
/// [`ConsoleRecord`]; a 32-bit `in` answers [`CONSOLE_PRESENT`] when the
/// VMM drains records (all ones when nothing claims the port, e.g. QEMU).
pub const CONSOLE_PORT: u16 = 0x0df8;
/// A 32-bit `out` here prints a record like [`CONSOLE_PORT`], then
/// acknowledges the last command like an `AC` write: a line that answers a
/// command and its acknowledgement in one exit.
pub const CONSOLE_ACK_PORT: u16 = 0x0dfc;
/// `"CONS"`: what an `in` from [`CONSOLE_PORT`] reads under a vmfork VMM.
pub const CONSOLE_PRESENT: u32 = 0x434f_4e53;
/// Most bytes one record carries; longer output takes several records.
pub const CONSOLE_RECORD_BYTES: usize = 508;

/// One piece of console output, anywhere in guest RAM (the doorbell names
/// its address, so it must lie below 4 GiB). All fields little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConsoleRecord {
    /// How many of `bytes` to print, at most [`CONSOLE_RECORD_BYTES`];
    /// the VMM reads no further than that.
    pub len: u32,
    /// The text, printed as it is (lines end with `\n`).
    pub bytes: [u8; CONSOLE_RECORD_BYTES],
}

/// Offset of [`ConsoleRecord::bytes`].
pub const CONSOLE_RECORD_DATA: usize = offset_of!(ConsoleRecord, bytes);
/// Size of a whole [`ConsoleRecord`].
pub const CONSOLE_RECORD_SIZE: usize = size_of::<ConsoleRecord>();

const _: () = {
    assert!(CONSOLE_PORT < IOMAP_PORTS && CONSOLE_ACK_PORT < IOMAP_PORTS);
    assert!(offset_of!(ConsoleRecord, len) == 0);
    assert!(CONSOLE_RECORD_DATA == 4);
    assert!(CONSOLE_RECORD_SIZE == 512);
};
