//! Isolation of the vmfork VMM process: a seccomp allow-list per thread
//! type, the jail (namespaces, pivot_root, no privileges) and cgroup
//! limits. Below every crate that runs guest code, so each can confine its
//! own threads; it knows nothing of VMs.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cgroup;
pub mod error;
pub mod ioctls;
pub mod jail;
pub mod seccomp;

pub use error::{Error, Result};
