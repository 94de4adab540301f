//! Guest-physical memory the VMM reads and writes: the clone-info page and
//! the function mailbox (docs/guest-abi.md). A Linux process reaches them
//! through `/dev/mem`; the VMM's e820 map marks both reserved, which is
//! what lets `/dev/mem` (even with `STRICT_DEVMEM`) open them and keeps
//! the kernel from ever allocating them.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;

use vmfork_guest_abi as abi;

pub struct PhysMem {
    file: File,
}

impl PhysMem {
    pub fn open() -> io::Result<PhysMem> {
        let file = OpenOptions::new().read(true).write(true).open("/dev/mem")?;
        Ok(PhysMem { file })
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, addr)
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all_at(bytes, addr)
    }

    /// The clone-info record, or None when the VMM wrote none (a cold boot).
    pub fn clone_info(&self) -> io::Result<Option<abi::CloneInfo>> {
        let mut raw = [0u8; abi::CLONE_INFO_SIZE];
        self.read(abi::CLONE_INFO_ADDR, &mut raw)?;
        let u = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&raw[i..i + 8]);
            u64::from_le_bytes(w)
        };
        if u(0) != abi::CLONE_INFO_MAGIC {
            return Ok(None);
        }
        Ok(Some(abi::CloneInfo {
            magic: u(0),
            clone_id: u(8),
            host_unix_ns: u(16),
            entropy: [u(24), u(32), u(40), u(48)],
        }))
    }

    /// The request body, after checking its header (magic and length).
    pub fn request(&self) -> io::Result<Result<Vec<u8>, String>> {
        let mut header = [0u8; 8];
        self.read(abi::REQUEST_HEADER, &mut header)?;
        let magic = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if magic != abi::REQUEST_MAGIC {
            return Ok(Err(format!("bad request magic {magic:#x}")));
        }
        if len > abi::MAX_BODY {
            return Ok(Err(format!("request length {len} over {}", abi::MAX_BODY)));
        }
        let mut body = vec![0u8; len];
        self.read(abi::REQUEST_DATA, &mut body)?;
        Ok(Ok(body))
    }

    /// Writes a response: the body first, then its header, which is what
    /// the VMM checks.
    pub fn respond(&self, status: u32, body: &[u8], invocations: u32) -> io::Result<()> {
        let body = &body[..body.len().min(abi::MAX_BODY)];
        self.write(abi::RESPONSE_DATA, body)?;
        let mut header = [0u8; 16];
        for (i, w) in [abi::RESPONSE_MAGIC, body.len() as u32, status, invocations]
            .into_iter()
            .enumerate()
        {
            header[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        self.write(abi::RESPONSE_HEADER, &header)
    }
}
