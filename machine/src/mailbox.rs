//! The host side of the guest's function mailbox (docs/guest-abi.md,
//! "Functions and the mailbox"): the VMM writes a request into a clone's
//! RAM before it runs the function and reads the response after the
//! guest's acknowledgement. Everything read back is guest-controlled and
//! checked: magic, length bounds, status.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::error::{Error, Result};

// The layout is defined once, for host and guest, in vmfork-guest-abi.
pub use vmfork_guest_abi::{
    CMD_INVOKE, CMD_RESUME_INVOKE, MAX_BODY, REQUEST_DATA, REQUEST_HEADER, RESPONSE_DATA,
    RESPONSE_HEADER,
};
use vmfork_guest_abi::{
    REQUEST_MAGIC, RESPONSE_MAGIC, STATUS_BAD_REQUEST, STATUS_OK, STATUS_REJECTED,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// The function rejected its input; the body is its message.
    Rejected,
    /// The guest found the request malformed, or has no function.
    BadRequest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub body: Vec<u8>,
    /// INVOKEs this guest instance has served (1 for a fresh clone).
    pub invocations: u32,
}

fn mem_err(e: vm_memory::GuestMemoryError) -> Error {
    Error::GuestMemory(format!("mailbox: {e}"))
}

pub fn write_request(mem: &GuestMemoryMmap, body: &[u8]) -> Result<()> {
    if body.len() > MAX_BODY {
        return Err(Error::InvalidArgument(format!(
            "request of {} bytes exceeds the mailbox's {MAX_BODY}",
            body.len()
        )));
    }
    mem.write_slice(body, GuestAddress(REQUEST_DATA))
        .map_err(mem_err)?;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&REQUEST_MAGIC.to_le_bytes());
    header[4..].copy_from_slice(&(body.len() as u32).to_le_bytes());
    mem.write_slice(&header, GuestAddress(REQUEST_HEADER))
        .map_err(mem_err)
}

/// Reads and checks what the guest wrote; a malicious guest can put
/// anything here, so every field is validated before use.
pub fn read_response(mem: &GuestMemoryMmap) -> Result<Response> {
    let mut header = [0u8; 16];
    mem.read_slice(&mut header, GuestAddress(RESPONSE_HEADER))
        .map_err(mem_err)?;
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (magic, len, status, invocations) = (word(0), word(4) as usize, word(8), word(12));
    let bad = |why: String| Error::GuestCrash(format!("the guest's response is malformed: {why}"));
    if magic != RESPONSE_MAGIC {
        return Err(bad(format!("magic {magic:#x}")));
    }
    if len > MAX_BODY {
        return Err(bad(format!("length {len} over {MAX_BODY}")));
    }
    let status = match status {
        STATUS_OK => Status::Ok,
        STATUS_REJECTED => Status::Rejected,
        STATUS_BAD_REQUEST => Status::BadRequest,
        other => return Err(bad(format!("status {other}"))),
    };
    let mut body = vec![0u8; len];
    mem.read_slice(&mut body, GuestAddress(RESPONSE_DATA))
        .map_err(mem_err)?;
    Ok(Response {
        status,
        body,
        invocations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("memory")
    }

    fn put_response(mem: &GuestMemoryMmap, magic: u32, len: u32, status: u32, body: &[u8]) {
        let mut h = Vec::new();
        for w in [magic, len, status, 1] {
            h.extend_from_slice(&w.to_le_bytes());
        }
        mem.write_slice(&h, GuestAddress(RESPONSE_HEADER))
            .expect("header");
        mem.write_slice(body, GuestAddress(RESPONSE_DATA))
            .expect("body");
    }

    #[test]
    fn request_lands_where_the_guest_reads_it() {
        let mem = memory();
        write_request(&mem, b"hello").expect("write");
        let mut h = [0u8; 8];
        mem.read_slice(&mut h, GuestAddress(REQUEST_HEADER))
            .expect("read");
        assert_eq!(&h[..4], b"VMRQ");
        assert_eq!(u32::from_le_bytes([h[4], h[5], h[6], h[7]]), 5);
        assert!(write_request(&mem, &vec![0; MAX_BODY + 1]).is_err());
    }

    #[test]
    fn responses_are_validated() {
        let mem = memory();
        put_response(&mem, RESPONSE_MAGIC, 3, 0, b"abc");
        let r = read_response(&mem).expect("ok");
        assert_eq!(
            (r.status, r.body.as_slice(), r.invocations),
            (Status::Ok, &b"abc"[..], 1)
        );
        put_response(&mem, 0xdead, 3, 0, b"abc");
        assert!(read_response(&mem).is_err(), "bad magic");
        put_response(&mem, RESPONSE_MAGIC, u32::MAX, 0, b"");
        assert!(read_response(&mem).is_err(), "oversized length");
        put_response(&mem, RESPONSE_MAGIC, 0, 9, b"");
        assert!(read_response(&mem).is_err(), "unknown status");
    }
}
