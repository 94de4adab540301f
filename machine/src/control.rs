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
    /// The guest took a command from the ready port and never acknowledged
    /// it, which the ABI requires (docs/guest-abi.md); the string says which.
    Unresponsive(String),
    /// The userfaultfd handler serving a clone's memory ended abnormally;
    /// the clone must not run on (clone/uffd.rs). The string says why.
    PageServerDied(String),
}

/// What the owner of a running VM is asked to do, by its control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestKind {
    Snapshot {
        out: std::path::PathBuf,
        diff: bool,
    },
    /// Send a command word to the parked guest and wait for its
    /// acknowledgement (PING, DIRTY n).
    Command(u32),
    Pause,
    Resume,
}

pub struct OwnerRequest {
    pub kind: RequestKind,
    /// Where the owner sends its answer.
    pub reply: std::sync::mpsc::Sender<Answer>,
}

/// The owner's answer to a request: what was done, or why not.
pub type Answer = std::result::Result<Reply, Refusal>;

/// What the owner did for a request (cli/api.rs puts it on the wire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Paused,
    Resumed,
    /// The guest acknowledged the command this long after the request.
    Acknowledged {
        ack_us: u64,
    },
    Snapshot(SnapshotDone),
}

/// A template written on request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDone {
    pub out: std::path::PathBuf,
    pub snapshot_us: u64,
    pub state_bytes: u64,
    pub memory_bytes: u64,
    pub memory_written_bytes: u64,
    pub dirty_pages: Option<u64>,
    pub dirty_scan_us: Option<u64>,
}

/// Why the owner did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("the VM is paused")]
    Paused,
    #[error("the VM is already paused")]
    AlreadyPaused,
    #[error("the VM is not paused")]
    NotPaused,
    #[error("the guest did not wait for a command within {:.1} s", .0.as_secs_f64())]
    NotWaiting(Duration),
    #[error("the VM stopped before the guest acknowledged")]
    StoppedBeforeAck,
    #[error("the guest did not take the command")]
    NotTaken,
    /// The guest took a command and stayed silent, so it was stopped
    /// (`StopReason::Unresponsive` with the same words).
    #[error("{0}; the VM is stopped")]
    Unresponsive(String),
    #[error("{0}")]
    Snapshot(crate::error::Error),
}

/// What woke the owner up.
pub enum OwnerEvent {
    Stopped(StopReason),
    Request(OwnerRequest),
}

#[derive(Default)]
struct State {
    ready_at: Option<Duration>,
    stop: Option<StopReason>,
    pausing: bool,
    commands: VecDeque<u32>,
    requests: VecDeque<OwnerRequest>,
    acks: u64,
    /// First acknowledgement since this Control was created.
    first_ack_at: Option<Duration>,
    parked: bool,
}

pub struct Control {
    started: Instant,
    exit_on_ready: bool,
    /// Set on stop or pause: vCPU threads leave their loops when they see it.
    leaving: AtomicBool,
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
            leaving: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking vCPU thread must not take the owner down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the state and wakes every waiter, after unlocking: a waiter
    /// woken while the lock is still held blocks on it at once and needs a
    /// second wake-up, two context switches per event on this path.
    fn update<R>(&self, change: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.lock();
        let result = change(&mut s);
        drop(s);
        self.changed.notify_all();
        result
    }

    /// A restored VM was ready before it was saved, with `acks`
    /// acknowledgements already counted.
    /// With `exit_on_ack`, the VM stops at the guest's first
    /// acknowledgement after the restore.
    pub fn new_restored(started: Instant, acks: u64, exit_on_ack: bool) -> Self {
        let c = Control::new(started, exit_on_ack);
        {
            let mut s = c.lock();
            s.ready_at = Some(Duration::ZERO);
            s.acks = acks;
        }
        c
    }

    /// vCPU threads must leave their run loops (stop or pause).
    pub fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::Acquire)
    }

    pub fn is_stopping(&self) -> bool {
        self.lock().stop.is_some()
    }

    pub fn request_pause(&self) {
        self.update(|s| {
            s.pausing = true;
            self.leaving.store(true, Ordering::Release);
        });
    }

    /// Called when vCPU threads start (again).
    pub fn clear_pause(&self) {
        let mut s = self.lock();
        s.pausing = false;
        s.parked = false;
        self.leaving.store(s.stop.is_some(), Ordering::Release);
    }

    /// Queues a request for the owner and wakes it.
    pub fn submit(&self, request: OwnerRequest) {
        self.update(|s| s.requests.push_back(request));
    }

    /// Blocks until the VM stops or a request arrives. Before the guest is
    /// ready, `ready_timeout` bounds the wait and then stops the VM.
    pub fn wait_event(&self, ready_timeout: Option<Duration>) -> OwnerEvent {
        let deadline = ready_timeout.map(|t| Instant::now() + t);
        let mut s = self.lock();
        loop {
            if let Some(reason) = &s.stop {
                return OwnerEvent::Stopped(reason.clone());
            }
            if let Some(r) = s.requests.pop_front() {
                return OwnerEvent::Request(r);
            }
            match deadline {
                Some(d) if s.ready_at.is_none() => {
                    let now = Instant::now();
                    if now >= d {
                        drop(s);
                        if let Some(t) = ready_timeout {
                            self.stop(StopReason::Timeout(t));
                        }
                        s = self.lock();
                        continue;
                    }
                    s = self
                        .changed
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                _ => s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Records the first stop reason; later ones (other vCPUs winding down)
    /// are ignored.
    pub fn stop(&self, reason: StopReason) {
        self.update(|s| {
            if s.stop.is_none() {
                s.stop = Some(reason);
            }
            self.leaving.store(true, Ordering::Release);
        });
    }

    /// The guest wrote READY. Returns true when the VM should stop here.
    pub fn mark_ready(&self) -> bool {
        self.update(|s| {
            if s.ready_at.is_none() {
                s.ready_at = Some(self.started.elapsed());
            }
        });
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
        self.update(|s| self.count_ack(s));
    }

    /// One acknowledgement. A restored VM is past its ready point; its
    /// first acknowledgement is the ready point of the restore.
    fn count_ack(&self, s: &mut State) {
        s.acks += 1;
        if s.first_ack_at.is_none() {
            s.first_ack_at = Some(self.started.elapsed());
            if self.exit_on_ready && s.ready_at == Some(Duration::ZERO) && s.stop.is_none() {
                s.stop = Some(StopReason::ReadyReached);
                self.leaving.store(true, Ordering::Release);
            }
        }
    }

    pub fn first_ack_at(&self) -> Option<Duration> {
        self.lock().first_ack_at
    }

    pub fn acks(&self) -> u64 {
        self.lock().acks
    }

    pub fn send_command(&self, command: u32) {
        self.update(|s| s.commands.push_back(command));
    }

    /// Called by the vCPU thread whose guest is parked in an `in` from the
    /// ready port. Blocks until there is a command, or returns None when
    /// the VM is stopping or pausing. With `ack`, the `in` also
    /// acknowledged the previous command (ACK_WAIT_PORT): the owner learns
    /// both in one wake-up.
    pub fn wait_command(&self, ack: bool) -> Option<u32> {
        self.parked_with(ack);
        let mut s = self.lock();
        loop {
            if s.stop.is_some() || s.pausing {
                return None;
            }
            if let Some(c) = s.commands.pop_front() {
                s.parked = false;
                return Some(c);
            }
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Records that the guest parked (and with `ack`, acknowledged) and
    /// wakes whoever waits on this control block; the vCPU thread then
    /// waits for a command here, or asks its [`crate::vcpu::run::Commander`].
    /// Returns the acknowledgements so far.
    pub fn parked_with(&self, ack: bool) -> u64 {
        self.update(|s| {
            if ack {
                self.count_ack(s);
            }
            s.parked = true;
            s.acks
        })
    }

    /// The next queued command, if any, without waiting.
    pub fn take_command(&self) -> Option<u32> {
        self.lock().commands.pop_front()
    }

    /// The guest left its park with a command from its commander.
    pub fn unpark(&self) {
        self.lock().parked = false;
    }

    /// Waits until `pred` holds or `deadline` passes. Returns whether it held.
    fn wait_until(&self, deadline: Option<Instant>, pred: impl Fn(&State) -> bool) -> bool {
        self.wait_for(deadline, pred).is_some()
    }

    /// Waits until `pred` holds or `deadline` passes; then, whether the VM
    /// is stopping, read under the same lock. None on timeout.
    fn wait_for(&self, deadline: Option<Instant>, pred: impl Fn(&State) -> bool) -> Option<bool> {
        let mut s = self.lock();
        loop {
            if pred(&s) {
                return Some(s.stop.is_some());
            }
            match deadline {
                None => s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
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
        self.wait_for(deadline, |s| s.parked || s.stop.is_some()) == Some(false)
    }

    /// Waits until at least `n` acknowledgements arrived (or stopped).
    pub fn wait_acks(&self, n: u64, deadline: Option<Instant>) -> bool {
        self.wait_for(deadline, |s| s.acks >= n || s.stop.is_some()) == Some(false)
    }

    /// Waits until at least `n` acknowledgements arrived and the guest is
    /// parked for its next command (or stopped): what an owner about to
    /// send that command needs, in one wait.
    pub fn wait_acks_parked(&self, n: u64, deadline: Option<Instant>) -> bool {
        self.wait_for(deadline, |s| (s.acks >= n && s.parked) || s.stop.is_some()) == Some(false)
    }

    /// Whether a command sent to the guest is still waiting to be taken.
    pub fn command_pending(&self) -> bool {
        !self.lock().commands.is_empty()
    }

    /// Whether the guest is (or, while paused, was) parked in its `in`.
    pub fn is_parked(&self) -> bool {
        self.lock().parked
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.lock().stop.clone()
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
        let t = std::thread::spawn(move || (c2.wait_command(false), c2.wait_command(true)));
        assert!(c.wait_parked(None));
        c.send_command(7);
        assert!(c.wait_acks_parked(1, None));
        c.stop(StopReason::Requested);
        assert_eq!(t.join().ok(), Some((Some(7), None)));
    }
}
