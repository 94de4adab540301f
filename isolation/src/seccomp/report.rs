//! What happens when a thread breaks its filter: the kernel stops the
//! system call and raises SIGSYS in that thread (SECCOMP_RET_TRAP); this
//! handler writes one line naming the thread, its list and the call, and
//! ends the process with its own exit status. A bare SIGSYS death (what
//! SECCOMP_RET_KILL_PROCESS gives) tells a user nothing.
//!
//! The handler only reads thread-local and static data and makes two
//! system calls, write(2) and exit_group(2), which every list allows: a
//! call the filter refused inside the handler would find SIGSYS blocked,
//! and the kernel would then kill the process with no message at all.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

use super::names;
use super::ThreadKind;
use crate::error::{Error, Result, EXIT_SECCOMP};

/// Who this thread is, for the report; set when the thread installs its
/// filter. Plain bytes so the handler can read it without allocating.
#[derive(Clone, Copy)]
struct Label {
    kind: &'static str,
    name: [u8; 16],
    name_len: usize,
}

thread_local! {
    // const-initialised with no destructor: reading it is a plain TLS load,
    // safe in a signal handler.
    static LABEL: Cell<Label> = const {
        Cell::new(Label { kind: "", name: [0; 16], name_len: 0 })
    };
}

/// Records the calling thread's name and list for a later report.
pub fn set_label(kind: ThreadKind) {
    let mut label = Label {
        kind: kind.name(),
        name: [0; 16],
        name_len: 0,
    };
    let current = std::thread::current();
    // The main thread has no name of its own in std.
    let name = current.name().unwrap_or("main").as_bytes();
    label.name_len = name.len().min(label.name.len());
    label.name[..label.name_len].copy_from_slice(&name[..label.name_len]);
    LABEL.with(|l| l.set(label));
}

/// The SIGSYS part of siginfo_t on x86_64 (`_sigsys` in the kernel's
/// include/uapi/asm-generic/siginfo.h): after the three ints and padding
/// come the calling address, the system call number and the audit arch.
#[repr(C)]
struct SigsysInfo {
    _signo: libc::c_int,
    _errno: libc::c_int,
    _code: libc::c_int,
    _call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    _arch: libc::c_uint,
}

/// A fixed-size line built without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, mut value: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

/// The one line a violation prints (without its newline).
fn message(label: &Label, syscall: i64) -> Line {
    let mut line = Line {
        buf: [0; 256],
        len: 0,
    };
    // A thread that never installed a list of its own runs under the one
    // it inherited, and has no label.
    let (name, kind): (&[u8], &[u8]) = match label.kind {
        "" => (b"(unlabelled)", b"inherited"),
        kind => (&label.name[..label.name_len], kind.as_bytes()),
    };
    line.push(b"vmfork: error: seccomp: thread ");
    line.push(name);
    line.push(b" (");
    line.push(kind);
    line.push(b" list) made forbidden system call ");
    match u64::try_from(syscall) {
        Ok(nr) => line.push_number(nr),
        Err(_) => line.push(b"(negative)"),
    }
    if let Some(name) = names::name(syscall) {
        line.push(b" (");
        line.push(name.as_bytes());
        line.push(b")");
    }
    line.push(b"; stopped with exit status ");
    line.push_number(EXIT_SECCOMP as u64);
    line.push(b" (docs/seccomp.md)\n");
    line
}

/// Set by the first thread to report a violation.
static REPORTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers,
    // and for SIGSYS its union holds `_sigsys` at this layout.
    let syscall = unsafe { (*info.cast::<SigsysInfo>()).syscall };
    let label = LABEL.try_with(Cell::get).unwrap_or(Label {
        kind: "",
        name: [0; 16],
        name_len: 0,
    });
    let line = message(&label, i64::from(syscall));
    // One report per process: when two threads break their lists at once
    // (two vCPUs, say), the later one waits, without a system call, for
    // the first one's exit instead of printing a second line or ending
    // the process before that line is out.
    if REPORTED.swap(true, Ordering::AcqRel) {
        loop {
            std::hint::spin_loop();
        }
    }
    // SAFETY: write(2) from a live buffer and _exit(2): both are
    // async-signal-safe, and every list allows them.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_SECCOMP);
    }
}

/// Reports a call the filter refused with an errno instead of a SIGSYS
/// (refuse.rs) as the handler reports a trapped one, and ends the process
/// the same way. Only the test hook calls it.
pub fn refused(syscall: i64) -> ! {
    let label = LABEL.try_with(Cell::get).unwrap_or(Label {
        kind: "",
        name: [0; 16],
        name_len: 0,
    });
    let line = message(&label, syscall);
    // SAFETY: write(2) from a live buffer and _exit(2), as in on_sigsys.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::_exit(EXIT_SECCOMP);
    }
}

/// Installs the SIGSYS handler for the whole process, once, before any
/// filter exists.
pub fn install_handler() -> Result<()> {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is
    // an extern "C" fn with the SA_SIGINFO signature and lives forever.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(Error::Seccomp(format!(
            "installing the SIGSYS handler: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_is_one_line_naming_thread_list_and_call() {
        let mut label = Label {
            kind: "vcpu",
            name: [0; 16],
            name_len: 5,
        };
        label.name[..5].copy_from_slice(b"vcpu0");
        let line = message(&label, libc::SYS_socket);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap_or_default();
        assert_eq!(
            text,
            "vmfork: error: seccomp: thread vcpu0 (vcpu list) made forbidden system call 41 \
(socket); stopped with exit status 18 (docs/seccomp.md)\n"
        );
        let unknown = message(&label, 9999);
        let text = std::str::from_utf8(&unknown.buf[..unknown.len]).unwrap_or_default();
        assert!(text.contains("system call 9999;"), "{text}");
    }
}
