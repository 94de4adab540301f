//! Builds vmfork's Linux guest artifacts: a minimal Linux 6.12 kernel
//! (`vmlinux` + `bzImage`) and an ext4 root filesystem for DAX, each cached
//! under a directory named by a SHA-256 over everything that goes into it.
//! See docs/linux-guest.md.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod assets;
pub mod cache;
mod command;
pub mod error;
pub mod linux;
pub mod progress;
pub mod rootfs;
#[cfg(test)]
mod testutil;

pub use error::{Error, Result};

/// Part of every cache key. Bump it whenever the build steps change in a way
/// the hashed inputs do not show (a new make flag, other mkfs options), so
/// old cache entries are not mistaken for new ones.
pub const BUILDER_VERSION: &str = "vmfork-guest-artifacts/1";
