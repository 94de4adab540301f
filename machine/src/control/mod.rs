//! How a VM's vCPU threads and its owner talk, one type per job:
//! [`StopLatch`] (why the VM stopped), [`CommandChannel`] (the guest's
//! ready point, then commands in and acknowledgements out on its ready
//! port, the guest parked in between), [`Pause`] (vCPUs out of their loops
//! with the guest kept as it is) and [`OwnerRequests`] (what the control
//! socket asks of the owner). [`Control`] owns one of each for a machine.
//!
//! The parts of one [`Control`] share one lock and one condition variable:
//! a parked guest's acknowledgement and its park are one change and one
//! wake-up for the owner, and a stop or pause must also end a wait for a
//! command or an acknowledgement. Waiters are woken after unlocking.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

mod messages;
#[cfg(test)]
mod tests;

pub use messages::{
    Answer, OwnerEvent, OwnerRequest, Refusal, Reply, RequestKind, SnapshotDone, StopReason,
};

/// Every part's state, under the one lock; each field belongs to the part
/// named beside it. The exceptions: the channel (exit on ready) and the
/// owner's ready timeout also record a stop, and [`Pause::clear`] unparks.
#[derive(Default)]
struct State {
    /// [`StopLatch`].
    stop: Option<StopReason>,
    /// [`Pause`].
    pausing: bool,
    /// [`CommandChannel`], from here to `parked`.
    ready_at: Option<Duration>,
    commands: VecDeque<u32>,
    acks: u64,
    /// First acknowledgement since this channel was made.
    first_ack_at: Option<Duration>,
    parked: bool,
    /// [`OwnerRequests`].
    requests: VecDeque<OwnerRequest>,
}

/// What the parts of one [`Control`] share.
struct Core {
    /// The instant latencies are measured from (process start for
    /// `vmfork boot`).
    started: Instant,
    exit_on_ready: bool,
    /// Set on stop or pause: vCPU threads leave their loops when they see
    /// it, without taking the lock.
    leaving: AtomicBool,
    state: Mutex<State>,
    changed: Condvar,
}

impl Core {
    fn new(started: Instant, exit_on_ready: bool, state: State) -> Arc<Core> {
        Arc::new(Core {
            started,
            exit_on_ready,
            leaving: AtomicBool::new(false),
            state: Mutex::new(state),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking vCPU thread must not take the owner down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, s: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(s).unwrap_or_else(|p| p.into_inner())
    }

    fn wait_timeout<'a>(&self, s: MutexGuard<'a, State>, left: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(s, left)
            .unwrap_or_else(|p| p.into_inner())
            .0
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

    /// Records the first stop reason; later ones (other vCPUs winding
    /// down) are ignored.
    fn record_stop(&self, s: &mut State, reason: StopReason) {
        if s.stop.is_none() {
            s.stop = Some(reason);
        }
        self.leaving.store(true, Ordering::Release);
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
                None => s = self.wait(s),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return None;
                    }
                    s = self.wait_timeout(s, d - now);
                }
            }
        }
    }
}

/// Why the VM stopped: set once (the first reason wins), waited for by
/// the owner, and read by vCPU threads through a lock-free flag.
#[derive(Clone)]
pub struct StopLatch {
    core: Arc<Core>,
}

impl Default for StopLatch {
    /// A latch of its own, for something that only needs stopping (a
    /// server, a hold period).
    fn default() -> Self {
        StopLatch {
            core: Core::new(Instant::now(), false, State::default()),
        }
    }
}

impl StopLatch {
    /// Records the first stop reason; later ones (other vCPUs winding
    /// down) are ignored.
    pub fn stop(&self, reason: StopReason) {
        self.core.update(|s| self.core.record_stop(s, reason));
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.core.lock().stop.clone()
    }

    /// vCPU threads must leave their run loops: the VM is stopping, or
    /// its [`Pause`] was requested.
    pub fn is_leaving(&self) -> bool {
        self.core.leaving.load(Ordering::Acquire)
    }

    /// Blocks until the latch is set.
    pub fn wait(&self) -> StopReason {
        self.wait_until(None).unwrap_or(StopReason::Requested)
    }

    /// Blocks until the latch is set or `timeout` passes (None then).
    pub fn wait_timeout(&self, timeout: Duration) -> Option<StopReason> {
        self.wait_until(Some(Instant::now() + timeout))
    }

    fn wait_until(&self, deadline: Option<Instant>) -> Option<StopReason> {
        self.core.wait_for(deadline, |s| s.stop.is_some())?;
        self.reason()
    }
}

/// Pausing the vCPUs: they leave their loops (a parked guest stays parked
/// in its `in`) and the machine's state can be read; starting them again
/// clears it.
pub struct Pause {
    core: Arc<Core>,
}

impl Pause {
    pub fn request(&self) {
        self.core.update(|s| {
            s.pausing = true;
            self.core.leaving.store(true, Ordering::Release);
        });
    }

    /// Called when vCPU threads start (again): nothing is pending but a
    /// stop, and the guest is not parked until it parks again.
    pub fn clear(&self) {
        let mut s = self.core.lock();
        s.pausing = false;
        s.parked = false;
        self.core.leaving.store(s.stop.is_some(), Ordering::Release);
    }
}

/// The guest's ready port seen from the host: the guest's ready point,
/// then commands in and acknowledgements out, with the guest parked in
/// its `in` in between (docs/guest-abi.md). Its state is saved and
/// restored through [`vmfork_snapshot::Persist`] (persist/devices.rs).
#[derive(Clone)]
pub struct CommandChannel {
    core: Arc<Core>,
}

impl CommandChannel {
    /// A restored guest was ready before it was saved, with `acks`
    /// acknowledgements already counted; it counts as ready from the
    /// restore, and its first acknowledgement after it is the ready point
    /// of the restore. With `exit_on_ack`, the VM stops there.
    pub(crate) fn restored(started: Instant, acks: u64, exit_on_ack: bool) -> CommandChannel {
        let state = State {
            ready_at: Some(Duration::ZERO),
            acks,
            ..State::default()
        };
        CommandChannel {
            core: Core::new(started, exit_on_ack, state),
        }
    }

    /// The guest wrote READY. Returns true when the VM should stop here.
    pub fn mark_ready(&self) -> bool {
        let core = &self.core;
        core.update(|s| {
            if s.ready_at.is_none() {
                s.ready_at = Some(core.started.elapsed());
            }
            if core.exit_on_ready {
                core.record_stop(s, StopReason::ReadyReached);
            }
        });
        core.exit_on_ready
    }

    pub fn ready_at(&self) -> Option<Duration> {
        self.core.lock().ready_at
    }

    /// Waits until the guest is ready or the VM stops; false when
    /// `deadline` passes first.
    pub fn wait_ready(&self, deadline: Instant) -> bool {
        let ready_or_stopped = |s: &State| s.ready_at.is_some() || s.stop.is_some();
        self.core
            .wait_for(Some(deadline), ready_or_stopped)
            .is_some()
    }

    pub fn mark_ack(&self) {
        self.core.update(|s| self.count_ack(s));
    }

    /// One acknowledgement. A restored VM is past its ready point; its
    /// first acknowledgement is the ready point of the restore.
    fn count_ack(&self, s: &mut State) {
        s.acks += 1;
        if s.first_ack_at.is_none() {
            s.first_ack_at = Some(self.core.started.elapsed());
            if self.core.exit_on_ready && s.ready_at == Some(Duration::ZERO) {
                self.core.record_stop(s, StopReason::ReadyReached);
            }
        }
    }

    pub fn first_ack_at(&self) -> Option<Duration> {
        self.core.lock().first_ack_at
    }

    pub fn acks(&self) -> u64 {
        self.core.lock().acks
    }

    pub fn send_command(&self, command: u32) {
        self.core.update(|s| s.commands.push_back(command));
    }

    /// Called by the vCPU thread whose guest is parked in an `in` from the
    /// ready port. Blocks until there is a command, or returns None when
    /// the VM is stopping or pausing. With `ack`, the `in` also
    /// acknowledged the previous command (ACK_WAIT_PORT): the owner learns
    /// both in one wake-up.
    pub fn wait_command(&self, ack: bool) -> Option<u32> {
        self.parked_with(ack);
        let mut s = self.core.lock();
        loop {
            if s.stop.is_some() || s.pausing {
                return None;
            }
            if let Some(c) = s.commands.pop_front() {
                s.parked = false;
                return Some(c);
            }
            s = self.core.wait(s);
        }
    }

    /// Records that the guest parked (and with `ack`, acknowledged) and
    /// wakes whoever waits on this channel; the vCPU thread then waits for
    /// a command here, or asks its [`crate::vcpu::run::Commander`].
    /// Returns the acknowledgements so far.
    pub fn parked_with(&self, ack: bool) -> u64 {
        self.core.update(|s| {
            if ack {
                self.count_ack(s);
            }
            s.parked = true;
            s.acks
        })
    }

    /// The next queued command, if any, without waiting.
    pub fn take_command(&self) -> Option<u32> {
        self.core.lock().commands.pop_front()
    }

    /// The guest left its park with a command from its commander.
    pub fn unpark(&self) {
        self.core.lock().parked = false;
    }

    /// Waits until the guest is parked waiting for a command. False when
    /// the VM stopped or `deadline` passed first.
    pub fn wait_parked(&self, deadline: Option<Instant>) -> bool {
        self.core
            .wait_for(deadline, |s| s.parked || s.stop.is_some())
            == Some(false)
    }

    /// Waits until at least `n` acknowledgements arrived. False when the
    /// VM stopped or `deadline` passed first.
    pub fn wait_acks(&self, n: u64, deadline: Option<Instant>) -> bool {
        self.core
            .wait_for(deadline, |s| s.acks >= n || s.stop.is_some())
            == Some(false)
    }

    /// Waits until at least `n` acknowledgements arrived and the guest is
    /// parked for its next command: what an owner about to send that
    /// command needs, in one wait. False when the VM stopped or `deadline`
    /// passed first.
    pub fn wait_acks_parked(&self, n: u64, deadline: Option<Instant>) -> bool {
        let up = |s: &State| (s.acks >= n && s.parked) || s.stop.is_some();
        self.core.wait_for(deadline, up) == Some(false)
    }

    /// Whether a command sent to the guest is still waiting to be taken.
    pub fn command_pending(&self) -> bool {
        !self.core.lock().commands.is_empty()
    }

    /// Whether the guest is (or, while paused, was) parked in its `in`.
    pub fn is_parked(&self) -> bool {
        self.core.lock().parked
    }
}

/// Requests for the owner of a running VM, from its control socket; the
/// owner waits here for the next one or for the VM to stop.
#[derive(Clone)]
pub struct OwnerRequests {
    core: Arc<Core>,
}

impl OwnerRequests {
    /// Queues a request for the owner and wakes it.
    pub fn submit(&self, request: OwnerRequest) {
        self.core.update(|s| s.requests.push_back(request));
    }

    /// Blocks until the VM stops or a request arrives. Before the guest is
    /// ready, `ready_timeout` bounds the wait and then stops the VM.
    pub fn wait_event(&self, ready_timeout: Option<Duration>) -> OwnerEvent {
        let core = &self.core;
        let deadline = ready_timeout.map(|t| (t, Instant::now() + t));
        let mut s = core.lock();
        loop {
            if let Some(reason) = &s.stop {
                return OwnerEvent::Stopped(reason.clone());
            }
            if let Some(r) = s.requests.pop_front() {
                return OwnerEvent::Request(r);
            }
            match deadline {
                Some((t, d)) if s.ready_at.is_none() => {
                    let now = Instant::now();
                    if now >= d {
                        core.record_stop(&mut s, StopReason::Timeout(t));
                        drop(s);
                        core.changed.notify_all();
                        s = core.lock();
                        continue;
                    }
                    s = core.wait_timeout(s, d - now);
                }
                _ => s = core.wait(s),
            }
        }
    }
}

/// A machine's [`StopLatch`], [`CommandChannel`], [`Pause`] and
/// [`OwnerRequests`], on one lock.
pub struct Control {
    latch: StopLatch,
    commands: CommandChannel,
    pause: Pause,
    requests: OwnerRequests,
}

impl Control {
    /// `started` is the instant latencies are measured from (process start
    /// for `vmfork boot`).
    pub fn new(started: Instant, exit_on_ready: bool) -> Self {
        Control::around(CommandChannel {
            core: Core::new(started, exit_on_ready, State::default()),
        })
    }

    /// The other parts, around a command channel (a restored one).
    pub fn around(commands: CommandChannel) -> Self {
        let core = &commands.core;
        Control {
            latch: StopLatch { core: core.clone() },
            pause: Pause { core: core.clone() },
            requests: OwnerRequests { core: core.clone() },
            commands,
        }
    }

    pub fn latch(&self) -> &StopLatch {
        &self.latch
    }

    pub fn commands(&self) -> &CommandChannel {
        &self.commands
    }

    pub fn pause(&self) -> &Pause {
        &self.pause
    }

    pub fn requests(&self) -> &OwnerRequests {
        &self.requests
    }
}
