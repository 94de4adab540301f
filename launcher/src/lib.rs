//! vmfork's launcher: the pc-lite VMM library behind the `vmfork` binary.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod boot;
pub mod cli;
pub mod clone;
pub mod control;
pub mod devices;
pub mod error;
pub mod floor;
pub mod isolation;
pub mod kvm_host;
pub mod machine;
pub mod memory;
pub mod persist;
pub mod seccomp;
pub mod serve;
pub mod template;
pub mod vcpu;
pub mod vm;

pub use error::{Error, Result};

/// The default guest, built from guest/ by build.rs.
pub static EMBEDDED_GUEST: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmfork-guest.elf"));
