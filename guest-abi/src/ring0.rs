//! The interface between the guest's ring-0 assembly (guest/ring0/) and
//! its ring-3 app: service numbers and the boot info record. The VMM
//! never sees these, but the assembly and the app must agree, so they
//! are defined here and reach the assembly through the generated
//! guest/ring0/guest_abi.h (tests/asm_header.rs).

use core::mem::{offset_of, size_of};

/// Ring-0 services, called from ring 3 with `int3` and the number in RAX
/// (guest/ring0/cpu.S service_gate). Triple-faults the VM.
pub const SVC_TRIPLE_FAULT: u64 = 1;
/// Runs an instruction PVM's emulator cannot (XSAVE) in ring 0.
pub const SVC_EMULATION_ERROR: u64 = 2;
/// RDI = LAPIC timer rate in Hz (0: leave it off).
pub const SVC_TIMER_START: u64 = 3;
/// Stops the vCPU for good.
pub const SVC_HALT: u64 = 4;
/// RDI = self-IPIs to send; returns storm interrupts handled so far.
pub const SVC_INTERRUPT_STORM: u64 = 5;
/// RDI = new IA32_KERNEL_GS_BASE; returns the old one (an MSR only ring 0
/// reaches, for the `msr-write` test function).
pub const SVC_SWAP_KERNEL_GS_BASE: u64 = 6;
/// RDI = new CR3; returns the old one (page tables built at run time, for
/// the `page-table-build` test function).
pub const SVC_SWAP_CR3: u64 = 7;

/// [`BootInfo::proto`]: entered through the 64-bit Linux boot protocol;
/// `params` is the zero page.
pub const BOOT_PROTO_LINUX64: u32 = 1;
/// [`BootInfo::proto`]: entered through PVH; `params` is hvm_start_info.
pub const BOOT_PROTO_PVH: u32 = 2;

/// Filled by guest/ring0/boot.S before it enters ring 3, which gets its
/// address in RDI.
#[repr(C)]
#[derive(Debug)]
pub struct BootInfo {
    /// One of the `BOOT_PROTO_*` values.
    pub proto: u32,
    /// Zero.
    pub reserved: u32,
    /// Physical address of the Linux zero page or of the PVH hvm_start_info.
    pub params: u64,
    /// First byte past the loaded image (page aligned).
    pub image_end: u64,
}

/// Offset of [`BootInfo::proto`], for the assembly.
pub const BOOT_INFO_PROTO: usize = offset_of!(BootInfo, proto);
/// Offset of [`BootInfo::params`], for the assembly.
pub const BOOT_INFO_PARAMS: usize = offset_of!(BootInfo, params);
/// Offset of [`BootInfo::image_end`], for the assembly.
pub const BOOT_INFO_IMAGE_END: usize = offset_of!(BootInfo, image_end);
/// Size of [`BootInfo`]; boot.S checks its record against it.
pub const BOOT_INFO_SIZE: usize = size_of::<BootInfo>();
