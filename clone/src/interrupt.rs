//! Stopping a whole fleet from outside it: a stop signal that arrives
//! while clones start or run a command must not wait for them to finish.

use std::sync::{Arc, Mutex, MutexGuard};

use vmfork_machine::control::{StopLatch, StopReason};

/// Stops every clone it watches, at once: those already watched when it
/// fires, and any watched later. Cheap to clone; every copy is the same
/// interrupt.
#[derive(Clone, Default)]
pub struct Interrupt {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    fired: bool,
    latches: Vec<StopLatch>,
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Interrupt")
            .field("fired", &inner.fired)
            .field("watched", &inner.latches.len())
            .finish()
    }
}

impl Interrupt {
    /// Stops every watched clone, and every clone watched from now on.
    pub fn fire(&self) {
        let latches = {
            let mut inner = self.lock();
            inner.fired = true;
            std::mem::take(&mut inner.latches)
        };
        for latch in latches {
            latch.stop(StopReason::Requested);
        }
    }

    pub fn fired(&self) -> bool {
        self.lock().fired
    }

    /// Adds a clone's latch: it is stopped when the interrupt fires, or
    /// at once if it already has.
    pub fn watch(&self, latch: &StopLatch) {
        let mut inner = self.lock();
        if inner.fired {
            drop(inner);
            latch.stop(StopReason::Requested);
        } else {
            inner.latches.push(latch.clone());
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing under this lock can leave the list half-updated: a
        // panic elsewhere while holding it leaves a usable value.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_latches_watched_before_and_after_it_fires() {
        let interrupt = Interrupt::default();
        let before = StopLatch::default();
        interrupt.watch(&before);
        assert!(before.reason().is_none());
        assert!(!interrupt.fired());
        interrupt.fire();
        assert!(interrupt.fired());
        assert!(matches!(before.reason(), Some(StopReason::Requested)));
        let after = StopLatch::default();
        interrupt.watch(&after);
        assert!(matches!(after.reason(), Some(StopReason::Requested)));
    }

    #[test]
    fn copies_are_the_same_interrupt() {
        let interrupt = Interrupt::default();
        let latch = StopLatch::default();
        interrupt.clone().watch(&latch);
        interrupt.clone().fire();
        assert!(interrupt.fired());
        assert!(latch.reason().is_some());
    }
}
