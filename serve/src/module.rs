//! A WebAssembly function's template for a deploy (vmfork-wasm builds it:
//! docs/wasm.md), within the function's limits.

use std::path::Path;
use std::time::Duration;

use super::registry::FunctionLimits;
use vmfork_machine::devices::console::Console;
use vmfork_machine::error::{Error, Result};
use vmfork_wasm::template::{build_template as build_wasm, WasmTemplate};

/// How long a module may take to load and initialize at deploy.
const INIT_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the template; a module at fault (not Wasm, bad imports, a trap
/// while initializing) is an `InvalidArgument` (the deployer gets 422).
pub fn build_template(
    name: &str,
    module: &[u8],
    limits: &FunctionLimits,
    out: &Path,
) -> Result<()> {
    let template = WasmTemplate {
        module,
        name,
        mem_size: limits.memory,
        timeout: INIT_TIMEOUT,
        console: Console::Discard,
    };
    build_wasm(template, out, |_| {}, |_| {})
        .map(|_| ())
        .map_err(Error::from)
}
