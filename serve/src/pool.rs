//! The VMs behind one function's clones: a pool of VM shells (made ahead
//! with `--warm`, or recycled from finished clones), and the reaper
//! threads that stop finished clones and recycle or close their VMs, off
//! the request path (docs/serve.md, "Recycled VMs").

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use super::limits::Slot;
use super::metrics::Metrics;
use vmfork_machine::control::StopReason;
use vmfork_machine::machine::RunningMachine;
use vmfork_machine::reset::InPlaceReset;
use vmfork_machine::shell::VmShell;
use vmfork_snapshot::state::MemoryState;

/// What becomes of a clone's VM once its request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recycle {
    /// Reused for a later clone; only the pages the clone wrote are
    /// refilled, so KVM keeps its mappings of the rest (clone/reset.rs).
    InPlace,
    /// Reused for a later clone with all of its memory dropped.
    Remap,
    /// Closed; every clone gets a VM created for it.
    Off,
}

/// VM shells ready for one function's clones: made ahead of demand
/// (`--warm`), or recycled from clones that answered their request.
pub struct ShellPool {
    shells: Mutex<Vec<VmShell>>,
    /// Shells beyond this are closed instead of kept.
    capacity: usize,
    /// Shells lent to clones that will bring them back: `--warm` counts
    /// them as ready, so it does not build more while they are out.
    lent: AtomicUsize,
    layout: MemoryState,
    recycle: Recycle,
    in_place: Option<(Arc<InPlaceReset>, Arc<File>)>,
}

impl ShellPool {
    /// `in_place`: how to reset recycled VMs in place (with
    /// `Recycle::InPlace`), and in any mode how to tell whether a clone
    /// ran guest ring 0.
    pub fn new(
        recycle: Recycle,
        warm: usize,
        max_concurrency: usize,
        layout: MemoryState,
        in_place: Option<(Arc<InPlaceReset>, Arc<File>)>,
    ) -> ShellPool {
        ShellPool {
            shells: Mutex::new(Vec::new()),
            capacity: match recycle {
                Recycle::Off => warm,
                // Twice the concurrency: requests arrive while the VMs of
                // the ones just answered are still with the reapers
                // (measured at 8 connections: 2 150 req/s with 1x, 2 570
                // with 2x, 2 610 with 4x).
                _ => warm.max(2 * max_concurrency),
            },
            lent: AtomicUsize::new(0),
            layout,
            recycle,
            in_place,
        }
    }

    /// Whether finished clones' VMs come back to this pool.
    pub fn recycles(&self) -> bool {
        self.recycle != Recycle::Off
    }

    /// Shells ready now, not counting those lent out.
    pub fn ready(&self) -> usize {
        self.shells.lock().map_or(0, |s| s.len())
    }

    /// Counts `shell` as lent (when VMs come back at all): one taken from
    /// the pool, or made on a request's path.
    pub fn lend_new(&self, shell: VmShell) -> VmShell {
        if self.recycles() {
            self.lent.fetch_add(1, Ordering::Relaxed);
        }
        shell
    }

    pub fn take(&self) -> Option<VmShell> {
        let shell = self.shells.lock().ok()?.pop()?;
        Some(self.lend_new(shell))
    }

    /// Shells ready or on their way back.
    pub fn owned(&self) -> usize {
        self.ready() + self.lent.load(Ordering::Relaxed)
    }

    /// Keeps `shell` if there is room; otherwise it is closed.
    pub fn put(&self, shell: VmShell) {
        if let Ok(mut shells) = self.shells.lock() {
            if shells.len() < self.capacity {
                shells.push(shell);
            }
        }
    }

    /// A lent shell came back as `shell`, or is gone (None).
    pub fn returned(&self, shell: Option<VmShell>) {
        self.lent.fetch_sub(1, Ordering::Relaxed);
        if let Some(shell) = shell {
            self.put(shell);
        }
    }
}

/// A clone whose invocation is over, on its way to the reapers.
pub struct Finished {
    running: RunningMachine,
    /// The pool its VM's shell was lent from.
    recycle_into: Option<Arc<ShellPool>>,
    /// Whether the clone answered normally. One that crashed, hung or
    /// misbehaved is closed, never reused.
    reusable: bool,
    /// Its running slot: the clone counts against `--max-concurrency`
    /// until it is stopped.
    slot: Option<Slot>,
}

impl Finished {
    /// `reusable`: whether the clone answered normally. One that crashed,
    /// hung or misbehaved is closed, never reused. `slot` is freed once
    /// the clone is stopped.
    pub fn new(
        running: RunningMachine,
        pool: Option<Arc<ShellPool>>,
        reusable: bool,
        slot: Option<Slot>,
    ) -> Self {
        let recycle_into = pool.filter(|p| p.recycles());
        Finished {
            running,
            recycle_into,
            reusable,
            slot,
        }
    }

    /// Whether [`Self::reap`] will recycle the VM rather than close it
    /// (which takes ~10 ms, mostly waiting in KVM).
    pub fn recycles(&self) -> bool {
        self.reusable && self.recycle_into.is_some()
    }

    /// Stops the clone, frees its slot, then recycles its VM or closes it.
    pub fn reap(self, metrics: &Metrics) {
        let stopped = self.running.stop(StopReason::Requested);
        // In this order: `vmfork_live_clones` never counts more clones
        // than slots are taken.
        metrics.live_clones.fetch_sub(1, Ordering::Relaxed);
        drop(self.slot);
        let Some(pool) = self.recycle_into else {
            return;
        };
        let shell = match stopped {
            Ok(machine) if self.reusable => {
                let in_place = pool
                    .in_place
                    .as_ref()
                    .map(|(r, f)| (r.as_ref(), f.as_ref()));
                let remap = pool.recycle == Recycle::Remap;
                match VmShell::recycle(machine, &pool.layout, in_place, remap) {
                    Ok(Some((shell, reset))) => {
                        metrics.recycled(&reset);
                        Some(shell)
                    }
                    Ok(None) => {
                        metrics.closed_after_ring0.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    Err(e) => {
                        tracing::warn!("a finished clone's VM was closed, not recycled: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        pool.returned(shell);
    }
}

/// Closing a VM takes ~10 ms on this host, mostly waiting in KVM, so
/// several reapers share the queue.
const REAPERS: usize = 16;

/// Stops and closes (or recycles) clones handed over by invocations, off
/// the request path. The threads end when every sender is dropped and the
/// queue is empty.
pub fn spawn_reapers(
    metrics: Arc<Metrics>,
) -> std::io::Result<(Sender<Finished>, Vec<std::thread::JoinHandle<()>>)> {
    let (tx, rx) = std::sync::mpsc::channel::<Finished>();
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::with_capacity(REAPERS);
    for _ in 0..REAPERS {
        let (rx, metrics) = (rx.clone(), metrics.clone());
        handles.push(
            std::thread::Builder::new()
                .name("reaper".into())
                .spawn(move || {
                    vmfork_isolation::seccomp::install_in_thread(
                        vmfork_isolation::seccomp::ThreadKind::Reaper,
                    );
                    loop {
                        let next = rx.lock().map(|r| r.recv());
                        match next {
                            Ok(Ok(finished)) => finished.reap(&metrics),
                            _ => return,
                        }
                    }
                })?,
        );
    }
    Ok((tx, handles))
}
