//! Building a template: cold-boot a machine to its ready point (the guest
//! parked in its first wait for work, right after READY) and snapshot it
//! there. `vmfork template build` and `serve`'s deploy API both use it.

use std::path::Path;
use std::time::{Duration, Instant};

use vmfork_machine::control::{StopLatch, StopReason};
use vmfork_machine::error::{Error, Result};
use vmfork_machine::exec::{self, ExecEntry};
use vmfork_machine::machine::{Machine, MachineConfig};
use vmfork_machine::stop::stop_result;

use crate::SnapshotReport;

/// What a build saw.
pub struct Built {
    /// From the start of the boot to the guest's READY.
    pub ready_at: Duration,
    pub report: SnapshotReport,
}

/// Boots `config` and saves the template to `out` (which must not exist)
/// once the guest is parked at its ready point, within `timeout`. `exec`
/// makes it a program function's template. `on_latch` sees the machine's
/// stop latch once it runs (to stop it on a signal); `step` is told what
/// the build is doing.
pub fn build(
    config: MachineConfig,
    out: &Path,
    timeout: Duration,
    exec: Option<ExecEntry>,
    on_latch: impl FnOnce(&StopLatch),
    step: impl Fn(&str),
) -> Result<Built> {
    if out.exists() {
        return Err(Error::Template {
            path: out.to_path_buf(),
            reason: "already exists; refusing to overwrite it".into(),
        });
    }
    step("booting the guest");
    let mem = config.mem_size;
    let machine = Machine::cold_boot(config)?;
    let lambda = exec.as_ref().and_then(|e| Some((e, e.lambda.as_ref()?)));
    if let Some((entry, lambda)) = lambda {
        // The agent looks for its function in the mailbox at start; the
        // firmware-less boot leaves the reserved mailbox as written here.
        let request = vmfork_machine::lambda::init_spec(entry, lambda).encode()?;
        vmfork_machine::exec::write_request(machine.memory(), &request)?;
    }
    let latch = machine.control().latch().clone();
    on_latch(&latch);
    let commands = machine.control().commands().clone();
    let running = machine.start()?;
    let deadline = Instant::now() + timeout;
    let parked = commands.wait_parked(Some(deadline)) && commands.ready_at().is_some();
    if !parked {
        let reason = latch.reason().unwrap_or(StopReason::Timeout(timeout));
        if lambda.is_some() {
            // The agent's own account of the function's init, if it wrote
            // one before ending the VM.
            let report = exec::read_result(running.machine().memory());
            let _ = running.stop(reason.clone());
            if let Ok(output) = report {
                return Err(init_failed(&output));
            }
            stop_result(&reason)?;
            return Err(Error::Timeout(format!(
                "the Lambda function did not wait for its first invocation within {:.1} s \
                 (its output is on the console)",
                timeout.as_secs_f64()
            )));
        }
        let _ = running.stop(reason.clone());
        stop_result(&reason)?;
        return Err(Error::Timeout(format!(
            "the guest did not reach its ready point within {:.1} s",
            timeout.as_secs_f64()
        )));
    }
    let ready_at = commands.ready_at().unwrap_or(Duration::ZERO);
    step(&format!(
        "ready in {:.0} ms; writing {} MiB of guest memory",
        ready_at.as_secs_f64() * 1e3,
        mem >> 20,
    ));
    let mut machine = running.pause()?;
    let report = crate::snapshot_with(&mut machine, out, false, exec)?;
    Ok(Built { ready_at, report })
}

/// How many lines of a failed init's output an error shows.
const INIT_OUTPUT_LINES: usize = 20;

/// A Lambda function that did not reach its first `next`: the agent's
/// reason (its last line of stderr), then the end of the function's output.
fn init_failed(output: &exec::ExecOutput) -> Error {
    let text = String::from_utf8_lossy(&output.stderr);
    let mut lines: Vec<&str> = text.lines().collect();
    let why = lines
        .pop()
        .map(|l| l.trim_start_matches("vmfork-agent: "))
        .unwrap_or("it ended")
        .to_string();
    let tail = &lines[lines.len().saturating_sub(INIT_OUTPUT_LINES)..];
    let shown = if tail.is_empty() {
        "its output was empty".to_string()
    } else {
        format!("its output:\n  {}", tail.join("\n  "))
    };
    Error::FunctionInit(format!(
        "the Lambda function failed during init, before its first invocation: {why}; {shown}"
    ))
}
