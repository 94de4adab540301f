//! The guest side of docs/guest-abi.md, plus the ring-0 interface of
//! ring0/abi.h (service numbers, boot info). Keep both in step.

pub const SERIAL_PORT: u16 = 0x3f8;
pub const READY_PORT: u16 = 0x0df0;
/// An `in` here acknowledges the last command and parks for the next one:
/// one exit where `out` ACK then `in` from READY_PORT take two.
pub const ACK_WAIT_PORT: u16 = 0x0df4;
/// QEMU's `isa-debug-exit` (`-device isa-debug-exit,iobase=0xf4,iosize=4`):
/// writing v makes QEMU exit with status (v << 1) | 1.
pub const QEMU_EXIT_PORT: u16 = 0xf4;
/// Written to isa-debug-exit on a crash (QEMU exits with 255), as ring 0 does.
pub const QEMU_EXIT_CRASH: u32 = 0x7f;

pub const READY: u32 = 0x5245_4459;
pub const EXIT_TAG: u32 = 0x4558_0000;
pub const PANIC_TAG: u32 = 0x504e_0000;
/// PN code for a fatal error the guest detected itself (not an exception).
pub const PANIC_GUEST_FATAL: u32 = 0xff;

pub const CMD_EXIT: u32 = 2;
/// Low byte 4, pages to dirty in bits 8..32 (see docs/guest-abi.md).
pub const CMD_DIRTY: u32 = 4;
/// The command a restored or cloned guest sees first (docs/guest-abi.md).
pub const CMD_RESUMED: u32 = 3;
/// Run the configured function on the mailbox's request (docs/guest-abi.md).
pub const CMD_INVOKE: u32 = 5;
/// RESUMED, then INVOKE, acknowledged once: a clone resumed straight into
/// its request (docs/guest-abi.md).
pub const CMD_RESUME_INVOKE: u32 = 6;

/// The clone-info page: the VMM writes it before resuming a restored or
/// cloned VM, so every clone gets its own id, entropy and the host's time.
pub const CLONE_INFO_ADDR: u64 = 0x5000;
pub const CLONE_INFO_MAGIC: u64 = u64::from_le_bytes(*b"VMFKCLON");

#[repr(C)]
pub struct CloneInfo {
    pub magic: u64,
    pub clone_id: u64,
    pub host_unix_ns: u64,
    pub entropy: [u64; 4],
}

/// What an `in` from an unclaimed port returns: no vmfork VMM is listening.
pub const CMD_NO_VMM: u32 = 0xffff_ffff;

/// Ring-0 services, called with `int3` and the number in RAX.
pub const SVC_TRIPLE_FAULT: u64 = 1;
pub const SVC_EMULATION_ERROR: u64 = 2;
pub const SVC_TIMER_START: u64 = 3;
pub const SVC_HALT: u64 = 4;
/// RDI = self-IPIs to send; returns storm interrupts handled so far.
pub const SVC_INTERRUPT_STORM: u64 = 5;

pub const BOOT_PROTO_LINUX64: u32 = 1;
pub const BOOT_PROTO_PVH: u32 = 2;

/// Filled by ring0/boot.S before it enters ring 3.
#[repr(C)]
pub struct BootInfo {
    pub proto: u32,
    _reserved: u32,
    /// Physical address of the Linux zero page or of the PVH hvm_start_info.
    pub params: u64,
    /// First byte past the loaded image (page aligned).
    pub image_end: u64,
}

extern "C" {
    /// LAPIC timer ticks, incremented by ring 0 (ring0/cpu.S timer_isr).
    pub static vmfork_ticks: u64;
    /// The 2048 2 MiB page-directory entries that identity-map the low
    /// 4 GiB (ring0/boot.S); user-accessible like everything else.
    pub static mut vmfork_pd: [u64; 2048];
}
