//! A fleet: N clones of one template started in this process, one at a
//! time, each counted as up once its guest acknowledged its resume; held
//! as long as the caller likes, then stopped together, with what they cost
//! measured around them (latencies, memory, faults, fds, threads).
//! `vmfork clone` is a fleet plus printing; `workers` spreads one over
//! processes.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::interrupt::Interrupt;
use crate::uffd::PageServerLink;
use crate::{Backend, CloneFactory, CloneOptions};
use vmfork_machine::control::{CommandChannel, StopLatch, StopReason};
use vmfork_machine::devices::console::Console;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::exec::{self, ExecOutput};
use vmfork_machine::floor::{median, percentile};
use vmfork_machine::kvm_host::KvmHost;
use vmfork_machine::machine::{proc_field_kib, Machine, RunningMachine};
use vmfork_machine::shell::VmShell;
use vmfork_machine::stop::stop_result;
use vmfork_machine::vcpu::run::Commander;
use vmfork_machine::vcpu::threads::Runners;
use vmfork_template::{LoadOptions, LoadedTemplate};

/// Where a fleet's template comes from.
#[derive(Debug, Clone)]
pub enum FleetSource {
    /// A template directory, loaded (and its memory sealed) in this process.
    Template(PathBuf),
    /// The socket of a template holder (`holder::serve`), which hands over
    /// the loaded template and its sealed memfd.
    Holder(PathBuf),
}

/// What to start: see [`Fleet::start`].
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub source: FleetSource,
    /// How many clones (at least one).
    pub count: u64,
    pub backend: Backend,
    /// With [`Backend::Uffd`]: install the recorded working set before each
    /// clone resumes (the first clone records it when there is none).
    pub prefetch: bool,
    /// Make every clone's VM ahead (warm VM shells) before the first
    /// request, so a clone only maps memory, restores and runs.
    pub shells: bool,
    /// Keep each clone's console output for [`Fleet::consoles`]; otherwise
    /// it is discarded.
    pub capture_consoles: bool,
    /// An exec request ([`vmfork_machine::exec::ExecSpec::encode`]) every
    /// clone runs right after its resume; [`Fleet::exec_results`] collects
    /// what each produced.
    pub exec: Option<Arc<Vec<u8>>>,
    /// Hash the template's rootfs image again on load (a holder's template
    /// was checked by the holder).
    pub verify_rootfs: bool,
    /// Firing it (on a stop signal) stops every clone, started or not:
    /// starts end, and a command's wait ends, without waiting for the
    /// guests.
    pub interrupt: Option<Interrupt>,
}

/// What a fleet cost, measured around its clones. Totals are over all
/// clones; divide by `count` for a clone's share.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetReport {
    pub count: u64,
    /// Each clone's time from its request to its first acknowledgement,
    /// in clone order.
    pub latencies: Vec<Duration>,
    pub p50: Duration,
    pub p99: Duration,
    /// From the first request to the last acknowledgement.
    pub total: Duration,
    /// Private dirty memory this process gained while starting them.
    pub private_kib: u64,
    /// Memory the host lost meanwhile (MemAvailable).
    pub host_kib: u64,
    /// Minor page faults of this process meanwhile (KVM's included).
    pub faults: u64,
    /// Pages served by userfaultfd handlers.
    pub uffd_faults: u64,
    /// Working-set pages each clone got before it resumed.
    pub prefetch_pages: usize,
    /// Clones whose shell had its vCPU state restored ahead of them.
    pub vcpus_restored_ahead: u64,
    pub template_load_ms: f64,
    pub shell_pool_ms: f64,
    pub teardown_ms: f64,
    pub fds_before: usize,
    pub fds_after: usize,
    pub threads_before: u64,
    /// This process's threads while every clone was up.
    pub threads_running: u64,
    /// Each restore phase's mean time since the request, in restore order.
    pub mean_phases_us: Vec<(&'static str, u64)>,
    /// F_GET_SEALS of the template's memfd (not for the file backend).
    pub memfd_seals: Option<i32>,
}

/// How long an idle vCPU runner polls for the next clone before it sleeps:
/// about one clone's restore and start into a prepared shell. (1000
/// clones in shells, p50: 259 us without polling, 129 us with 100 us of
/// it, 138 us with 300 us.)
const RUNNER_SPIN: Duration = Duration::from_micros(100);

/// How long one clone may take to acknowledge its resume.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

struct Clone {
    id: u64,
    running: RunningMachine,
    /// Acknowledgements before it resumed: its resume is the next one, an
    /// exec's result the one after.
    acks_before: u64,
    console: Arc<Mutex<Vec<u8>>>,
    /// A uffd clone's page server, to release its vCPUs if it fails.
    page_server: Option<Arc<PageServerLink>>,
}

/// What is measured before the first clone and compared after.
struct Before {
    fds: usize,
    threads: u64,
    private_kib: u64,
    available_kib: u64,
    template_load_ms: f64,
    shell_pool_ms: f64,
}

/// What telling the clones to stop found.
struct Stopping {
    /// Clones that had stopped on their own, and why.
    crashed: Vec<(u64, StopReason)>,
    /// Clones whose page server could not release their vCPUs, and why.
    stuck: Vec<(u64, String)>,
}

/// Clones that are up (or some of them: see [`Fleet::start`]).
pub struct Fleet {
    count: u64,
    factory: CloneFactory,
    /// Dropped after the factory, as the clones' vCPU threads.
    runners: Arc<Runners>,
    clones: Vec<Clone>,
    /// Why the starts ended before `count` clones were up.
    failure: Option<Error>,
    latencies: Vec<Duration>,
    phase_sums: Vec<(&'static str, u64)>,
    restored_ahead: u64,
    before: Before,
    total: Duration,
    faults: u64,
    private_kib: u64,
    host_kib: u64,
    threads_running: u64,
}

impl Fleet {
    /// Loads the template, prepares runner threads (and shells), then
    /// starts the clones one at a time, each acknowledged before the next
    /// is requested, calling `on_progress` with the number up so far.
    ///
    /// Fails when nothing could be prepared. A clone that does not come up
    /// ends the starts but not the fleet: the clones before it stay up, so
    /// their consoles show they were unaffected, and [`Fleet::stop`]
    /// returns the failure.
    pub fn start(opts: FleetOptions, mut on_progress: impl FnMut(u64)) -> Result<Fleet> {
        // /dev/kvm stays open for the life of the process once opened: open
        // it before counting fds, since it is no clone's.
        KvmHost::get()?;
        let fds = open_fds();
        let threads_before = threads();
        let private_kib = private_dirty_kib();
        let available_kib = mem_available_kib();
        let load_start = Instant::now();
        let factory = load(&opts)?;
        let template_load_ms = ms(load_start.elapsed());
        let pool_start = Instant::now();
        // vCPU threads are made ahead of time, shells or not (a thread is
        // not a VM: without shells each clone still creates its VM). A
        // clone's vCPU is handed back once the guest acknowledged and
        // parked (it needs no thread while parked), so a couple of runners
        // serve every clone's start, plus one per other vCPU of every
        // clone (those stay in KVM_RUN, waiting for their guest's IPIs).
        let runners = Runners::spinning(RUNNER_SPIN);
        let vcpus = factory.template.state.vcpus.len();
        runners.reserve(2 + opts.count as usize * vcpus.saturating_sub(1))?;
        let mut shells = Vec::new();
        if opts.shells {
            for _ in 0..opts.count {
                shells.push(factory.warm_shell(Some(&runners), None)?);
            }
        }
        let mut fleet = Fleet {
            count: opts.count,
            factory,
            runners,
            clones: Vec::with_capacity(opts.count as usize),
            failure: None,
            latencies: Vec::with_capacity(opts.count as usize),
            phase_sums: Vec::new(),
            restored_ahead: 0,
            before: Before {
                fds,
                threads: threads_before,
                private_kib,
                available_kib,
                template_load_ms,
                shell_pool_ms: ms(pool_start.elapsed()),
            },
            total: Duration::ZERO,
            faults: 0,
            private_kib: 0,
            host_kib: 0,
            threads_running: 0,
        };
        let faults_before = minor_faults();
        let first_request = Instant::now();
        fleet.failure = fleet.start_all(&opts, shells, &mut on_progress).err();
        fleet.total = first_request.elapsed();
        fleet.faults = minor_faults().saturating_sub(faults_before);
        fleet.private_kib = private_dirty_kib().saturating_sub(fleet.before.private_kib);
        fleet.host_kib = fleet
            .before
            .available_kib
            .saturating_sub(mem_available_kib());
        fleet.threads_running = threads();
        Ok(fleet)
    }

    /// Clones start one at a time: each is acknowledged before the next is
    /// requested. Without shells a clone creating its VM contended with the
    /// previous ones' page faults when overlapped (p50 2.2 -> 3.5 ms). In
    /// shells, overlapping two starts measured 1000 clones in ~250 ms
    /// against ~400 one at a time, but once runners poll for their next
    /// clone (RUNNER_SPIN), one at a time is as fast in total (~180 ms)
    /// and halves the latency: a polling runner and an overlapped start
    /// are three busy threads on two CPUs.
    fn start_all(
        &mut self,
        opts: &FleetOptions,
        mut shells: Vec<VmShell>,
        on_progress: &mut impl FnMut(u64),
    ) -> Result<()> {
        for id in 1..=opts.count {
            if opts.interrupt.as_ref().is_some_and(Interrupt::fired) {
                return Err(Error::Interrupted(format!(
                    "stopped after {} of {} clones had started",
                    id - 1,
                    opts.count
                )));
            }
            self.start_one(id, shells.pop(), opts)?;
            if id == 1 {
                // (The first clone of a --prefetch run came up alone, so
                // what it touched is the working set.)
                if let Some(pages) = self.factory.save_working_set()? {
                    tracing::info!("recorded a working set of {pages} pages");
                }
            }
            on_progress(id);
        }
        Ok(())
    }

    fn start_one(&mut self, id: u64, shell: Option<VmShell>, opts: &FleetOptions) -> Result<()> {
        let capture = opts.capture_consoles;
        let requested = Instant::now();
        let console = Arc::new(Mutex::new(Vec::new()));
        if shell.as_ref().is_some_and(|s| s.vcpus_restored.is_some()) {
            self.restored_ahead += 1;
        }
        let (machine, page_server) = self.factory.clone_vm(CloneOptions {
            clone_id: id,
            shell,
            console: if capture {
                Console::Capture(console.clone())
            } else {
                Console::Discard
            },
            requested,
            resume_command: None,
        })?;
        for (i, (name, us)) in machine.phases.iter().enumerate() {
            if self.phase_sums.len() <= i {
                self.phase_sums.push((*name, 0u64));
            }
            self.phase_sums[i].1 += us;
        }
        let commands = machine.control().commands().clone();
        let latch = machine.control().latch().clone();
        if let Some(interrupt) = &opts.interrupt {
            interrupt.watch(&latch);
        }
        let acks = commands.acks();
        // Its first park ends the run on the vCPU thread: the clone is
        // up, and the guest waits in its `in` for a command a fleet never
        // sends. With an exec, the park after the resume gets EXEC (the
        // request is in its mailbox before it runs), and the one after
        // that ends the run.
        let commander: Commander = match &opts.exec {
            None => Arc::new(|_| None),
            Some(request) => {
                exec::write_request(machine.memory(), request)?;
                Arc::new(move |n| (n == acks + 1).then_some(exec::CMD_EXEC))
            }
        };
        let running = machine.start_commanded(Some(&self.runners), commander)?;
        self.clones.push(Clone {
            id,
            running,
            acks_before: acks,
            console,
            page_server,
        });
        self.latencies
            .push(await_ack(id, &commands, &latch, acks, requested)?);
        Ok(())
    }

    /// Waits for every started clone's exec (see [`FleetOptions::exec`])
    /// until `deadline` and returns each clone's id and result, in clone
    /// order. A clone that stopped or did not answer in time gets an error
    /// of its own; the others are unaffected.
    pub fn exec_results(&self, deadline: Instant) -> Vec<(u64, Result<ExecOutput>)> {
        self.clones
            .iter()
            .map(|c| {
                let commands = c.running.control().commands();
                let result = if commands.wait_acks(c.acks_before + 2, Some(deadline)) {
                    exec::read_result(c.running.machine().memory())
                } else {
                    Err(match c.running.control().latch().reason() {
                        Some(reason) => {
                            clone_failed(c.id, &reason, "while running the command", "")
                        }
                        None => Error::Timeout(format!(
                            "clone {}: the command did not finish in time",
                            c.id
                        )),
                    })
                };
                (c.id, result)
            })
            .collect()
    }

    /// How many clones were started (up, or failed while coming up).
    pub fn started(&self) -> usize {
        self.clones.len()
    }

    /// True when every clone came up.
    pub fn all_up(&self) -> bool {
        self.failure.is_none()
    }

    /// Each started clone's id and what its console printed so far (empty
    /// unless [`FleetOptions::capture_consoles`]).
    pub fn consoles(&self) -> Vec<(u64, String)> {
        self.clones
            .iter()
            .map(|c| {
                let text = c
                    .console
                    .lock()
                    .map(|b| String::from_utf8_lossy(&b).into_owned());
                (c.id, text.unwrap_or_default())
            })
            .collect()
    }

    /// Stops every clone, closes their VMs and reports. Fails with the
    /// first thing that went wrong: a clone that could not be released
    /// from its page faults, a clone that did not come up, or clones that
    /// stopped on their own while held.
    pub fn stop(mut self) -> Result<FleetReport> {
        let teardown_start = Instant::now();
        let Stopping { crashed, stuck } = self.signal_stop();
        let mut stopped = Vec::with_capacity(self.clones.len());
        for c in std::mem::take(&mut self.clones) {
            if stuck.iter().any(|(id, _)| *id == c.id) {
                // Its vCPU cannot be woken: leave it (memory and
                // userfaultfd included, so nothing is zero-filled) to the
                // process exit.
                std::mem::forget(c.running);
                continue;
            }
            stopped.push(c.running.stop(StopReason::Requested)?);
        }
        let joined_ms = ms(teardown_start.elapsed());
        close_in_parallel(stopped);
        let teardown_ms = ms(teardown_start.elapsed());
        tracing::info!("teardown: vCPU threads joined after {joined_ms:.1} ms, VMs closed after {teardown_ms:.1} ms");
        let memfd_seals = self.factory.sealed_memory().map(|m| m.seals());
        let uffd_faults = self.factory.uffd_faults();
        let prefetch_pages = self.factory.prefetch_pages();
        let Fleet { factory, .. } = self;
        drop(factory);
        let fds_after = open_fds();
        if let Some(e) = first_failure(self.count, stuck, self.failure.take(), crashed) {
            return Err(e);
        }
        Ok(FleetReport {
            count: self.count,
            p50: median(&self.latencies),
            p99: percentile(&self.latencies, 99.0),
            latencies: std::mem::take(&mut self.latencies),
            total: self.total,
            private_kib: self.private_kib,
            host_kib: self.host_kib,
            faults: self.faults,
            uffd_faults,
            prefetch_pages,
            vcpus_restored_ahead: self.restored_ahead,
            template_load_ms: self.before.template_load_ms,
            shell_pool_ms: self.before.shell_pool_ms,
            teardown_ms,
            fds_before: self.before.fds,
            fds_after,
            threads_before: self.before.threads,
            threads_running: self.threads_running,
            mean_phases_us: self
                .phase_sums
                .iter()
                .map(|(name, us)| (*name, us / self.count))
                .collect(),
            memfd_seals,
        })
    }

    /// Tells every clone to stop first, so their vCPU threads wind down in
    /// parallel instead of one join at a time.
    fn signal_stop(&self) -> Stopping {
        let (mut crashed, mut stuck) = (Vec::new(), Vec::new());
        for c in &self.clones {
            let latch = c.running.control().latch();
            // A clone that ended itself with status 0 (poweroff, halt or
            // reboot in a Linux guest) while held did nothing wrong.
            let reason = latch
                .reason()
                .filter(|r| !matches!(r, StopReason::Requested | StopReason::GuestExit(0)));
            let unacknowledged = c.running.control().commands().first_ack_at().is_none();
            let failed = reason.is_some();
            if let Some(r) = reason {
                crashed.push((c.id, r));
            }
            latch.stop(StopReason::Requested);
            // A failed clone's vCPU may wait in a fault its page server
            // will never serve, and a kick does not end that wait on this
            // host.
            if let (true, Some(link)) = (failed || unacknowledged, &c.page_server) {
                if let Err(e) = link.release_waiters() {
                    stuck.push((c.id, e));
                }
            }
        }
        Stopping { crashed, stuck }
    }
}

/// Which failure a stop reports: an unreleasable clone first (it is left
/// running), then the start that failed, then the clones that stopped on
/// their own while held.
fn first_failure(
    count: u64,
    stuck: Vec<(u64, String)>,
    start: Option<Error>,
    crashed: Vec<(u64, StopReason)>,
) -> Option<Error> {
    if let Some((id, why)) = stuck.first() {
        return Some(Error::PageServer(format!(
            "clone {id} could not be released from its page faults: {why}"
        )));
    }
    if start.is_some() {
        return start;
    }
    let (id, reason) = crashed.first()?;
    let ids: Vec<String> = crashed.iter().map(|(id, _)| id.to_string()).collect();
    let all = format!(
        " ({} of {count} clones failed: {})",
        ids.len(),
        ids.join(", ")
    );
    Some(clone_failed(*id, reason, "while held", &all))
}

fn load(opts: &FleetOptions) -> Result<CloneFactory> {
    match &opts.source {
        FleetSource::Holder(sock) => {
            let (template, sealed) = crate::holder::fetch(sock)?;
            CloneFactory::with_memory(template, Some(sealed), opts.backend, opts.prefetch)
        }
        FleetSource::Template(dir) => {
            let load = LoadOptions {
                verify_rootfs: opts.verify_rootfs,
                ..LoadOptions::default()
            };
            let template = LoadedTemplate::load_with(dir, load)?;
            CloneFactory::new(template, opts.backend, opts.prefetch)
        }
    }
}

/// Waits for a started clone's first acknowledgement and returns its
/// latency from the request. The deadline also covers a clone whose vCPU
/// waits on a stalled page server: teardown releases it from the fault.
fn await_ack(
    id: u64,
    commands: &CommandChannel,
    latch: &StopLatch,
    acks: u64,
    requested: Instant,
) -> Result<Duration> {
    if !commands.wait_acks(acks + 1, Some(requested + ACK_TIMEOUT)) {
        return Err(match latch.reason() {
            Some(reason) => clone_failed(id, &reason, "before acknowledging", ""),
            None => Error::Timeout(format!(
                "clone {id} did not acknowledge within {} s",
                ACK_TIMEOUT.as_secs()
            )),
        });
    }
    Ok(commands.first_ack_at().unwrap_or(requested.elapsed()))
}

/// The error for a clone that stopped on its own `when`. A dead page
/// server has its own exit status; anything else counts as a crash.
fn clone_failed(id: u64, reason: &StopReason, when: &str, also: &str) -> Error {
    match reason {
        StopReason::PageServerDied(why) => {
            Error::PageServer(format!("clone {id} stopped {when}: {why}{also}"))
        }
        StopReason::GuestExit(0) => Error::GuestEnded(format!(
            "clone {id} ended itself with status 0 {when} (poweroff, halt or reboot in the guest){also}"
        )),
        other => {
            // The same words `vmfork boot` would use for this stop.
            let why = match stop_result(other) {
                Err(e) => e.to_string(),
                Ok(()) => format!("{other:?}"),
            };
            Error::GuestCrash(format!("clone {id} stopped {when}: {why}{also}"))
        }
    }
}

/// Closing a VM costs ~10 ms on this host, mostly waiting inside KVM, so
/// VMs are closed from several threads at once.
fn close_in_parallel(machines: Vec<Machine>) {
    const CLOSERS: usize = 32;
    let per_thread = machines.len().div_ceil(CLOSERS).max(1);
    let mut machines = machines;
    std::thread::scope(|scope| {
        while !machines.is_empty() {
            let batch: Vec<_> = machines.drain(..per_thread.min(machines.len())).collect();
            // Should the thread not start, the closure and its batch are
            // dropped right here, which closes them all the same.
            let _ = std::thread::Builder::new()
                .name("closer".into())
                .spawn_scoped(scope, move || {
                    vmfork_isolation::seccomp::install_in_thread(
                        vmfork_isolation::seccomp::ThreadKind::Reaper,
                    );
                    drop(batch)
                });
        }
    });
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// This process's open file descriptors.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Minor page faults of this process so far; KVM's faults on guest memory
/// are counted here too, so the delta per clone shows what a clone touches.
fn minor_faults() -> u64 {
    // SAFETY: getrusage fills a local struct.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage.ru_minflt as u64
    }
}

fn threads() -> u64 {
    proc_field_kib("/proc/self/status", "Threads:")
}

fn private_dirty_kib() -> u64 {
    proc_field_kib("/proc/self/smaps_rollup", "Private_Dirty:")
}

/// The host's MemAvailable, in KiB.
pub fn mem_available_kib() -> u64 {
    proc_field_kib("/proc/meminfo", "MemAvailable:")
}
