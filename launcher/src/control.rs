//! The control block shared by a VM's vCPU threads and its owner: when the
//! guest became ready, the commands queued for a parked guest, and why the
//! VM stopped. vCPU threads report here; the owner waits here.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// `--exit-on-ready` and the guest signalled ready.
    ReadyReached,
    /// The guest asked to exit with this status.
    GuestExit(u8),
    /// KVM_EXIT_SHUTDOWN (triple fault), a system event or an i8042 reset.
    GuestShutdown { what: String, rip: u64 },
    /// KVM could not run guest code (internal error, failed entry).
    GuestEmulation(String),
    /// The guest's kernel reported an unexpected exception.
    GuestCrash { vector: u8 },
    /// The owner asked (Ctrl-C, SIGTERM, end of a hold period).
    Requested,
    /// The owner's deadline passed before the guest was ready.
    Timeout(Duration),
    /// A vCPU ioctl failed in a way that is not the guest's doing.
    VcpuFailed(String),
}

#[derive(Default)]
struct State {
    ready_at: Option<Duration>,
    stop: Option<StopReason>,
    commands: VecDeque<u32>,
    acks: u64,
    parked: bool,
}

pub struct Control {
    started: Instant,
    exit_on_ready: bool,
    stopping: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

impl Control {
    /// `started` is the instant latencies are measured from (process start
    /// for `vmfork boot`).
    pub fn new(started: Instant, exit_on_ready: bool) -> Self {
        Control {
            started,
            exit_on_ready,
            stopping: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking vCPU thread must not take the owner down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Records the first stop reason; later ones (other vCPUs winding down)
    /// are ignored.
    pub fn stop(&self, reason: StopReason) {
        let mut s = self.lock();
        if s.stop.is_none() {
            s.stop = Some(reason);
        }
        self.stopping.store(true, Ordering::Release);
        self.changed.notify_all();
    }

    /// The guest wrote READY. Returns true when the VM should stop here.
    pub fn mark_ready(&self) -> bool {
        let mut s = self.lock();
        if s.ready_at.is_none() {
            s.ready_at = Some(self.started.elapsed());
        }
        self.changed.notify_all();
        drop(s);
        if self.exit_on_ready {
            self.stop(StopReason::ReadyReached);
            return true;
        }
        false
    }

    pub fn ready_at(&self) -> Option<Duration> {
        self.lock().ready_at
    }

    pub fn mark_ack(&self) {
        let mut s = self.lock();
        s.acks += 1;
        self.changed.notify_all();
    }

    pub fn acks(&self) -> u64 {
        self.lock().acks
    }

    pub fn send_command(&self, command: u32) {
        let mut s = self.lock();
        s.commands.push_back(command);
        self.changed.notify_all();
    }

    /// Called by the vCPU thread whose guest is parked in an `in` from the
    /// ready port. Blocks until there is a command, or returns None when
    /// the VM is stopping.
    pub fn wait_command(&self) -> Option<u32> {
        let mut s = self.lock();
        s.parked = true;
        self.changed.notify_all();
        loop {
            if s.stop.is_some() {
                return None;
            }
            if let Some(c) = s.commands.pop_front() {
                s.parked = false;
                return Some(c);
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Waits until `pred` holds or `deadline` passes. Returns whether it held.
    fn wait_until(&self, deadline: Option<Instant>, pred: impl Fn(&State) -> bool) -> bool {
        let mut s = self.lock();
        loop {
            if pred(&s) {
                return true;
            }
            match deadline {
                None => s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    s = self
                        .changed
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Blocks until the VM stops; after `timeout` without the guest being
    /// ready, stops it with [`StopReason::Timeout`].
    pub fn wait_stopped(&self, timeout: Option<Duration>) -> StopReason {
        let deadline = timeout.map(|t| Instant::now() + t);
        let stopped_or_ready = |s: &State| s.stop.is_some() || s.ready_at.is_some();
        if !self.wait_until(deadline, stopped_or_ready) {
            if let Some(t) = timeout {
                self.stop(StopReason::Timeout(t));
            }
        }
        self.wait_until(None, |s| s.stop.is_some());
        self.lock().stop.clone().unwrap_or(StopReason::Requested)
    }

    /// Waits until the guest is parked waiting for a command (or stopped).
    pub fn wait_parked(&self, deadline: Option<Instant>) -> bool {
        self.wait_until(deadline, |s| s.parked || s.stop.is_some()) && !self.is_stopping()
    }

    /// Waits until at least `n` acknowledgements arrived (or stopped).
    pub fn wait_acks(&self, n: u64, deadline: Option<Instant>) -> bool {
        self.wait_until(deadline, |s| s.acks >= n || s.stop.is_some()) && !self.is_stopping()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_stop_reason_wins() {
        let c = Control::new(Instant::now(), false);
        c.stop(StopReason::GuestExit(3));
        c.stop(StopReason::Requested);
        assert_eq!(c.wait_stopped(None), StopReason::GuestExit(3));
    }

    #[test]
    fn exit_on_ready_stops() {
        let c = Control::new(Instant::now(), true);
        assert!(c.mark_ready());
        assert!(c.ready_at().is_some());
        assert_eq!(c.wait_stopped(None), StopReason::ReadyReached);
    }

    #[test]
    fn timeout_applies_only_before_ready() {
        let c = Control::new(Instant::now(), false);
        let t = Duration::from_millis(20);
        assert_eq!(c.wait_stopped(Some(t)), StopReason::Timeout(t));
    }

    #[test]
    fn parked_vcpu_gets_commands_and_wakes_on_stop() {
        let c = Arc::new(Control::new(Instant::now(), false));
        let c2 = c.clone();
        let t = std::thread::spawn(move || (c2.wait_command(), c2.wait_command()));
        assert!(c.wait_parked(None));
        c.send_command(7);
        std::thread::sleep(Duration::from_millis(10));
        c.stop(StopReason::Requested);
        assert_eq!(t.join().ok(), Some((Some(7), None)));
    }
}
