//! `vmfork clone --processes P`: the clones spread over P worker processes.
//! This process loads the template once and serves its sealed memfd as a
//! template holder; each worker is `vmfork clone --holder SOCK --worker`.
//! Why: every KVM VM registers an MMU notifier on its process's address
//! space, so memory operations in a process with N VMs get slower as N
//! grows; workers keep N per process small and use every core.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::clone::{BackendArg, CloneArgs};
use vmfork_machine::error::{Error, Result};
use vmfork_machine::floor;

struct Worker {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

fn mem_available_kib() -> u64 {
    vmfork_machine::machine::proc_field_kib("/proc/meminfo", "MemAvailable:")
}

pub fn run(args: &CloneArgs, count: u64, processes: u64, started: Instant) -> Result<()> {
    let dir = args
        .template
        .clone()
        .ok_or_else(|| Error::InvalidArgument("--processes needs a TEMPLATE directory".into()))?;
    let backend = args.backend.name();
    if let BackendArg::File = args.backend {
        return Err(Error::InvalidArgument(
            "--processes shares a memfd: use --backend memfd or uffd".into(),
        ));
    }
    let floor_us = floor::median(&floor::measure(50)?).as_micros() as u64;
    let sock = std::env::temp_dir().join(format!("vmfork-holder-{}.sock", std::process::id()));
    let stop = Arc::new(AtomicBool::new(false));
    let holder = {
        let (dir, sock, stop) = (dir.clone(), sock.clone(), stop.clone());
        std::thread::Builder::new()
            .name("holder".into())
            .spawn(move || vmfork_clone::holder::serve(&dir, &sock, stop))?
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        if holder.is_finished() || Instant::now() > deadline {
            stop.store(true, Ordering::Release);
            return match holder.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(Error::Control("the template holder did not start".into())),
            };
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let available_before = mem_available_kib();
    let exe = std::env::current_exe()?;
    let first_request = Instant::now();
    let mut workers = Vec::new();
    for w in 0..processes {
        let share = count / processes + u64::from(w < count % processes);
        if share == 0 {
            continue;
        }
        let mut cmd = Command::new(&exe);
        cmd.args(["clone", "--holder"]).arg(&sock).args([
            "-n",
            &share.to_string(),
            "--backend",
            backend,
            "--json",
            "--worker",
        ]);
        if args.shells {
            cmd.arg("--shells");
        }
        if args.prefetch {
            cmd.arg("--prefetch");
        }
        if !vmfork_isolation::seccomp::enabled() {
            cmd.arg("--no-seccomp");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| Error::Control("worker stdout".into()))?;
        workers.push(Worker {
            child,
            lines: BufReader::new(stdout).lines(),
        });
    }
    let mut failure = None;
    for w in &mut workers {
        match w.lines.next() {
            Some(Ok(line)) if line == "clones-up" => {}
            _ => {
                failure = Some(Error::Control(
                    "a clone worker failed before its clones were up".into(),
                ))
            }
        }
    }
    let failed_early = failure.is_some();
    let total = first_request.elapsed();
    let host_kib = available_before.saturating_sub(mem_available_kib());
    if failure.is_none() {
        std::thread::sleep(args.hold);
    }
    // Closing each worker's stdin ends its hold; it tears down and reports.
    let mut latencies = Vec::new();
    let (mut private_kib, mut fd_leaks) = (0u64, 0i64);
    for mut w in workers {
        drop(w.child.stdin.take());
        let report = w.lines.by_ref().map_while(|l| l.ok()).last();
        let status = w.child.wait()?;
        match report.and_then(|r| serde_json::from_str::<serde_json::Value>(&r).ok()) {
            Some(r) if status.success() => {
                latencies.extend(
                    r["latencies_us"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_u64())
                        .map(Duration::from_micros),
                );
                private_kib += r["private_kib"].as_u64().unwrap_or(0);
                fd_leaks +=
                    r["fds_after"].as_i64().unwrap_or(0) - r["fds_before"].as_i64().unwrap_or(0);
            }
            // A worker that exits with a status printed its own error line
            // (its stderr is ours): pass its status on without a second.
            _ => match status.code().filter(|c| *c != 0) {
                Some(code) if failure.is_none() || failed_early => {
                    failure = Some(Error::Reported(code));
                }
                _ => {
                    failure = failure.or(Some(Error::Control(format!(
                        "a clone worker exited with {status}"
                    ))))
                }
            },
        }
    }
    stop.store(true, Ordering::Release);
    let _ = holder.join();
    if let Some(e) = failure {
        return Err(e);
    }
    let summary = json!({
        "clones": count,
        "processes": processes,
        "backend": backend,
        "clone_p50_us": floor::median(&latencies).as_micros() as u64,
        "clone_p99_us": floor::percentile(&latencies, 99.0).as_micros() as u64,
        "total_ms": total.as_secs_f64() * 1e3,
        "private_kib_per_clone": private_kib / count,
        "host_kib_per_clone": host_kib / count,
        "floor_us": floor_us,
        "worker_fd_leaks": fd_leaks,
        "elapsed_ms": started.elapsed().as_secs_f64() * 1e3,
    });
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{summary}");
    Ok(())
}
