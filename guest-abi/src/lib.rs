//! The guest ABI of vmfork, defined once: the contract of
//! docs/guest-abi.md between the VMM (the host crates) and the default guest
//! (`guest/`).
//!
//! Three parties read these values and used to write them out each on
//! their own: the host, the guest's ring-3 Rust app and its ring-0
//! assembly. Now the host depends on this crate, guest/build.sh compiles
//! this file with bare rustc and links it into the app, and the
//! assembly's copy (guest/ring0/guest_abi.h) is generated from it and
//! checked by `tests/asm_header.rs`. A value changes here or nowhere.
//!
//! Rules that keep that possible: `no_std`, no dependencies (the guest
//! build has no cargo), and nothing but constants, `#[repr(C)]` layouts
//! and `const fn`s.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(missing_docs)]

pub mod clone_info;
pub mod console;
pub mod exec;
pub mod functions;
pub mod mailbox;
pub mod port;
pub mod ring0;

pub use clone_info::*;
pub use console::*;
pub use exec::*;
pub use functions::*;
pub use mailbox::*;
pub use port::*;
pub use ring0::*;
