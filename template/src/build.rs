//! Building a template: cold-boot a machine to its ready point (the guest
//! parked in its first wait for work, right after READY) and snapshot it
//! there. `vmfork template build` and `serve`'s deploy API both use it.

use std::path::Path;
use std::time::{Duration, Instant};

use vmfork_machine::control::{StopLatch, StopReason};
use vmfork_machine::error::{Error, Result};
use vmfork_machine::exec::ExecEntry;
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
    let latch = machine.control().latch().clone();
    on_latch(&latch);
    let commands = machine.control().commands().clone();
    let running = machine.start()?;
    let deadline = Instant::now() + timeout;
    let parked = commands.wait_parked(Some(deadline)) && commands.ready_at().is_some();
    if !parked {
        let reason = latch.reason().unwrap_or(StopReason::Timeout(timeout));
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
