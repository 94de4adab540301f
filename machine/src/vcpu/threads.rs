//! The threads vCPUs run on: a new thread per vCPU, or a runner kept
//! between machines ([`Runners`]: `vmfork serve`'s functions, and `clone
//! --shells`, which makes them with its shells). Creating a thread and
//! compiling its seccomp filter cost ~150 us per VM on this host
//! (docs/serve.md).

use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::vcpu::Vcpu;
use vmfork_isolation::seccomp::ThreadKind;

/// What a vCPU thread runs: given whether its seccomp filter is in place
/// (or why not), it runs the vCPU and hands it back.
pub type VcpuWork = Box<dyn FnOnce(&crate::error::Result<()>) -> Vcpu + Send>;

/// A vCPU running on some thread, to be joined for its vCPU.
pub struct VcpuThread {
    thread: libc::pthread_t,
    kind: Kind,
}

enum Kind {
    Own(JoinHandle<Vcpu>),
    /// Holding the pool keeps every runner thread alive (they end only
    /// once it is gone), so `thread` stays valid to kick.
    Runner {
        finished: Arc<Finished>,
        _pool: Arc<Runners>,
    },
}

/// A runner's result slot: the vCPU once its work is done.
#[derive(Default)]
struct Finished {
    vcpu: Mutex<Option<Vcpu>>,
    done: Condvar,
}

impl VcpuThread {
    /// Runs `work` on a new thread named `name`.
    pub fn spawn(name: String, work: VcpuWork) -> std::io::Result<VcpuThread> {
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            let filter =
                vmfork_isolation::seccomp::install(ThreadKind::Vcpu).map_err(crate::Error::from);
            work(&filter)
        })?;
        use std::os::unix::thread::JoinHandleExt;
        Ok(VcpuThread {
            thread: handle.as_pthread_t(),
            kind: Kind::Own(handle),
        })
    }

    /// For kicking it out of KVM_RUN. A runner thread outlives the vCPU
    /// and a stray kick only makes its next KVM_RUN return early, which
    /// the run loop retries.
    pub fn pthread(&self) -> libc::pthread_t {
        self.thread
    }

    pub fn is_finished(&self) -> bool {
        match &self.kind {
            Kind::Own(handle) => handle.is_finished(),
            Kind::Runner { finished, .. } => finished.vcpu.lock().map_or(true, |v| v.is_some()),
        }
    }

    /// Waits up to `timeout` for the work to return; whether it has. A
    /// runner's wait ends as soon as it hands the vCPU back.
    pub fn wait_finished(&self, timeout: std::time::Duration) -> bool {
        match &self.kind {
            Kind::Own(handle) => {
                if !handle.is_finished() {
                    std::thread::sleep(timeout);
                }
                handle.is_finished()
            }
            Kind::Runner { finished, .. } => {
                let Ok(slot) = finished.vcpu.lock() else {
                    return true;
                };
                finished
                    .done
                    .wait_timeout_while(slot, timeout, |v| v.is_none())
                    .map_or(true, |(v, _)| v.is_some())
            }
        }
    }

    /// The vCPU back, once its work returned; None if the thread panicked.
    pub fn join(self) -> Option<Vcpu> {
        match self.kind {
            Kind::Own(handle) => handle.join().ok(),
            Kind::Runner { finished, .. } => {
                let mut slot = finished.vcpu.lock().ok()?;
                loop {
                    if let Some(vcpu) = slot.take() {
                        return Some(vcpu);
                    }
                    slot = finished.done.wait(slot).ok()?;
                }
            }
        }
    }
}

type Job = Box<dyn FnOnce(&crate::error::Result<()>) + Send>;

/// The next job: polled for up to `spin`, then waited for. None once the
/// pool is gone.
fn next_job(incoming: &Receiver<Job>, spin: Duration) -> Option<Job> {
    if !spin.is_zero() {
        let until = Instant::now() + spin;
        while Instant::now() < until {
            match incoming.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
    }
    incoming.recv().ok()
}

/// An idle runner: how to hand it work, and its thread.
struct Runner {
    jobs: Sender<Job>,
    thread: libc::pthread_t,
}

/// vCPU threads that stay alive between machines, each with its vCPU
/// seccomp filter installed once. A runner goes back to the idle list when
/// its vCPU is handed back, so there are as many as vCPUs ever ran at once;
/// they end when the `Runners` is dropped and they are idle.
#[derive(Default)]
pub struct Runners {
    idle: Mutex<Vec<Runner>>,
    /// How long an idle runner polls for its next job before it sleeps.
    spin: Duration,
}

impl Runners {
    pub fn new() -> Arc<Runners> {
        Arc::new(Runners::default())
    }

    /// Runners that poll for `spin` after each job before sleeping: waking
    /// a sleeping thread on another CPU takes ~45 us on this host (a
    /// nested VM), longer than restoring a clone into a prepared shell.
    /// For back-to-back clone starts (`vmfork clone`), not for a server's
    /// steady load, where the polling would take CPU from the work.
    pub fn spinning(spin: Duration) -> Arc<Runners> {
        Arc::new(Runners {
            spin,
            ..Runners::default()
        })
    }

    /// Starts runners until `count` are idle, ahead of the vCPUs that
    /// will run on them.
    pub fn reserve(&self, count: usize) -> std::io::Result<()> {
        loop {
            let idle = self.idle.lock().map_or(count, |i| i.len());
            if idle >= count {
                return Ok(());
            }
            let runner = self.start_runner()?;
            if let Ok(mut idle) = self.idle.lock() {
                idle.push(runner);
            }
        }
    }

    /// Runs `work` on an idle runner, or on a new one.
    pub fn run(self: &Arc<Self>, work: VcpuWork) -> std::io::Result<VcpuThread> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        let runner = match idle {
            Some(runner) => runner,
            None => self.start_runner()?,
        };
        let finished = Arc::new(Finished::default());
        let thread = runner.thread;
        let slot = finished.clone();
        let pool: Weak<Runners> = Arc::downgrade(self);
        let jobs = runner.jobs.clone();
        let job: Job = Box::new(move |filter| {
            let vcpu = work(filter);
            // Idle again before the owner learns the vCPU is back, so a
            // next start finds this (warm) thread rather than a new or
            // sleeping one; a job sent now waits in the channel until this
            // one returns. With the pool gone, dropping `runner` (the only
            // sender) ends this thread.
            if let Some(pool) = pool.upgrade() {
                if let Ok(mut idle) = pool.idle.lock() {
                    idle.push(runner);
                }
            }
            if let Ok(mut v) = slot.vcpu.lock() {
                *v = Some(vcpu);
            }
            slot.done.notify_all();
        });
        jobs.send(job)
            .map_err(|_| std::io::Error::other("a vCPU runner thread ended unexpectedly"))?;
        Ok(VcpuThread {
            thread,
            kind: Kind::Runner {
                finished,
                _pool: self.clone(),
            },
        })
    }

    fn start_runner(&self) -> std::io::Result<Runner> {
        let (jobs, incoming) = channel::<Job>();
        let spin = self.spin;
        let handle = std::thread::Builder::new()
            .name("vcpu".into())
            .spawn(move || {
                let filter = vmfork_isolation::seccomp::install(ThreadKind::Vcpu)
                    .map_err(crate::Error::from);
                while let Some(job) = next_job(&incoming, spin) {
                    job(&filter);
                }
            })?;
        use std::os::unix::thread::JoinHandleExt;
        // Detached: the thread ends by itself once no sender is left.
        let thread = handle.as_pthread_t();
        drop(handle);
        Ok(Runner { jobs, thread })
    }
}
