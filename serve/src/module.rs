//! A WebAssembly function's template: the module checked and compiled,
//! the Wasm guest booted with it and snapshotted at its ready point
//! (docs/wasm.md).

use std::path::Path;

use super::registry::FunctionLimits;
use vmfork_machine::error::{Error, Result};

pub fn build_template(_module: &[u8], _limits: &FunctionLimits, _out: &Path) -> Result<()> {
    Err(Error::InvalidArgument(
        "this vmfork has no WebAssembly engine yet".into(),
    ))
}
