//! What the boot hands the module runner (run.rs) across the stack switch
//! (cpu.rs): a leaf module, so neither of the two depends on the other.

use crate::Options;

pub struct Job {
    /// (address, size) of the `.cwasm` in guest RAM.
    pub module: (u64, u64),
    pub opts: Options,
    pub boot_tsc: u64,
}
