//! Everything the VMM writes into guest memory and registers before the
//! first guest instruction. See docs/boot.md for the order.

pub mod cpu_state;
pub mod e820;
pub mod gdt;
pub mod layout;
pub mod loader;
pub mod mptable;
pub mod paging;
pub mod params;
pub mod rootfs_check;
