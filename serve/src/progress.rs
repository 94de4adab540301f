//! One clone's invocation driven from its vCPU's own thread: the guest
//! acknowledges its resume, gets INVOKE (EXEC for a program function),
//! acknowledges the answer, and the
//! vCPU returns to its owner, which then waits for one wake-up instead of
//! a round trip per command (see [`Commander`]). A guest resumed with
//! RESUME_INVOKE or RESUME_EXEC (docs/guest-abi.md) acknowledges only the
//! answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmfork_machine::machine::RunningMachine;
use vmfork_machine::vcpu::run::Commander;

const UNSET: u64 = u64::MAX;

/// How far a clone's invocation got, as its commander saw it.
pub struct Progress {
    requested: Instant,
    /// The acknowledgements the clone had before it resumed.
    acks_at_start: u64,
    /// Microseconds from `requested` to INVOKE: sent at the resume's
    /// acknowledgement, or with the resume itself (RESUME_INVOKE).
    invoked_us: AtomicU64,
    /// Microseconds from `requested` to the function's acknowledgement.
    answered_us: AtomicU64,
    /// Which acknowledgement after the resume is the answer: 2, or 1 for
    /// a clone resumed straight into its request.
    answer_ack: AtomicU64,
    /// The command that starts the request: INVOKE or EXEC.
    command: u32,
}

/// Where an invocation ended up once its owner stopped waiting.
pub enum Ending {
    /// The guest acknowledged INVOKE: its response is in the mailbox.
    Answered { clone_us: u64, run_us: u64 },
    /// Time ran out (starting, or running the function).
    TimedOut,
    /// The vCPU returned without an answer: the guest stopped, or parked
    /// without the acknowledgement the ABI requires (the string says which).
    Returned(&'static str),
}

impl Progress {
    pub fn new(requested: Instant, acks_at_start: u64, command: u32) -> Arc<Progress> {
        Arc::new(Progress {
            requested,
            acks_at_start,
            invoked_us: AtomicU64::new(UNSET),
            answered_us: AtomicU64::new(UNSET),
            answer_ack: AtomicU64::new(2),
            command,
        })
    }

    /// The clone is about to resume with RESUME_INVOKE or RESUME_EXEC:
    /// its request is invoked from now, and its first acknowledgement is
    /// the answer.
    pub fn invoked_with_resume(&self) {
        self.answer_ack.store(1, Ordering::Release);
        self.invoked_us
            .store(self.since_request(), Ordering::Release);
    }

    fn since_request(&self) -> u64 {
        self.requested.elapsed().as_micros() as u64
    }

    fn invoked_at(&self) -> Option<Instant> {
        match self.invoked_us.load(Ordering::Acquire) {
            UNSET => None,
            us => Some(self.requested + Duration::from_micros(us)),
        }
    }

    /// Sends INVOKE at the resume's acknowledgement and ends the run at the
    /// function's; any other park (one that acknowledged nothing) ends it
    /// too, unanswered.
    pub fn commander(self: &Arc<Self>) -> Commander {
        let progress = self.clone();
        Arc::new(move |acks| {
            let invoked = progress.invoked_us.load(Ordering::Acquire) != UNSET;
            let answer_ack = progress.answer_ack.load(Ordering::Acquire);
            match acks.checked_sub(progress.acks_at_start) {
                Some(n) if invoked && n == answer_ack => {
                    progress
                        .answered_us
                        .store(progress.since_request(), Ordering::Release);
                    None
                }
                Some(1) if !invoked => {
                    progress
                        .invoked_us
                        .store(progress.since_request(), Ordering::Release);
                    Some(progress.command)
                }
                _ => None,
            }
        })
    }

    /// Waits for the clone's vCPU to come back: up to `start_timeout` from
    /// the request for the resume's acknowledgement, then up to `timeout`
    /// from INVOKE for the answer. A timed-out clone is left running; its
    /// owner stops it.
    pub fn wait(
        &self,
        running: &RunningMachine,
        start_timeout: Duration,
        timeout: Duration,
    ) -> Ending {
        let start_deadline = self.requested + start_timeout;
        loop {
            // Before INVOKE its deadline is unknown, but no earlier than
            // `timeout` from now.
            let wake = match self.invoked_at() {
                None => start_deadline.min(Instant::now() + timeout),
                Some(at) => at + timeout,
            };
            if running.wait_vcpus_until(wake) {
                break;
            }
            // INVOKE may have gone out meanwhile: the deadline is that of
            // the phase the clone is in now.
            let deadline = match self.invoked_at() {
                None => start_deadline,
                Some(at) => at + timeout,
            };
            if Instant::now() >= deadline {
                return Ending::TimedOut;
            }
        }
        let invoked = self.invoked_us.load(Ordering::Acquire);
        match self.answered_us.load(Ordering::Acquire) {
            UNSET if invoked == UNSET => {
                Ending::Returned("the clone parked without acknowledging its resume")
            }
            UNSET => Ending::Returned("the guest parked again without acknowledging INVOKE"),
            answered => Ending::Answered {
                clone_us: invoked,
                run_us: answered - invoked,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmfork_machine::mailbox::CMD_INVOKE;

    #[test]
    fn commander_invokes_once_resumed_and_ends_once_answered() {
        let progress = Progress::new(Instant::now(), 3, CMD_INVOKE);
        let commander = progress.commander();
        assert_eq!(commander(4), Some(CMD_INVOKE));
        assert!(progress.invoked_at().is_some());
        assert_eq!(commander(5), None);
        assert_ne!(progress.answered_us.load(Ordering::Relaxed), UNSET);
    }

    #[test]
    fn a_clone_resumed_into_its_request_is_answered_at_its_first_ack() {
        let progress = Progress::new(Instant::now(), 3, CMD_INVOKE);
        let commander = progress.commander();
        progress.invoked_with_resume();
        assert_eq!(commander(4), None);
        assert_ne!(progress.answered_us.load(Ordering::Relaxed), UNSET);
    }

    #[test]
    fn a_park_without_its_acknowledgement_ends_the_run_unanswered() {
        let progress = Progress::new(Instant::now(), 3, CMD_INVOKE);
        let commander = progress.commander();
        assert_eq!(commander(3), None);
        assert!(progress.invoked_at().is_none());
        let progress = Progress::new(Instant::now(), 3, CMD_INVOKE);
        let commander = progress.commander();
        assert_eq!(commander(4), Some(CMD_INVOKE));
        assert_eq!(commander(4), None);
        assert_eq!(progress.answered_us.load(Ordering::Relaxed), UNSET);
    }
}
