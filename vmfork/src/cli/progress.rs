//! Progress on long work: the shared display of the `vmfork-progress` crate
//! (progress/src/lib.rs), kept under this name for the commands' imports.

pub use vmfork_progress::{Progress, ProgressMode};
