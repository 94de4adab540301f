//! Built-in functions and the guest side of the function mailbox
//! (docs/guest-abi.md, "Functions and the mailbox"). The VMM writes a
//! request into the mailbox while the vCPU is parked, completes the parked
//! `in` with INVOKE, and reads the response after the guest's `AC`.

use core::sync::atomic::{AtomicU32, Ordering};

use crate::abi::{
    RequestHeader, ResponseHeader, MAX_BODY, REQUEST_DATA, REQUEST_HEADER, REQUEST_MAGIC,
    RESPONSE_DATA, RESPONSE_HEADER, RESPONSE_MAGIC, STATUS_BAD_REQUEST, STATUS_OK,
    STATUS_REJECTED,
};
use crate::vcpu_state::{self, Cursor};
use crate::{json, misbehave, sha256};

/// The built-in functions are named once, in guest-abi, for the VMM to
/// check `--function` against; what each does is here.
pub use crate::abi::BuiltinFunction as Function;

/// INVOKEs served since boot. It lives in guest memory, so a template
/// taken before any request hands every clone a count of zero.
static INVOCATIONS: AtomicU32 = AtomicU32::new(0);

/// Serves one INVOKE: reads the request, runs `function`, writes the
/// response (body first, header last). Returns whether the caller should
/// acknowledge: true once the response is in place, false for `no-ack`,
/// which writes nothing.
pub fn invoke(function: Option<Function>) -> bool {
    if function == Some(Function::NoAck) {
        return false;
    }
    let invocations = INVOCATIONS.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    // SAFETY: with a function configured, main checked that RAM covers
    // [MAILBOX_START, MAILBOX_END) and put nothing else there; the range
    // is identity mapped and user-accessible, and the request and
    // response halves do not overlap. The VMM writes it only while this
    // vCPU is parked in the `in` that returned INVOKE (a compiler barrier).
    let response = unsafe { core::slice::from_raw_parts_mut(RESPONSE_DATA as *mut u8, MAX_BODY) };
    let (status, len) = match (function, request()) {
        (None, _) => message(response, STATUS_BAD_REQUEST, b"no function configured"),
        (Some(_), Err(why)) => message(response, STATUS_BAD_REQUEST, why.as_bytes()),
        (Some(f), Ok(body)) => run(f, body, response, invocations),
    };
    let header = ResponseHeader {
        magic: RESPONSE_MAGIC,
        len: len as u32,
        status,
        invocations,
    };
    // SAFETY: as above; the header page is part of the mailbox.
    unsafe { core::ptr::write_volatile(RESPONSE_HEADER as *mut ResponseHeader, header) };
    true
}

fn request() -> Result<&'static [u8], &'static str> {
    // SAFETY: see `invoke`.
    let RequestHeader { magic, len } =
        unsafe { core::ptr::read_volatile(REQUEST_HEADER as *const RequestHeader) };
    if magic != REQUEST_MAGIC {
        return Err("no request in the mailbox (bad magic)");
    }
    let len = len as usize;
    if len > MAX_BODY {
        return Err("request longer than the mailbox");
    }
    // SAFETY: see `invoke`; len is within the request data area.
    Ok(unsafe { core::slice::from_raw_parts(REQUEST_DATA as *const u8, len) })
}

fn message(response: &mut [u8], status: u32, text: &[u8]) -> (u32, usize) {
    response[..text.len()].copy_from_slice(text);
    (status, text.len())
}

fn run(function: Function, body: &[u8], response: &mut [u8], invocations: u32) -> (u32, usize) {
    match function {
        Function::Echo => {
            response[..body.len()].copy_from_slice(body);
            (STATUS_OK, body.len())
        }
        Function::Sha256 => {
            let mut hex = [0u8; 64];
            sha256::hex(&sha256::digest(body), &mut hex);
            message(response, STATUS_OK, &hex)
        }
        Function::JsonUpper => match json::upper(body, response) {
            Ok(len) => (STATUS_OK, len),
            Err(why) => message(response, STATUS_REJECTED, why.as_bytes()),
        },
        Function::Counter => {
            let mut digits = [0u8; 10];
            let mut n = invocations;
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            message(response, STATUS_OK, &digits[at..])
        }
        // SAFETY: ud2 raises #UD, which ring 0 reports as a crash; it
        // never returns.
        Function::Crash => unsafe { core::arch::asm!("ud2", options(noreturn)) },
        Function::Spin => loop {
            core::hint::spin_loop();
        },
        Function::TripleFault => misbehave::triple_fault(),
        Function::PortFlood => misbehave::port_flood(),
        Function::MmioFlood => misbehave::mmio_flood(),
        Function::InterruptStorm => misbehave::interrupt_storm(),
        Function::PageTableWrite => {
            let was_set = misbehave::mark_page_table();
            message(response, STATUS_OK, if was_set { b"marked" } else { b"clean" })
        }
        Function::PageTableBuild => written(response, vcpu_state::page_table_build),
        Function::MsrWrite => written(response, vcpu_state::msr_write),
        Function::FpuWrite => written(response, vcpu_state::fpu_write),
        // Handled in `invoke` before anything is read or written.
        Function::NoAck => message(response, STATUS_BAD_REQUEST, b"no-ack answered"),
    }
}

/// An OK response of what `f` writes.
fn written(response: &mut [u8], f: fn(&mut Cursor)) -> (u32, usize) {
    let mut out = Cursor {
        buf: response,
        len: 0,
    };
    f(&mut out);
    (STATUS_OK, out.len)
}
