//! The function mailbox (docs/guest-abi.md, "Functions and the mailbox"):
//! guest-physical RAM the VMM writes a request into while the vCPU is
//! stopped, and reads the response from after the guest's `AC`.
//! Everything is little-endian; the host must check every field it reads.

use core::mem::{offset_of, size_of};

/// Reserved by a guest with a function configured; its heap starts above.
pub const MAILBOX_START: u64 = 0x40_0000;
/// First byte past the mailbox.
pub const MAILBOX_END: u64 = 0x80_0000;
/// One page of header before each body.
pub const MAILBOX_HEADER_SIZE: u64 = 0x1000;

/// A [`RequestHeader`], written by the VMM.
pub const REQUEST_HEADER: u64 = MAILBOX_START;
/// The request body, up to [`MAX_BODY`] bytes.
pub const REQUEST_DATA: u64 = REQUEST_HEADER + MAILBOX_HEADER_SIZE;
/// A [`ResponseHeader`], written by the guest (after its body).
pub const RESPONSE_HEADER: u64 = 0x60_0000;
/// The response body, up to [`MAX_BODY`] bytes.
pub const RESPONSE_DATA: u64 = RESPONSE_HEADER + MAILBOX_HEADER_SIZE;
/// Largest request or response body: each half is 2 MiB, minus its
/// header page.
pub const MAX_BODY: usize = (RESPONSE_HEADER - REQUEST_DATA) as usize;

/// `b"VMRQ"`: a request is in place.
pub const REQUEST_MAGIC: u32 = u32::from_le_bytes(*b"VMRQ");
/// `b"VMRS"`: a response is in place.
pub const RESPONSE_MAGIC: u32 = u32::from_le_bytes(*b"VMRS");

/// The function's output is the body (`vmfork serve`: 200).
pub const STATUS_OK: u32 = 0;
/// The function rejected its input; the body says why (422).
pub const STATUS_REJECTED: u32 = 1;
/// Bad request header or no function configured; the body says why (400).
pub const STATUS_BAD_REQUEST: u32 = 2;

/// At [`REQUEST_HEADER`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// [`REQUEST_MAGIC`].
    pub magic: u32,
    /// Body length in bytes, at most [`MAX_BODY`].
    pub len: u32,
}

/// At [`RESPONSE_HEADER`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// [`RESPONSE_MAGIC`].
    pub magic: u32,
    /// Body length in bytes, at most [`MAX_BODY`].
    pub len: u32,
    /// One of the `STATUS_*` values.
    pub status: u32,
    /// INVOKEs this guest instance has served (1 for a fresh clone).
    pub invocations: u32,
}

/// Byte offsets in a [`ResponseHeader`], for a host reading raw bytes.
pub const RESPONSE_LEN_OFFSET: usize = offset_of!(ResponseHeader, len);
/// See [`RESPONSE_LEN_OFFSET`].
pub const RESPONSE_STATUS_OFFSET: usize = offset_of!(ResponseHeader, status);
/// See [`RESPONSE_LEN_OFFSET`].
pub const RESPONSE_INVOCATIONS_OFFSET: usize = offset_of!(ResponseHeader, invocations);

const _: () = {
    assert!(size_of::<RequestHeader>() == 8);
    assert!(size_of::<ResponseHeader>() == 16);
    assert!(MAX_BODY == 0x1f_f000);
    assert!(REQUEST_DATA + MAX_BODY as u64 <= RESPONSE_HEADER);
    assert!(RESPONSE_DATA + MAX_BODY as u64 <= MAILBOX_END);
};
