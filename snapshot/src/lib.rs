//! vmfork's snapshot state: the one save/restore trait every stateful
//! component implements, and the on-disk state format.
#![deny(unsafe_op_in_unsafe_fn)]

mod persist;

pub use persist::Persist;
