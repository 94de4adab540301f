//! What a VM's stop means for whoever ran it: success, or the error (and
//! with it the exit status) a command reports. `vmfork boot`, `restore`,
//! `template build` and every clone of a fleet use the same words.

use crate::control::StopReason;
use crate::error::{Error, Result};

/// Turns a stop reason into the command's result. Stopping because the user
/// asked, or because the guest exited 0 or became ready with
/// --exit-on-ready, is success.
pub fn stop_result(reason: &StopReason) -> Result<()> {
    match reason {
        StopReason::ReadyReached | StopReason::Requested | StopReason::GuestExit(0) => Ok(()),
        StopReason::GuestExit(code) => Err(Error::GuestExitStatus(*code)),
        StopReason::GuestShutdown { what, rip } => Err(Error::GuestShutdown {
            what: what.clone(),
            rip: *rip,
        }),
        StopReason::GuestEmulation(msg) => Err(Error::GuestEmulation(msg.clone())),
        StopReason::GuestCrash { vector } => Err(Error::GuestCrash(format!(
            "the guest kernel reported exception vector {vector} (details on the console)"
        ))),
        StopReason::Timeout(t) => Err(Error::Timeout(format!(
            "the guest did not signal ready within {:.1} s",
            t.as_secs_f64()
        ))),
        StopReason::VcpuFailed(msg) => Err(Error::Io(std::io::Error::other(msg.clone()))),
        StopReason::Unresponsive(msg) => Err(Error::Timeout(msg.clone())),
        StopReason::PageServerDied(msg) => Err(Error::PageServer(msg.clone())),
    }
}
