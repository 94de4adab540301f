//! The `vmfork` binary the shim drives: where it is, and running one of
//! its build commands to completion.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// `$VMFORK_BIN`, else `vmfork` next to this executable.
pub fn bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("VMFORK_BIN") {
        return PathBuf::from(bin);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("vmfork")))
        .unwrap_or_else(|| PathBuf::from("vmfork"))
}

/// Runs `vmfork ARGS` with no stdin and waits; a failure carries `what`
/// (the command as a person would write it) and vmfork's stderr.
pub fn build(cmd: &mut Command, what: impl FnOnce() -> String) -> Result<()> {
    let bin = PathBuf::from(cmd.get_program());
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn { bin, source })?;
    if output.status.success() {
        return Ok(());
    }
    Err(Error::Build {
        what: what(),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}
