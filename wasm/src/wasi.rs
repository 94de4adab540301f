//! The WASI preview 1 functions the Wasm guest implements itself: what
//! wasi-libc's startup and stdio need, and the clock and randomness.
//! Shared with guest-wasm/ (`#[path]`), like engine_config.rs.

/// The module name WASI preview 1 imports come from.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// A value type in [`FUNCTIONS`]' signatures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    I32,
    I64,
}

use Ty::{I32, I64};

/// A supported function: name, parameter types, result types.
pub type Signature = (&'static str, &'static [Ty], &'static [Ty]);

/// Every function the guest provides, with its preview-1 signature.
pub const FUNCTIONS: &[Signature] = &[
    ("args_get", &[I32, I32], &[I32]),
    ("args_sizes_get", &[I32, I32], &[I32]),
    ("environ_get", &[I32, I32], &[I32]),
    ("environ_sizes_get", &[I32, I32], &[I32]),
    ("fd_read", &[I32, I32, I32, I32], &[I32]),
    ("fd_write", &[I32, I32, I32, I32], &[I32]),
    ("fd_close", &[I32], &[I32]),
    ("fd_fdstat_get", &[I32, I32], &[I32]),
    ("fd_seek", &[I32, I64, I32, I32], &[I32]),
    ("fd_prestat_get", &[I32, I32], &[I32]),
    ("fd_prestat_dir_name", &[I32, I32, I32], &[I32]),
    ("clock_time_get", &[I32, I64, I32], &[I32]),
    ("clock_res_get", &[I32, I32], &[I32]),
    ("random_get", &[I32, I32], &[I32]),
    ("proc_exit", &[I32], &[]),
    ("sched_yield", &[], &[I32]),
];

/// The signature of supported function `name`.
pub fn find(name: &str) -> Option<Signature> {
    FUNCTIONS.iter().copied().find(|f| f.0 == name)
}
