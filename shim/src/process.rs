//! One container's process: `vmfork clone TEMPLATE -n 1 -- ARGS`, its
//! output copied to containerd's FIFOs without vmfork's `clone 1: ` line
//! prefixes, and its exit status.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};
use crate::spec::{Kind, Program};

/// How long a module may run: `vmfork clone` kills a command after
/// `--exec-timeout` (60 s by default); a container runs until it ends or
/// is killed, so the shim asks for a long one (a week).
const EXEC_TIMEOUT_SECONDS: &str = "604800";

/// The prefix `vmfork clone` puts before every line clone 1 printed.
const CLONE_PREFIX: &[u8] = b"clone 1: ";

/// containerd's stdio paths for the container (empty: none).
#[derive(Debug, Clone, Default)]
pub struct Stdio3 {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

/// The exit of a finished process: status and when (seconds, nanos).
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub status: u32,
    pub at: std::time::SystemTime,
}

/// The state a waiter blocks on.
#[derive(Default)]
pub struct ExitCell {
    exit: Mutex<Option<Exit>>,
    cond: Condvar,
    /// The signal a kill request asked for, when the shim ended vmfork
    /// with SIGKILL in its place (0: none).
    requested: AtomicU32,
}

impl ExitCell {
    /// Remembers that `signal` was asked for: vmfork's SIGKILL is then
    /// reported as death by `signal`.
    pub fn note_kill(&self, signal: u32) {
        self.requested.store(signal, Ordering::SeqCst);
    }

    pub fn set(&self, exit: Exit) {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(exit);
        self.cond.notify_all();
    }

    pub fn get(&self) -> Option<Exit> {
        *self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wait(&self) -> Exit {
        let mut slot = self.exit.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(exit) = *slot {
                return exit;
            }
            slot = self.cond.wait(slot).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// The `vmfork clone` command line for a container's program.
pub fn command(bin: &Path, template: &Path, program: &Program, stdin: bool) -> Command {
    let mut cmd = Command::new(bin);
    cmd.arg("clone")
        .arg(template)
        .args(["-n", "1", "--exec-timeout", EXEC_TIMEOUT_SECONDS]);
    for entry in &program.env {
        cmd.arg("--env").arg(entry);
    }
    // A WASI module has no working directory to start in; a Linux
    // program starts in the image's WorkingDir.
    if let Kind::Linux { .. } = program.kind {
        cmd.arg("--cwd").arg(&program.cwd);
    }
    if stdin {
        // vmfork reads it to the end before the module starts.
        cmd.args(["--stdin", "-"]);
    }
    cmd.arg("--").args(&program.args);
    cmd
}

/// Spawns the command with piped output, copies the output to `stdio`'s
/// FIFOs in two threads, and returns the child's pid. A third thread waits
/// for the child and the copies, then sets `exit` and calls `on_exit`.
pub fn spawn(
    mut cmd: Command,
    stdio: &Stdio3,
    stdin: Option<Arc<crate::stdin::Stdin>>,
    exit: Arc<ExitCell>,
    on_exit: impl FnOnce(Exit) + Send + 'static,
) -> Result<u32> {
    let bin = PathBuf::from(cmd.get_program());
    let mut child: Child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn { bin, source })?;
    let pid = child.id();
    if let (Some(feed), Some(pipe)) = (stdin, child.stdin.take()) {
        feed.started();
        feed.feed(pipe);
    }
    let copies: Vec<JoinHandle<()>> = [
        child
            .stdout
            .take()
            .map(|out| copy_thread(out, stdio.stdout.clone(), Stream::Stdout)),
        child
            .stderr
            .take()
            .map(|err| copy_thread(err, stdio.stderr.clone(), Stream::Stderr)),
    ]
    .into_iter()
    .flatten()
    .collect();
    std::thread::spawn(move || {
        let status = match child.wait() {
            Ok(status) => {
                let requested = exit.requested.load(Ordering::SeqCst);
                match exit_status(status) {
                    KILLED if requested != 0 => 128 + requested,
                    other => other,
                }
            }
            Err(e) => {
                log::warn!("waiting for vmfork (pid {pid}): {e}");
                255
            }
        };
        // The output reaches the FIFOs (and their ends close) before the
        // exit is reported: ctr stops reading once it sees the exit.
        for copy in copies {
            let _ = copy.join();
        }
        let done = Exit {
            status,
            at: std::time::SystemTime::now(),
        };
        exit.set(done);
        on_exit(done);
    });
    Ok(pid)
}

/// The status of a process killed by SIGKILL.
const KILLED: u32 = 128 + libc::SIGKILL as u32;

/// What the shim does for a signal a kill request names. A Wasm module
/// has no signal handlers (WASI has no signals), so a signal whose default
/// action ends a process ends the module. `vmfork clone` does not stop a
/// running command on SIGTERM or SIGINT (it waits for the command), so
/// every ending signal becomes SIGKILL of vmfork, reported as the signal
/// asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// SIGKILL vmfork; report death by this signal.
    End,
    /// Send the signal itself (stop/continue a process).
    Pass(libc::c_int),
    /// Ignored by default: nothing to do.
    Ignore,
}

pub fn delivery(signal: libc::c_int) -> Delivery {
    match signal {
        libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH => Delivery::Ignore,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU | libc::SIGCONT => {
            Delivery::Pass(signal)
        }
        _ => Delivery::End,
    }
}

/// A shell's idea of the status: the code, or 128 + the signal.
fn exit_status(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u32::try_from(code).unwrap_or(255),
        (None, Some(signal)) => 128 + u32::try_from(signal).unwrap_or(0),
        (None, None) => 255,
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

fn copy_thread(from: impl Read + Send + 'static, to: String, stream: Stream) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut sink: Box<dyn Write> = if to.is_empty() {
            Box::new(std::io::sink())
        } else {
            match std::fs::OpenOptions::new().write(true).open(&to) {
                Ok(fifo) => Box::new(fifo),
                Err(e) => {
                    log::warn!("opening the container's output {to}: {e}");
                    Box::new(std::io::sink())
                }
            }
        };
        let mut reader = BufReader::new(from);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    log::warn!("reading vmfork's output: {e}");
                    break;
                }
            }
            if let Some(bytes) = container_bytes(&line, stream) {
                if sink.write_all(bytes).is_err() {
                    // The reader went away: keep draining vmfork's pipe.
                    sink = Box::new(std::io::sink());
                }
            } else {
                log::info!("vmfork: {}", String::from_utf8_lossy(&line).trim_end());
            }
        }
        let _ = sink.flush();
    })
}

/// What of one line of vmfork's output is the container's: the module's
/// lines without their prefix; on stderr also vmfork's own `vmfork: ...`
/// diagnostics (a trap, a failure to start), except the line that only
/// repeats the module's exit status. Progress and summary lines are
/// vmfork's and go to the shim's log (None).
fn container_bytes(line: &[u8], stream: Stream) -> Option<&[u8]> {
    if let Some(rest) = line.strip_prefix(CLONE_PREFIX) {
        return Some(rest);
    }
    match stream {
        Stream::Stdout => Some(line),
        Stream::Stderr => {
            let text = String::from_utf8_lossy(line);
            let own = text.starts_with("vmfork: ");
            let just_status = text
                .trim_end()
                .rsplit_once(" exited with status ")
                .is_some();
            (own && !just_status).then_some(line)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_come_off_and_vmfork_chatter_stays_out() {
        assert_eq!(
            container_bytes(b"clone 1: hello\n", Stream::Stdout),
            Some(&b"hello\n"[..])
        );
        assert_eq!(
            container_bytes(b"clone 1: oops\n", Stream::Stderr),
            Some(&b"oops\n"[..])
        );
        assert_eq!(
            container_bytes(b"vmfork clone: [  0.0s] starting\n", Stream::Stderr),
            None
        );
        assert_eq!(
            container_bytes(b"1 clones (memfd): p50 1 us\n", Stream::Stderr),
            None
        );
        assert_eq!(
            container_bytes(
                b"vmfork: clone 1: /m.wasm exited with status 3\n",
                Stream::Stderr
            ),
            None
        );
        assert!(container_bytes(b"vmfork: clone 1: trap: unreachable\n", Stream::Stderr).is_some());
    }

    #[test]
    fn ending_signals_become_sigkill() {
        assert_eq!(delivery(libc::SIGTERM), Delivery::End);
        assert_eq!(delivery(libc::SIGKILL), Delivery::End);
        assert_eq!(delivery(libc::SIGSTOP), Delivery::Pass(libc::SIGSTOP));
        assert_eq!(delivery(libc::SIGWINCH), Delivery::Ignore);
    }
}
