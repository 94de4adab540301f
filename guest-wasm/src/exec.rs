//! The guest side of the exec protocol (docs/guest-abi.md, "Running a
//! command"), as the Linux agent speaks it: EXEC runs the module's
//! `_start` once, on the instance that was instantiated (and
//! pre-initialized) before READY, with the request's argv, environment
//! and stdin, and answers with its exit status and captured output.
//!
//! The request's `timeout_ms` is not enforced here: the guest has one
//! thread and no preemption (no timer, no epoch interruption), so nothing
//! could stop `_start` from inside. The VMM stops the clone at the
//! request's deadline instead (`vmfork clone`: the deadline plus a grace
//! period; `vmfork serve`: its `--timeout`), and reports the timeout
//! itself. The cwd field is accepted and ignored: there is no filesystem.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use wasmtime::{Instance, Store, Trap, WasmBacktrace};

use crate::abi::{
    ExecRequest, ExecWriter, RequestHeader, ResponseHeader, EXEC_FIELD_ARG, EXEC_FIELD_ENV,
    EXEC_FIELD_STDIN, EXEC_OUTCOME_EXITED, EXEC_OUTCOME_SPAWN_FAILED, EXEC_OUTCOME_TRAPPED,
    EXEC_RESULT_HEADER_SIZE, EXEC_STDERR_TRUNCATED, EXEC_STDOUT_TRUNCATED, MAX_BODY, REQUEST_DATA,
    REQUEST_HEADER, REQUEST_MAGIC, RESPONSE_DATA, RESPONSE_HEADER, RESPONSE_MAGIC,
    STATUS_BAD_REQUEST, STATUS_OK,
};
use crate::wasi::{Capture, ProcExit, Run, Wasi};

/// Linux's EBUSY: the instance already ran `_start`.
const EBUSY: u32 = 16;
/// Linux's ENOEXEC: the module has no `_start() -> ()`.
const ENOEXEC: u32 = 8;
/// The most a trap's report (message and backtrace) adds to stderr,
/// beyond the request's cap, so that the trap is always seen.
const TRAP_REPORT_MAX: usize = 4096;
/// The most of each stream kept whatever the request asks: both, the
/// trap report and the result header must fit the response body.
const MAX_CAP: usize = (MAX_BODY - EXEC_RESULT_HEADER_SIZE - TRAP_REPORT_MAX) / 2;

/// The outcome of one run, ready to encode.
struct Outcome {
    outcome: u32,
    value: u32,
    stdout: Capture,
    stderr: Capture,
}

/// The mailbox's response body.
fn response() -> &'static mut [u8] {
    // SAFETY: the guest got past heap::init, which keeps the whole
    // mailbox, [MAILBOX_START, MAILBOX_END), out of the heap and the
    // stack and needs RAM above MAILBOX_END and below the module, so the
    // mailbox is identity-mapped RAM nothing else in the guest refers to.
    // The response half does not overlap the request half, which
    // `request` reads; each caller drops this slice before the next one
    // is made. The VMM reads it only after the acknowledgement, an `in`
    // that is a compiler barrier.
    unsafe { core::slice::from_raw_parts_mut(RESPONSE_DATA as *mut u8, MAX_BODY) }
}

/// The request body, after checking its header's magic and length.
fn request() -> Result<&'static [u8], &'static str> {
    // SAFETY: see `response`; the VMM writes the request half only while
    // this vCPU is parked in the `in` that returned EXEC.
    let RequestHeader { magic, len } =
        unsafe { core::ptr::read_volatile(REQUEST_HEADER as *const RequestHeader) };
    if magic != REQUEST_MAGIC {
        return Err("no request in the mailbox (bad magic)");
    }
    let len = len as usize;
    if len > MAX_BODY {
        return Err("request longer than the mailbox");
    }
    // SAFETY: as above; `len` is within the request data area.
    Ok(unsafe { core::slice::from_raw_parts(REQUEST_DATA as *const u8, len) })
}

/// Writes the response header: the body is in place first, so the VMM
/// never sees a header for a body not yet written.
fn respond(status: u32, len: usize, invocations: u32) {
    let header = ResponseHeader {
        magic: RESPONSE_MAGIC,
        // len <= MAX_BODY, which fits.
        len: len as u32,
        status,
        invocations,
    };
    // SAFETY: see `response`; the header page is part of the mailbox.
    unsafe { core::ptr::write_volatile(RESPONSE_HEADER as *mut ResponseHeader, header) };
}

/// A refusal: status 2 and why, as the agent answers one.
fn refuse(why: &str, invocations: u32) {
    let body = response();
    let n = why.len().min(body.len());
    body[..n].copy_from_slice(&why.as_bytes()[..n]);
    respond(STATUS_BAD_REQUEST, n, invocations);
}

/// INVOKE (and RESUME_INVOKE's half of it): the Wasm guest has no
/// built-in functions, so it answers like the Linux agent does.
pub fn invoke(invocations: u32) {
    refuse(
        "the Wasm guest has no built-in functions; use EXEC (the exec protocol)",
        invocations,
    );
}

/// EXEC: runs the mailbox's request and writes its result; the caller
/// acknowledges. `fresh` is whether `_start` has not run yet.
pub fn exec(store: &mut Store<Wasi>, instance: &Instance, fresh: &mut bool, invocations: u32) {
    let request = match request().map(ExecRequest::parse) {
        Err(why) => return refuse(why, invocations),
        Ok(Err(e)) => return refuse(&format!("exec request: {}", e.reason()), invocations),
        Ok(Ok(request)) => request,
    };
    let cap = (request.header.output_cap as usize).min(MAX_CAP);
    let outcome = if core::mem::replace(fresh, false) {
        run(store, instance, &request, cap)
    } else {
        failed(
            EBUSY,
            "vmfork-wasm: this instance already ran _start: a clone runs one request\n",
        )
    };
    let flags = if outcome.stdout.truncated {
        EXEC_STDOUT_TRUNCATED
    } else {
        0
    } | if outcome.stderr.truncated {
        EXEC_STDERR_TRUNCATED
    } else {
        0
    };
    let written = {
        let mut w = ExecWriter::new(response());
        w.result(
            outcome.outcome,
            outcome.value,
            flags,
            &outcome.stdout.bytes,
            &outcome.stderr.bytes,
        )
        .map(|()| w.len())
    };
    match written {
        Ok(len) => respond(STATUS_OK, len, invocations),
        // Not reached: MAX_CAP leaves room for both streams at their cap.
        Err(e) => refuse(&format!("exec result: {}", e.reason()), invocations),
    }
}

fn failed(errno: u32, why: &str) -> Outcome {
    let mut stderr = Capture::new(why.len());
    stderr.bytes.extend_from_slice(why.as_bytes());
    Outcome {
        outcome: EXEC_OUTCOME_SPAWN_FAILED,
        value: errno,
        stdout: Capture::new(0),
        stderr,
    }
}

fn run(store: &mut Store<Wasi>, instance: &Instance, req: &ExecRequest, cap: usize) -> Outcome {
    let list = |kind| req.each(kind).map(<[u8]>::to_vec).collect::<Vec<_>>();
    store.data_mut().run = Run::new(
        list(EXEC_FIELD_ARG),
        list(EXEC_FIELD_ENV),
        req.one(EXEC_FIELD_STDIN).unwrap_or_default().to_vec(),
        Some((Capture::new(cap), Capture::new(cap))),
    );
    let start = instance.get_typed_func::<(), ()>(&mut *store, "_start");
    let result = match start {
        Ok(start) => start.call(&mut *store, ()),
        Err(e) => {
            return failed(
                ENOEXEC,
                &format!("vmfork-wasm: the module has no `_start() -> ()` export: {e}\n"),
            )
        }
    };
    let (outcome, value, report) = match result {
        Ok(()) => (EXEC_OUTCOME_EXITED, 0, None),
        Err(e) => match e.downcast_ref::<ProcExit>() {
            // Only the low 8 bits, as a Linux exit status.
            Some(ProcExit(code)) => (EXEC_OUTCOME_EXITED, *code as u32 & 0xff, None),
            None => (EXEC_OUTCOME_TRAPPED, 0, Some(trap_report(&e))),
        },
    };
    let run = core::mem::take(&mut store.data_mut().run);
    let (stdout, mut stderr) = run.output.unwrap_or_default();
    if let Some(report) = report {
        // Past the cap: the trap must end stderr, whatever came before.
        stderr.bytes.extend_from_slice(report.as_bytes());
    }
    Outcome {
        outcome,
        value,
        stdout,
        stderr,
    }
}

/// `vmfork-wasm: trap: MESSAGE` as the last line, after the wasm
/// backtrace Wasmtime recorded (it does by default, at little cost: the
/// frames are walked only on a trap), at most TRAP_REPORT_MAX bytes.
pub fn trap_report(e: &wasmtime::Error) -> String {
    let mut report = String::new();
    if let Some(bt) = e.downcast_ref::<WasmBacktrace>() {
        let _ = write!(report, "vmfork-wasm: wasm backtrace:\n{bt}");
        if !report.ends_with('\n') {
            report.push('\n');
        }
    }
    let mut last = String::new();
    match e.downcast_ref::<Trap>() {
        Some(trap) => {
            let _ = writeln!(last, "vmfork-wasm: trap: {trap}");
        }
        None => {
            let _ = writeln!(last, "vmfork-wasm: trap: {e:#}");
        }
    }
    let last = truncate(&last, TRAP_REPORT_MAX / 2);
    let keep = TRAP_REPORT_MAX - last.len();
    let mut out = String::from(truncate(&report, keep));
    out.push_str(last);
    out
}

/// The longest start of `s` within `max` bytes, on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
