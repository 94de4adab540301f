//! What the in-place reset (reset.rs) and the ring-0 entry check
//! (ring0_entry.rs) both read in a template's memory file: x86 paging
//! entry bits, and where a guest-physical address lies in the file.

use vmfork_snapshot::state::MemoryState;

pub(crate) const PAGE: u64 = 4096;

/// Paging-structure entry bits.
pub(crate) const PTE_PRESENT: u64 = 1;
pub(crate) const PTE_LARGE: u64 = 1 << 7;
pub(crate) const PTE_ADDR: u64 = 0x000f_ffff_ffff_f000;

/// The memory-file offset of a guest-physical address.
pub(crate) fn file_offset(layout: &MemoryState, gpa: u64) -> Option<u64> {
    layout
        .regions
        .iter()
        .find(|r| gpa >= r.guest_addr && gpa < r.guest_addr + r.size)
        .map(|r| r.file_offset + (gpa - r.guest_addr))
}
