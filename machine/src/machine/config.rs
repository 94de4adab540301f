//! What a cold boot is asked for, and the limits of the machine.

use std::path::PathBuf;
use std::time::Instant;

use crate::boot::loader::{BootProtocol, KernelSource};
use crate::devices::console::Console;

/// The MP table addresses APIC IDs with one byte and 0xff is broadcast.
pub const MAX_VCPUS: u8 = 254;
/// Below 1 MiB not even the boot structures fit; whether a kernel fits
/// above them is checked when it is loaded.
pub const MIN_MEM_SIZE: u64 = 1 << 20;
pub const MAX_MEM_SIZE: u64 = 1 << 40;

pub struct MachineConfig {
    pub kernel: KernelSource,
    pub initrd: Option<PathBuf>,
    pub rootfs: Option<PathBuf>,
    pub mem_size: u64,
    pub vcpus: u8,
    pub cmdline: String,
    pub protocol: BootProtocol,
    pub console: Console,
    pub exit_on_ready: bool,
    /// Latencies (ready_us) are measured from here.
    pub started: Instant,
}
