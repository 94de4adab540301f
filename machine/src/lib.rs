//! The pc-lite KVM machine: the VM and its vCPUs, their run loop, boot
//! (layout, e820, page tables, MP table, loaders), devices, guest memory,
//! VM shells (VMs made ahead and reused) and each component's save and
//! restore through `vmfork_snapshot::Persist`. Templates, clones and serve
//! are built on top of it, in their own crates.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod boot;
pub mod control;
pub mod devices;
pub mod error;
pub mod exec;
pub mod floor;
pub mod kvm_host;
pub mod lambda;
pub mod machine;
pub mod mailbox;
pub mod memory;
pub mod mmu_stats;
mod paging;
pub mod persist;
pub mod reset;
pub mod ring0_entry;
pub mod shell;
pub mod stop;
pub mod units;
pub mod vcpu;
pub mod vm;

pub use error::{Error, Result};

/// The default guest, built from guest/ by build.rs.
pub static EMBEDDED_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmfork-guest.elf"));
