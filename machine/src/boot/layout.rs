//! pc-lite guest physical memory layout. Everything the VMM writes into a
//! guest before its first instruction has a fixed home here.

/// Boot GDT (see gdt.rs for its entries).
pub const BOOT_GDT_START: u64 = 0x500;
/// An empty IDT: the kernel installs its own before it enables interrupts.
pub const BOOT_IDT_START: u64 = 0x540;
/// The clone-info page (docs/guest-abi.md): written by the VMM before a
/// restored or cloned guest resumes; reserved in the e820 map.
pub const CLONE_INFO_START: u64 = vmfork_guest_abi::CLONE_INFO_ADDR;
/// PVH `hvm_start_info` and its memory map follow it.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Linux `boot_params` (the zero page) for bzImage and 64-bit ELF entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer for the 64-bit entry; grows down below the page tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT and four PDs (2 MiB pages, 4 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
pub const PD_COUNT: u64 = 4;
/// Kernel command line, NUL-terminated.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Start of the EBDA, where the MP table lives (Linux scans it for "_MP_").
pub const EBDA_START: u64 = 0x9fc00;
/// End of conventional low memory usable by the guest.
pub const LOW_RAM_END: u64 = 0xa0000;
/// Kernels load at 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole (IOAPIC at 0xfec00000, LAPIC at 0xfee00000) runs
/// from here to 4 GiB; RAM above it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const APIC_ADDR: u64 = 0xfee0_0000;
/// Persistent memory (the DAX rootfs) is placed above RAM at this alignment;
/// Linux's memremap_pages wants at least section (128 MiB) alignment.
pub const PMEM_ALIGN: u64 = 1 << 30;
/// e820 type for legacy persistent memory ("PRAM").
pub const E820_PMEM: u32 = 12;
pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

// The fixed boot structures must not overlap; checked at compile time.
const _: () = {
    assert!(BOOT_GDT_START + 5 * 8 <= BOOT_IDT_START);
    assert!(BOOT_IDT_START + 8 <= CLONE_INFO_START);
    assert!(CLONE_INFO_START + 4096 <= PVH_INFO_START);
    assert!(PVH_MEMMAP_START + 128 * 24 <= ZERO_PAGE_START);
    assert!(ZERO_PAGE_START + 4096 <= BOOT_STACK_POINTER);
    assert!(BOOT_STACK_POINTER < PML4_START);
    assert!(PD_START + PD_COUNT * 0x1000 <= CMDLINE_START);
    assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    assert!(EBDA_START < LOW_RAM_END && LOW_RAM_END <= HIMEM_START);
};
