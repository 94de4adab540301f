//! Getting a vCPU thread out of KVM_RUN: a real-time signal with a no-op
//! handler makes the ioctl return EINTR.

use std::sync::OnceLock;

use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::error::{Error, Result};

fn kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the handler once per process; must run before any vCPU thread
/// can be kicked, or the default action (terminate) would apply.
pub fn install_kick_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| {
            Error::Io(std::io::Error::other(format!(
                "installing vCPU kick handler: {e}"
            )))
        })
}

/// Sends the kick signal to a thread. A signal that lands just before the
/// thread enters KVM_RUN is lost, so callers repeat until the thread ends.
pub fn kick(thread: libc::pthread_t) {
    // SAFETY: pthread_kill on a thread that has not been joined (one of
    // its own) or that cannot have ended (a runner, kept alive by its pool
    // for as long as the caller holds the VcpuThread).
    unsafe {
        libc::pthread_kill(thread, kick_signal());
    }
}
