//! The guest side of docs/guest-abi.md. Every value the VMM or ring 0
//! also knows is defined once in the vmfork-guest-abi crate (guest-abi/),
//! which guest/build.sh links in; only what lives in the guest's own
//! image is declared here.

pub use vmfork_guest_abi::*;

extern "C" {
    /// LAPIC timer ticks, incremented by ring 0 (ring0/cpu.S timer_isr).
    pub static vmfork_ticks: u64;
    /// The 2048 2 MiB page-directory entries that identity-map the low
    /// 4 GiB (ring0/boot.S); user-accessible like everything else.
    pub static mut vmfork_pd: [u64; 2048];
    /// The boot page tables' PML4 (ring0/boot.S).
    pub static vmfork_pml4: [u64; 512];
}
