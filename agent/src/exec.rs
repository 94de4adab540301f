//! Runs one exec request (docs/guest-abi.md, "Running a command"): the
//! program with exactly the given argv, environment, working directory and
//! stdin; stdout and stderr kept up to the cap; killed with its process
//! group past the deadline.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use vmfork_guest_abi as abi;
use vmfork_guest_abi::{ExecRequest, ExecWriter};

use crate::sys;

/// What one run produced, ready to encode.
pub struct Outcome {
    pub outcome: u32,
    pub value: u32,
    pub flags: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Outcome {
    /// The encoded result body.
    pub fn encode(&self) -> Vec<u8> {
        let mut buf =
            vec![0u8; abi::EXEC_RESULT_HEADER_SIZE + self.stdout.len() + self.stderr.len()];
        let mut w = ExecWriter::new(&mut buf);
        // The buffer was sized for exactly this.
        let written = w
            .result(
                self.outcome,
                self.value,
                self.flags,
                &self.stdout,
                &self.stderr,
            )
            .map(|()| w.len());
        match written {
            Ok(n) => {
                buf.truncate(n);
                buf
            }
            Err(_) => Vec::new(),
        }
    }
}

/// The largest cap that still lets both streams and the header fit the
/// mailbox's response half.
pub fn cap(requested: u32) -> usize {
    (requested as usize).min((abi::MAX_BODY - abi::EXEC_RESULT_HEADER_SIZE) / 2)
}

/// Reads a stream to its end, keeping the first `cap` bytes: a program
/// that writes more must not block on a full pipe.
fn drain(mut from: impl Read + Send + 'static, cap: usize) -> mpsc::Receiver<(Vec<u8>, bool)> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut kept = Vec::new();
        let mut truncated = false;
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap - kept.len();
                    if n > room {
                        truncated = true;
                    }
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        let _ = tx.send((kept, truncated));
    });
    rx
}

/// How long the output of a finished program may take to reach its end:
/// a process that escaped its group (setsid) and kept the pipes open
/// would otherwise hold the answer forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

pub fn run(request: &ExecRequest<'_>) -> Outcome {
    let mut args = request.each(abi::EXEC_FIELD_ARG).map(OsStr::from_bytes);
    // parse() guarantees a program.
    let program = args.next().unwrap_or(OsStr::new("/bin/false"));
    let mut command = Command::new(program);
    command.args(args).env_clear();
    for entry in request.each(abi::EXEC_FIELD_ENV) {
        let (name, value) = match entry.iter().position(|b| *b == b'=') {
            Some(i) => (&entry[..i], &entry[i + 1..]),
            None => (entry, &b""[..]),
        };
        command.env(OsStr::from_bytes(name), OsStr::from_bytes(value));
    }
    command.current_dir(OsStr::from_bytes(
        request.one(abi::EXEC_FIELD_CWD).unwrap_or(b"/"),
    ));
    let stdin = request.one(abi::EXEC_FIELD_STDIN).map(<[u8]>::to_vec);
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a deadline kills what it started too.
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome {
                outcome: abi::EXEC_OUTCOME_SPAWN_FAILED,
                value: e.raw_os_error().unwrap_or(0) as u32,
                flags: 0,
                stdout: Vec::new(),
                stderr: format!(
                    "vmfork-agent: cannot start {}: {e}\n",
                    program.to_string_lossy()
                )
                .into_bytes(),
            };
        }
    };
    let pid = child.id();
    let cap = cap(request.header.output_cap);
    let out = child.stdout.take().map(|s| drain(s, cap));
    let err = child.stderr.take().map(|s| drain(s, cap));
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A program that never reads its stdin must not hold us up.
        thread::spawn(move || {
            let _ = pipe.write_all(&bytes);
        });
    }
    let (done, waited) = mpsc::channel();
    thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let deadline = request.header.timeout_ms;
    let status = if deadline == 0 {
        waited.recv().ok()
    } else {
        match waited.recv_timeout(Duration::from_millis(u64::from(deadline))) {
            Ok(s) => Some(s),
            Err(_) => {
                sys::kill_group(pid, sys::SIGKILL);
                let _ = waited.recv();
                None
            }
        }
    };
    // What the program left running in its group goes with it, so its
    // pipes close and the next request starts from a quiet guest.
    sys::kill_group(pid, sys::SIGKILL);
    let collect = |rx: Option<mpsc::Receiver<(Vec<u8>, bool)>>| {
        rx.and_then(|rx| rx.recv_timeout(OUTPUT_GRACE).ok())
            .unwrap_or_default()
    };
    let (stdout, out_cut) = collect(out);
    let (stderr, err_cut) = collect(err);
    let flags = if out_cut {
        abi::EXEC_STDOUT_TRUNCATED
    } else {
        0
    } | if err_cut {
        abi::EXEC_STDERR_TRUNCATED
    } else {
        0
    };
    let (outcome, value) = match status {
        None => (abi::EXEC_OUTCOME_TIMED_OUT, deadline),
        Some(Err(e)) => (
            abi::EXEC_OUTCOME_SPAWN_FAILED,
            e.raw_os_error().unwrap_or(0) as u32,
        ),
        Some(Ok(s)) => exit_of(s),
    };
    Outcome {
        outcome,
        value,
        flags,
        stdout,
        stderr,
    }
}

pub fn exit_of(status: ExitStatus) -> (u32, u32) {
    match (status.code(), status.signal()) {
        (Some(code), _) => (abi::EXEC_OUTCOME_EXITED, code as u32 & 0xff),
        (None, Some(sig)) => (abi::EXEC_OUTCOME_SIGNALED, sig as u32),
        (None, None) => (abi::EXEC_OUTCOME_SIGNALED, 0),
    }
}
