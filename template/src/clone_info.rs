//! The clone-info page (docs/guest-abi.md): what makes each restored VM
//! unique. Written into the guest's (private, copy-on-write) RAM before it
//! resumes, so it costs one private page per clone.

use std::time::{SystemTime, UNIX_EPOCH};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use vmfork_machine::boot::layout::CLONE_INFO_START;
use vmfork_machine::error::{Error, Result};

const MAGIC: &[u8; 8] = &vmfork_guest_abi::CLONE_INFO_MAGIC_BYTES;

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

pub fn write_clone_info(mem: &GuestMemoryMmap, clone_id: u64) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut page = Vec::with_capacity(56);
    page.extend_from_slice(MAGIC);
    page.extend_from_slice(&clone_id.to_le_bytes());
    page.extend_from_slice(&now.to_le_bytes());
    page.extend_from_slice(&entropy()?);
    mem.write_slice(&page, GuestAddress(CLONE_INFO_START))
        .map_err(|e| Error::GuestMemory(format!("writing the clone-info page: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entropy_differs_between_calls() {
        let (a, b) = (entropy().expect("a"), entropy().expect("b"));
        assert_ne!(a, b);
    }
}
