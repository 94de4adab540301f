//! `vmfork export-guest`: write the embedded guest ELF to a file, so other
//! VMMs (QEMU in the benchmarks) can boot exactly the same image.

use std::path::PathBuf;

use clap::Args;

use vmfork_machine::error::Result;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where to write the ELF.
    pub out: PathBuf,
}

pub fn run(args: &ExportArgs) -> Result<()> {
    std::fs::write(&args.out, vmfork_machine::EMBEDDED_GUEST)?;
    Ok(())
}
