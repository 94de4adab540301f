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
    spawn(Box::new(move |_| latch.stop(StopReason::Requested)), None);
}

/// Like [`forward_to`], and a second SIGINT/SIGTERM, while the clean stop
/// is under way, ends the process at once with status 128 + the signal
/// and one line on stderr naming `who`.
pub fn forward_then_exit(latch: StopLatch, who: &'static str) {
    spawn(
        Box::new(move |_| latch.stop(StopReason::Requested)),
        Some(who),
    );
}

/// Calls `first` with the first SIGINT/SIGTERM's number; a second one
/// ends the process at once, as with [`forward_then_exit`].
pub fn on_first_then_exit(first: impl FnOnce(i32) + Send + 'static, who: &'static str) {
    spawn(Box::new(first), Some(who));
}

fn spawn(first: Box<dyn FnOnce(i32) + Send>, exit_on_second: Option<&'static str>) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            vmfork_isolation::seccomp::install_in_thread(
                vmfork_isolation::seccomp::ThreadKind::Signals,
            );
            let set = stop_signals();
            let mut signal = 0;
            // SAFETY: sigwait on a valid set, writing into a local.
            if unsafe { libc::sigwait(&set, &mut signal) } != 0 {
                return;
            }
            first(signal);
            let Some(who) = exit_on_second else {
                return;
            };
            // SAFETY: as above.
            if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
                let line = format!("{who}: second stop signal, stopping at once\n");
                // SAFETY: write(2) of a local buffer to stderr, then
                // _exit(2): no destructors or atexit handlers run while
                // other threads may still be using what they would free.
                unsafe {
                    libc::write(2, line.as_ptr().cast(), line.len());
                    libc::_exit(128 + signal);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("no signal thread, Ctrl-C will kill vmfork abruptly: {e}");
    }
}

/// SIGINT or SIGTERM, as a person would write it.
pub fn name(number: i32) -> String {
    match number {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}
