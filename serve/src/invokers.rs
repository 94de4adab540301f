//! The threads `serve` runs VM work on: each invocation's clone (created,
//! restored, started and waited for), recycled VMs' resets and warm-pool
//! refills. They are threads of their own kind (`ThreadKind::Invoker`),
//! not tokio's blocking pool, so that tokio's workers can have a list
//! with no KVM ioctl, no new thread and no open (docs/seccomp.md): tokio
//! starts its blocking threads from the worker that asks for one, under
//! the worker's filter, and one hook sets up both kinds.
//!
//! A job costs the worker one channel send and the invoker one wake-up,
//! as `spawn_blocking` did. The pool grows on its own threads: the first
//! thread to take a job while no other is idle starts one more (HTTP
//! threads cannot start threads), up to the limit tokio's pool had.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmfork_isolation::seccomp::{self, ThreadKind};

type Job = Box<dyn FnOnce() + Send>;

/// Hands VM work to the invoker threads. The threads end once every
/// clone of this is dropped and the queue is empty.
#[derive(Clone)]
pub struct Invokers {
    jobs: Sender<Job>,
}

struct Shared {
    jobs: Mutex<Receiver<Job>>,
    /// Threads waiting for a job.
    idle: AtomicUsize,
    /// Threads started, and at most how many.
    started: AtomicUsize,
    max: usize,
}

/// Threads started up front: enough for a few invocations at once
/// without growing on the first requests.
const INITIAL: usize = 4;

impl Invokers {
    /// Starts the first threads. Call it from a thread whose filter allows
    /// KVM and new threads (the main thread): invokers inherit it.
    /// Returns the first threads, to join once every `Invokers` is
    /// dropped; threads the pool grows by are not joined (each job holds
    /// what must outlive it, such as its reaper's channel, and the reapers
    /// are joined).
    pub fn spawn(max: usize) -> std::io::Result<(Invokers, Vec<JoinHandle<()>>)> {
        let (jobs, incoming) = channel();
        let shared = Arc::new(Shared {
            jobs: Mutex::new(incoming),
            idle: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            max: max.max(1),
        });
        let mut first = Vec::new();
        for _ in 0..INITIAL.min(shared.max) {
            shared.started.fetch_add(1, Ordering::Relaxed);
            first.push(start(shared.clone())?);
        }
        Ok((Invokers { jobs }, first))
    }

    /// Queues `job`; false once the threads are gone (the server is
    /// shutting down), and `job` is dropped unrun.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) -> bool {
        self.jobs.send(Box::new(job)).is_ok()
    }
}

fn start(shared: Arc<Shared>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("invoker".into())
        .spawn(move || {
            seccomp::install_in_thread(ThreadKind::Invoker);
            work(&shared);
        })
}

fn work(shared: &Arc<Shared>) {
    loop {
        shared.idle.fetch_add(1, Ordering::AcqRel);
        let job = match shared.jobs.lock() {
            Ok(jobs) => jobs.recv(),
            Err(_) => return,
        };
        let was_idle = shared.idle.fetch_sub(1, Ordering::AcqRel);
        let Ok(job) = job else {
            return; // every sender is gone
        };
        if was_idle == 1 {
            grow(shared);
        }
        // A panicking job drops its reply; the request gets an error and
        // the thread stays.
        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
    }
}

/// This thread took the last idle slot: start one more for the next job,
/// unless the pool is at its limit.
fn grow(shared: &Arc<Shared>) {
    let ok = shared
        .started
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < shared.max).then_some(n + 1)
        })
        .is_ok();
    if !ok {
        return;
    }
    match start(shared.clone()) {
        Ok(_detached) => {}
        Err(e) => {
            shared.started.fetch_sub(1, Ordering::AcqRel);
            eprintln!("vmfork serve: could not start another invoker thread: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_and_the_pool_grows_to_its_limit() {
        let (invokers, threads) = Invokers::spawn(6).expect("spawn");
        let (done, finished) = channel();
        let gate = Arc::new(std::sync::Barrier::new(7));
        for i in 0..6 {
            let (done, gate) = (done.clone(), gate.clone());
            // Six jobs that each wait for all: only six threads can run
            // them at once, so the pool must grow from four.
            assert!(invokers.run(move || {
                gate.wait();
                let _ = done.send(i);
            }));
        }
        gate.wait();
        let mut got: Vec<i32> = (0..6).filter_map(|_| finished.recv().ok()).collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5]);
        drop(invokers);
        for t in threads {
            let _ = t.join();
        }
    }
}
