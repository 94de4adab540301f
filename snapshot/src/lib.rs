//! vmfork's snapshot state: the one save/restore trait every stateful
//! component implements, and the on-disk state format.
#![deny(unsafe_op_in_unsafe_fn)]

mod error;
mod format;
mod persist;
pub mod state;

pub use error::{Error, Result};
pub use format::{
    decode, encode, read_from, write_to, ARCH_TAG, CHECKSUM_LEN, FORMAT_VERSION, HEADER_LEN, MAGIC,
    MAX_STATE_LEN,
};
pub use persist::Persist;
