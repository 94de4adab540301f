//! A fleet spread over worker processes. This process loads the template
//! once and serves its sealed memfd as a template holder; each worker runs
//! a [`Fleet`](crate::fleet::Fleet) of its share of the clones from it.
//! Why: every KVM VM registers an MMU notifier on its process's address
//! space, so memory operations in a process with N VMs get slower as N
//! grows; workers keep N per process small and use every core.
//!
//! The worker protocol, on the worker's stdin and stdout: the worker
//! prints [`CLONES_UP`] once every clone acknowledged, holds them until its
//! stdin closes, then tears down and prints its report as the last line,
//! JSON with at least the keys [`WorkerReport::from_json`] reads. Only the
//! caller knows how to run a worker (its own command line), so it builds
//! each worker's [`Command`]; this module pipes, spawns and reads it.

use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fleet::{mem_available_kib, FleetReport};
use crate::Backend;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::floor::{median, percentile};

/// What a worker prints once all of its clones are up.
pub const CLONES_UP: &str = "clones-up";

/// How long the template holder may take to load the template.
const HOLDER_START_TIMEOUT: Duration = Duration::from_secs(30);

/// What to start: see [`Workers::start`].
#[derive(Debug, Clone)]
pub struct WorkersOptions {
    pub template: PathBuf,
    /// Clones over all workers.
    pub count: u64,
    /// How many worker processes (fewer when there are fewer clones).
    pub processes: u64,
    /// Memfd or uffd: the workers share the holder's memfd.
    pub backend: Backend,
}

impl WorkersOptions {
    /// Refuses what workers cannot do, before anything starts.
    pub fn validate(&self) -> Result<()> {
        if self.backend == Backend::File {
            return Err(Error::InvalidArgument(
                "--processes shares a memfd: use --backend memfd or uffd".into(),
            ));
        }
        Ok(())
    }
}

/// One worker's share of a run: what `Workers` needs from its report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerReport {
    pub latencies: Vec<Duration>,
    pub private_kib: u64,
    pub fds_before: i64,
    pub fds_after: i64,
}

impl WorkerReport {
    /// The keys a worker adds to its report line, from its fleet's report.
    pub fn from_fleet(report: &FleetReport) -> WorkerReport {
        WorkerReport {
            latencies: report.latencies.clone(),
            private_kib: report.private_kib,
            fds_before: report.fds_before as i64,
            fds_after: report.fds_after as i64,
        }
    }

    /// Reads a worker's report line (missing keys count as zero).
    pub fn from_json(line: &str) -> Option<WorkerReport> {
        let r: serde_json::Value = serde_json::from_str(line).ok()?;
        Some(WorkerReport {
            latencies: r["latencies_us"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_u64())
                .map(Duration::from_micros)
                .collect(),
            private_kib: r["private_kib"].as_u64().unwrap_or(0),
            fds_before: r["fds_before"].as_i64().unwrap_or(0),
            fds_after: r["fds_after"].as_i64().unwrap_or(0),
        })
    }
}

/// What the run cost, over all workers.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkersReport {
    pub count: u64,
    pub processes: u64,
    pub p50: Duration,
    pub p99: Duration,
    /// From the first worker's start until every worker said its clones
    /// were up.
    pub total: Duration,
    /// Private dirty memory the workers gained starting their clones.
    pub private_kib: u64,
    /// Memory the host lost meanwhile (MemAvailable).
    pub host_kib: u64,
    /// File descriptors the workers had open after teardown and not before.
    pub fd_leaks: i64,
}

struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

/// Running workers and the holder they take their template from.
pub struct Workers {
    opts: WorkersOptions,
    holder: JoinHandle<Result<u64>>,
    stop_holder: Arc<AtomicBool>,
    workers: Vec<Worker>,
    /// Set when a worker failed before its clones were up.
    failure: Option<Error>,
    total: Duration,
    host_kib: u64,
}

impl Workers {
    /// Starts the template holder, then `processes` workers, each built by
    /// `worker(holder_socket, clones)`, and waits until every worker's
    /// clones are up (or one failed: [`Workers::all_up`]).
    pub fn start(
        opts: WorkersOptions,
        mut worker: impl FnMut(&Path, u64) -> Command,
    ) -> Result<Workers> {
        opts.validate()?;
        let sock = std::env::temp_dir().join(format!("vmfork-holder-{}.sock", std::process::id()));
        let stop_holder = Arc::new(AtomicBool::new(false));
        let holder = start_holder(&opts.template, &sock, &stop_holder)?;
        let mut this = Workers {
            opts,
            holder,
            stop_holder,
            workers: Vec::new(),
            failure: None,
            total: Duration::ZERO,
            host_kib: 0,
        };
        let available_before = mem_available_kib();
        let first_request = Instant::now();
        let (count, processes) = (this.opts.count, this.opts.processes);
        for w in 0..processes {
            let share = count / processes + u64::from(w < count % processes);
            if share > 0 {
                this.workers.push(spawn(worker(&sock, share))?);
            }
        }
        for w in &mut this.workers {
            if !matches!(w.lines.next(), Some(Ok(line)) if line == CLONES_UP) {
                this.failure = Some(Error::Control(
                    "a clone worker failed before its clones were up".into(),
                ));
            }
        }
        this.total = first_request.elapsed();
        this.host_kib = available_before.saturating_sub(mem_available_kib());
        Ok(this)
    }

    /// True when every worker's clones came up.
    pub fn all_up(&self) -> bool {
        self.failure.is_none()
    }

    /// Ends every worker's hold (by closing its stdin), waits for their
    /// reports and stops the holder. A worker that exits with a status
    /// printed its own error line (its stderr is the caller's): the error
    /// is then [`Error::Reported`] with that status, so the caller adds
    /// no second one.
    pub fn stop(mut self) -> Result<WorkersReport> {
        let failed_early = self.failure.is_some();
        let mut latencies = Vec::new();
        let (mut private_kib, mut fd_leaks) = (0u64, 0i64);
        for mut w in std::mem::take(&mut self.workers) {
            drop(w.child.stdin.take());
            let report = w.lines.by_ref().map_while(|l| l.ok()).last();
            let status = w.child.wait()?;
            match report.as_deref().and_then(WorkerReport::from_json) {
                Some(r) if status.success() => {
                    latencies.extend(r.latencies);
                    private_kib += r.private_kib;
                    fd_leaks += r.fds_after - r.fds_before;
                }
                _ => match status.code().filter(|c| *c != 0) {
                    Some(code) if self.failure.is_none() || failed_early => {
                        self.failure = Some(Error::Reported(code));
                    }
                    _ => {
                        self.failure = self.failure.take().or(Some(Error::Control(format!(
                            "a clone worker exited with {status}"
                        ))))
                    }
                },
            }
        }
        self.stop_holder.store(true, Ordering::Release);
        let _ = self.holder.join();
        if let Some(e) = self.failure {
            return Err(e);
        }
        Ok(WorkersReport {
            count: self.opts.count,
            processes: self.opts.processes,
            p50: median(&latencies),
            p99: percentile(&latencies, 99.0),
            total: self.total,
            private_kib,
            host_kib: self.host_kib,
            fd_leaks,
        })
    }
}

/// Serves `template` on `sock` from a thread, and returns once it listens.
/// Waiting for the holder's own word (not for the socket file to appear)
/// matters: a socket file left by a killed process with the same pid
/// would otherwise send the workers to a dead socket.
fn start_holder(
    template: &Path,
    sock: &Path,
    stop: &Arc<AtomicBool>,
) -> Result<JoinHandle<Result<u64>>> {
    let (listening, ready) = std::sync::mpsc::channel();
    let holder = {
        let (dir, sock, stop) = (template.to_path_buf(), sock.to_path_buf(), stop.clone());
        std::thread::Builder::new()
            .name("holder".into())
            .spawn(move || {
                crate::holder::serve(&dir, &sock, stop, move || {
                    let _ = listening.send(());
                })
            })?
    };
    match ready.recv_timeout(HOLDER_START_TIMEOUT) {
        Ok(()) => Ok(holder),
        Err(e) => {
            // Disconnected: the holder ended before it listened, and says
            // why; Timeout: it is still loading, and is told to stop.
            stop.store(true, Ordering::Release);
            match (e, holder.join()) {
                (std::sync::mpsc::RecvTimeoutError::Disconnected, Ok(Err(e))) => Err(e),
                _ => Err(Error::Control("the template holder did not start".into())),
            }
        }
    }
}

fn spawn(mut cmd: Command) -> Result<Worker> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Control("worker stdout".into()))?;
    Ok(Worker {
        child,
        lines: BufReader::new(stdout).lines(),
    })
}
