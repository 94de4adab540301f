//! Ctrl-C and SIGTERM end the VM cleanly instead of killing the process
//! mid-write.

use vmfork_machine::control::{StopLatch, StopReason};

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it spawns
/// afterwards, so they can only be received by [`forward_to`]'s thread.
pub fn block_stop_signals() {
    let set = stop_signals();
    // SAFETY: changes this thread's signal mask with a valid set.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Spawns a thread that turns the first SIGINT/SIGTERM into a clean stop.
pub fn forward_to(latch: StopLatch) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            vmfork_isolation::seccomp::install_in_thread(
                vmfork_isolation::seccomp::ThreadKind::Signals,
            );
            let set = stop_signals();
            let mut signal = 0;
            // SAFETY: sigwait on a valid set, writing into a local.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                latch.stop(StopReason::Requested);
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no signal thread, Ctrl-C will kill vmfork abruptly: {e}");
    }
}
