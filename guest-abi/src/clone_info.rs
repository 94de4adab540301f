//! The clone-info page (docs/guest-abi.md, "The clone-info page"): the
//! VMM writes it into a restored or cloned VM's private RAM before it
//! resumes, so every clone gets its own id, entropy and the host's time.

use core::mem::{offset_of, size_of};

/// Guest-physical address of the page; the VMM's e820 map reserves it.
pub const CLONE_INFO_ADDR: u64 = 0x5000;
/// The magic, as the bytes the VMM writes first.
pub const CLONE_INFO_MAGIC_BYTES: [u8; 8] = *b"VMFKCLON";
/// The magic as [`CloneInfo::magic`] reads it (little-endian).
pub const CLONE_INFO_MAGIC: u64 = u64::from_le_bytes(CLONE_INFO_MAGIC_BYTES);

/// The record at [`CLONE_INFO_ADDR`]; all fields little-endian.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloneInfo {
    /// [`CLONE_INFO_MAGIC`]; anything else means no record.
    pub magic: u64,
    /// 0 for `vmfork restore`, 1.. for `vmfork clone`.
    pub clone_id: u64,
    /// Host wall-clock time, ns since the Unix epoch.
    pub host_unix_ns: u64,
    /// Fresh host entropy (`getrandom`).
    pub entropy: [u64; 4],
}

/// Bytes the VMM writes.
pub const CLONE_INFO_SIZE: usize = size_of::<CloneInfo>();

const _: () = {
    assert!(offset_of!(CloneInfo, clone_id) == 8);
    assert!(offset_of!(CloneInfo, host_unix_ns) == 16);
    assert!(offset_of!(CloneInfo, entropy) == 24);
    assert!(CLONE_INFO_SIZE == 56);
    assert!(CLONE_INFO_ADDR & 0xfff == 0, "page aligned");
};
