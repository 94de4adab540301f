//! The owner of a running VM: waits for it to stop, and serves requests
//! from its control socket (snapshot, ping, pause, resume, stop) in between.

use std::path::Path;
use std::time::{Duration, Instant};

use vmfork_machine::control::{
    Answer, Control, OwnerEvent, Refusal, Reply, RequestKind, SnapshotDone, StopReason,
};
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
    run_then(machine, ready_timeout, || Ok(()))
}

/// `run`, calling `started` once the vCPUs run: work the guest does not
/// wait for (a signal thread, a watchdog) then overlaps with the guest's
/// first steps instead of delaying them. A `started` error stops the VM
/// and is returned.
pub fn run_then(
    machine: Machine,
    ready_timeout: Option<Duration>,
    started: impl FnOnce() -> Result<()>,
) -> Result<(StopReason, Machine)> {
    let requests = machine.control().requests().clone();
    let running = machine.start()?;
    if let Err(e) = started() {
        running.stop(StopReason::Requested)?;
        return Err(e);
    }
    let mut vm = Vm::Running(running);
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

fn handle(vm: Vm, kind: &RequestKind) -> Result<(Vm, Answer)> {
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
            (Vm::Paused(running.pause()?), Ok(Reply::Paused))
        }
        (Vm::Paused(machine), RequestKind::Resume) => {
            (Vm::Running(machine.start()?), Ok(Reply::Resumed))
        }
        (vm @ Vm::Paused(_), RequestKind::Command(_)) => (vm, Err(Refusal::Paused)),
        (vm @ Vm::Paused(_), RequestKind::Pause) => (vm, Err(Refusal::AlreadyPaused)),
        (vm @ Vm::Running(_), RequestKind::Resume) => (vm, Err(Refusal::NotPaused)),
    })
}

/// Sends `command` to the parked guest and waits for its acknowledgement.
/// A guest that is not parked (busy, or not a vmfork guest) only fails the
/// request. A guest that takes the command and stays silent breaks the ABI
/// (every command but EXIT is acknowledged) and may never answer again, so
/// it is stopped with a reason saying so, as `vmfork serve` stops a clone
/// that does not answer INVOKE.
fn command_answer(control: &Control, command: u32) -> Answer {
    let start = Instant::now();
    // Only a guest parked in its `in` is between commands: until then an
    // acknowledgement may still belong to the previous one (for instance
    // RESUMED right after a restore).
    let commands = control.commands();
    if !commands.wait_parked(Some(start + PING_TIMEOUT)) {
        return Err(Refusal::NotWaiting(PING_TIMEOUT));
    }
    let before = commands.acks();
    let sent = Instant::now();
    commands.send_command(command);
    if commands.wait_acks(before + 1, Some(sent + PING_TIMEOUT)) {
        return Ok(Reply::Acknowledged {
            ack_us: start.elapsed().as_micros() as u64,
        });
    }
    if control.latch().reason().is_some() {
        return Err(Refusal::StoppedBeforeAck);
    }
    if commands.command_pending() {
        return Err(Refusal::NotTaken);
    }
    let why = format!(
        "the guest took command {} but did not acknowledge it within {:.1} s",
        ready_port::command_name(command),
        PING_TIMEOUT.as_secs_f64()
    );
    control.latch().stop(StopReason::Unresponsive(why.clone()));
    Err(Refusal::Unresponsive(why))
}

fn snapshot_answer(machine: &mut Machine, out: &Path, diff: bool) -> Answer {
    let start = Instant::now();
    crate::snapshot(machine, out, diff)
        .map(|report| {
            Reply::Snapshot(SnapshotDone {
                out: report.dir,
                snapshot_us: start.elapsed().as_micros() as u64,
                state_bytes: report.state_bytes,
                memory_bytes: report.memory_bytes,
                memory_written_bytes: report.memory_written,
                dirty_pages: report.dirty_pages,
                dirty_scan_us: report.dirty_scan_us,
            })
        })
        .map_err(Refusal::Snapshot)
}
