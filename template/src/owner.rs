//! The owner of a running VM: waits for it to stop, and serves requests
//! from its control socket (snapshot, ping, pause, resume, stop) in between.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use vmfork_machine::control::{Control, OwnerEvent, RequestKind, StopReason};
use vmfork_machine::devices::ready_port;
use vmfork_machine::error::Result;
use vmfork_machine::machine::{Machine, RunningMachine};

enum Vm {
    Running(RunningMachine),
    Paused(Machine),
}

/// How long a command waits for the guest to park, and then for its
/// acknowledgement. The default guest acknowledges within milliseconds.
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the VM until it stops, serving control requests. Returns why it
/// stopped and the machine (vCPUs joined).
pub fn run(machine: Machine, ready_timeout: Option<Duration>) -> Result<(StopReason, Machine)> {
    let requests = machine.control().requests().clone();
    let mut vm = Vm::Running(machine.start()?);
    let reason = loop {
        match requests.wait_event(ready_timeout) {
            OwnerEvent::Stopped(reason) => break reason,
            OwnerEvent::Request(request) => {
                let (next, answer) = handle(vm, &request.kind)?;
                vm = next;
                let _ = request.reply.send(answer);
            }
        }
    };
    let machine = match vm {
        Vm::Running(running) => running.stop(reason.clone())?,
        Vm::Paused(machine) => machine,
    };
    Ok((reason, machine))
}

fn handle(vm: Vm, kind: &RequestKind) -> Result<(Vm, std::result::Result<String, String>)> {
    Ok(match (vm, kind) {
        (Vm::Running(running), RequestKind::Snapshot { out, diff }) => {
            let mut machine = running.pause()?;
            let answer = snapshot_answer(&mut machine, out, *diff);
            (Vm::Running(machine.start()?), answer)
        }
        (Vm::Paused(mut machine), RequestKind::Snapshot { out, diff }) => {
            let answer = snapshot_answer(&mut machine, out, *diff);
            (Vm::Paused(machine), answer)
        }
        (Vm::Running(running), RequestKind::Command(command)) => {
            let answer = command_answer(running.control(), *command);
            (Vm::Running(running), answer)
        }
        (Vm::Running(running), RequestKind::Pause) => {
            (Vm::Paused(running.pause()?), Ok("paused".into()))
        }
        (Vm::Paused(machine), RequestKind::Resume) => {
            (Vm::Running(machine.start()?), Ok("resumed".into()))
        }
        (vm @ Vm::Paused(_), RequestKind::Command(_)) => (vm, Err("the VM is paused".into())),
        (vm @ Vm::Paused(_), RequestKind::Pause) => (vm, Err("the VM is already paused".into())),
        (vm @ Vm::Running(_), RequestKind::Resume) => (vm, Err("the VM is not paused".into())),
    })
}

/// Sends `command` to the parked guest and waits for its acknowledgement.
/// A guest that is not parked (busy, or not a vmfork guest) only fails the
/// request. A guest that takes the command and stays silent breaks the ABI
/// (every command but EXIT is acknowledged) and may never answer again, so
/// it is stopped with a reason saying so, as `vmfork serve` stops a clone
/// that does not answer INVOKE.
fn command_answer(control: &Control, command: u32) -> std::result::Result<String, String> {
    let start = Instant::now();
    // Only a guest parked in its `in` is between commands: until then an
    // acknowledgement may still belong to the previous one (for instance
    // RESUMED right after a restore).
    let commands = control.commands();
    if !commands.wait_parked(Some(start + PING_TIMEOUT)) {
        return Err(format!(
            "the guest did not wait for a command within {:.1} s",
            PING_TIMEOUT.as_secs_f64()
        ));
    }
    let before = commands.acks();
    let sent = Instant::now();
    commands.send_command(command);
    if commands.wait_acks(before + 1, Some(sent + PING_TIMEOUT)) {
        return Ok(json!({"ack_us": start.elapsed().as_micros() as u64}).to_string());
    }
    if control.latch().reason().is_some() {
        return Err("the VM stopped before the guest acknowledged".into());
    }
    if commands.command_pending() {
        return Err("the guest did not take the command".into());
    }
    let why = format!(
        "the guest took command {} but did not acknowledge it within {:.1} s",
        ready_port::command_name(command),
        PING_TIMEOUT.as_secs_f64()
    );
    control.latch().stop(StopReason::Unresponsive(why.clone()));
    Err(format!("{why}; the VM is stopped"))
}

fn snapshot_answer(
    machine: &mut Machine,
    out: &Path,
    diff: bool,
) -> std::result::Result<String, String> {
    let start = Instant::now();
    crate::snapshot(machine, out, diff)
        .map(|report| {
            json!({
                "out": report.dir,
                "snapshot_us": start.elapsed().as_micros() as u64,
                "state_bytes": report.state_bytes,
                "memory_bytes": report.memory_bytes,
                "memory_written_bytes": report.memory_written,
                "dirty_pages": report.dirty_pages,
                "dirty_scan_us": report.dirty_scan_us,
            })
            .to_string()
        })
        .map_err(|e| e.to_string())
}
