//! The clone-info page (docs/guest-abi.md): what makes each restored VM
//! unique. Written into the guest's (private, copy-on-write) RAM before it
//! resumes, so it costs one private page per clone.

use std::time::{SystemTime, UNIX_EPOCH};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vmfork_machine::boot::layout::CLONE_INFO_START;
use vmfork_machine::error::{Error, Result};
use vmfork_snapshot::Persist;

const MAGIC: &[u8; 8] = &vmfork_guest_abi::CLONE_INFO_MAGIC_BYTES;
const PAGE_LEN: usize = vmfork_guest_abi::CLONE_INFO_SIZE;

/// Fresh host entropy from getrandom(2).
fn entropy() -> Result<[u8; 32]> {
    let mut buf = [0u8; 32];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most the remaining bytes into `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io(e));
        }
        filled += n as usize;
    }
    Ok(buf)
}

/// The clone-info page of a restored VM.
pub struct CloneInfo {
    pub clone_id: u64,
}

pub struct CloneInfoRestore<'a> {
    /// The restored VM's RAM, not yet seen by any vCPU.
    pub mem: &'a GuestMemoryMmap,
    /// 0 for a plain restore.
    pub clone_id: u64,
}

impl Persist for CloneInfo {
    /// Nothing: the page is written fresh by every restore, and whatever a
    /// template's page held is only part of its memory.
    type State = ();
    type RestoreArgs<'a> = CloneInfoRestore<'a>;
    type Error = Error;

    fn save(&self) -> Result<()> {
        Ok(())
    }

    /// Writes the clone id, fresh entropy and the host's wall-clock time.
    fn restore(args: CloneInfoRestore<'_>, _: &()) -> Result<CloneInfo> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        args.mem
            .write_slice(
                &page(args.clone_id, now, &entropy()?),
                GuestAddress(CLONE_INFO_START),
            )
            .map_err(|e| Error::GuestMemory(format!("writing the clone-info page: {e}")))?;
        Ok(CloneInfo {
            clone_id: args.clone_id,
        })
    }
}

/// The page's used bytes (docs/guest-abi.md): magic, clone id, host time
/// in ns since the Unix epoch, 32 bytes of entropy.
fn page(clone_id: u64, now_ns: u64, entropy: &[u8; 32]) -> [u8; PAGE_LEN] {
    let mut page = [0u8; PAGE_LEN];
    page[..8].copy_from_slice(MAGIC);
    page[8..16].copy_from_slice(&clone_id.to_le_bytes());
    page[16..24].copy_from_slice(&now_ns.to_le_bytes());
    page[24..].copy_from_slice(entropy);
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_layout() {
        let p = page(0x0102, 0x0304, &[7; 32]);
        assert_eq!(&p[..8], b"VMFKCLON");
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().expect("8")), 0x0102);
        assert_eq!(u64::from_le_bytes(p[16..24].try_into().expect("8")), 0x0304);
        assert_eq!(p[24..], [7; 32]);
    }

    #[test]
    fn restore_writes_the_page() {
        let mem =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), CLONE_INFO_START as usize + 4096)])
                .expect("map");
        let info = CloneInfo::restore(
            CloneInfoRestore {
                mem: &mem,
                clone_id: 9,
            },
            &(),
        )
        .expect("restore");
        assert_eq!(info.clone_id, 9);
        let mut p = [0u8; PAGE_LEN];
        mem.read_slice(&mut p, GuestAddress(CLONE_INFO_START))
            .expect("read");
        assert_eq!(&p[..8], MAGIC);
        assert_eq!(u64::from_le_bytes(p[8..16].try_into().expect("8")), 9);
        assert_ne!(p[24..], [0; 32]);
    }

    #[test]
    fn entropy_differs_between_calls() {
        let (a, b) = (entropy().expect("a"), entropy().expect("b"));
        assert_ne!(a, b);
    }
}
