//! How many invocations `vmfork serve` admits and runs at once. A place in
//! the queue and a running slot belong to the invocation, not to its
//! client: a client that hangs up does not free the slot of a VM that is
//! still running, so `--max-concurrency` holds against any client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct Limits {
    /// One permit per running VM: `--max-concurrency`.
    slots: Arc<Semaphore>,
    max_concurrency: usize,
    /// Invocations admitted: queued (reading their body or waiting for a
    /// slot) or running.
    admitted: AtomicUsize,
    /// --max-concurrency + --queue.
    admission_limit: usize,
}

impl Limits {
    pub fn new(max_concurrency: usize, queue: usize) -> Arc<Limits> {
        Arc::new(Limits {
            slots: Arc::new(Semaphore::new(max_concurrency)),
            max_concurrency,
            admitted: AtomicUsize::new(0),
            admission_limit: max_concurrency + queue,
        })
    }

    pub fn max_concurrency(&self) -> usize {
        self.max_concurrency
    }

    /// A place among the admitted invocations, or None when running plus
    /// queued are at their limit (the caller sheds the request with 503).
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= self.admission_limit {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Admission(self.clone()))
    }

    /// VMs running now (slots taken).
    pub fn running(&self) -> usize {
        self.max_concurrency - self.slots.available_permits()
    }

    /// Waits until no slot is taken: every admitted VM is stopped. Closes
    /// the slots, so nothing is admitted to run afterwards.
    pub async fn all_stopped(&self) {
        let all = u32::try_from(self.max_concurrency).unwrap_or(u32::MAX);
        if let Ok(permits) = self.slots.acquire_many(all).await {
            permits.forget();
        }
        self.slots.close();
    }
}

/// One admitted invocation; dropping it (on any path) frees its place.
pub struct Admission(Arc<Limits>);

impl Admission {
    /// Waits for a running slot; None once the server is stopping.
    pub async fn run_slot(self) -> Option<Slot> {
        let permit = self.0.slots.clone().acquire_owned().await.ok()?;
        Some(Slot {
            _permit: permit,
            _admission: self,
        })
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.admitted.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A running slot: held by the invocation's VM until the VM is stopped,
/// whether or not its client is still there (pool.rs, `Finished::reap`).
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    _admission: Admission,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slot_outlives_its_request_and_bounds_admission() {
        let limits = Limits::new(1, 1);
        let first = limits.admit().expect("first");
        let queued = limits.admit().expect("queued");
        assert!(limits.admit().is_none(), "running + queue is the limit");
        let slot = first.run_slot().await.expect("slot");
        assert_eq!(limits.running(), 1);
        // The queued request's client leaves: its place is freed.
        drop(queued);
        let again = limits.admit().expect("a place again");
        // The running VM keeps its slot until it is dropped (stopped).
        let waiting = tokio::spawn(again.run_slot());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(slot);
        let slot = waiting.await.expect("join").expect("slot");
        drop(slot);
        limits.all_stopped().await;
        let late = limits.admit().expect("admission is not slots");
        assert!(late.run_slot().await.is_none(), "closed after the drain");
    }
}
