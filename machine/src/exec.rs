//! The host side of the exec protocol (docs/guest-abi.md, "Running a
//! command"): a program to run in a guest with an agent, encoded once into
//! a mailbox request, and the checked result read back after the guest
//! acknowledged EXEC. The encoding itself lives in the guest-ABI crate,
//! shared with the agent.

use std::time::Duration;

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmfork_guest_abi as abi;
use vmfork_guest_abi::{ExecRequestHeader, ExecResult, ExecWriter};

use crate::error::{Error, Result};
use crate::mailbox::{self, Status};

pub use vmfork_guest_abi::{CMD_EXEC, CMD_RESUME_EXEC};

/// Output kept per stream unless asked otherwise: 1 MiB (more than half the
/// mailbox's response half cannot fit both streams).
pub const DEFAULT_OUTPUT_CAP: u32 = 1 << 20;

/// One program to run, as a user of `vmfork clone -- CMD` (or a container,
/// or a function) describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSpec {
    /// `argv[0]` first; a program without `/` is looked up in `PATH`.
    pub argv: Vec<Vec<u8>>,
    /// `NAME=value` entries: the program's whole environment.
    pub env: Vec<Vec<u8>>,
    /// The working directory (the guest's `/` when None).
    pub cwd: Option<Vec<u8>>,
    /// Bytes for stdin (`/dev/null` when None).
    pub stdin: Option<Vec<u8>>,
    /// Bytes of stdout, and of stderr, the guest keeps.
    pub output_cap: u32,
    /// Killed (with its process group) past this; None for no limit.
    pub timeout: Option<Duration>,
    /// `abi::EXEC_FLAG_*`: 0 for a program, or a Lambda init/invocation.
    pub flags: u32,
    /// `Name: value` metadata of a Lambda invocation.
    pub headers: Vec<Vec<u8>>,
}

impl ExecSpec {
    /// The mailbox request body. Fails when it does not fit the mailbox or
    /// has no program.
    pub fn encode(&self) -> Result<Vec<u8>> {
        if self.argv.is_empty() {
            return Err(Error::InvalidArgument("exec: no program given".into()));
        }
        let timeout_ms = match self.timeout {
            None => 0,
            Some(t) => u32::try_from(t.as_millis())
                .ok()
                .filter(|ms| *ms > 0)
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "exec: a timeout must be between 1 ms and {} ms",
                        u32::MAX
                    ))
                })?,
        };
        // Sized to the request, not the mailbox: serve encodes one per
        // invocation, and zeroing 2 MiB each time cost more than the run.
        let fields = self
            .argv
            .iter()
            .chain(&self.env)
            .chain(&self.cwd)
            .chain(&self.stdin)
            .chain(&self.headers);
        let needed = fields.fold(abi::EXEC_REQUEST_HEADER_SIZE, |n, f| {
            n.saturating_add(abi::EXEC_FIELD_HEADER_SIZE)
                .saturating_add(f.len())
        });
        let mut buf = vec![0u8; needed.min(abi::MAX_BODY)];
        let mut w = ExecWriter::new(&mut buf);
        let too_big = |_| {
            Error::InvalidArgument(format!(
                "exec: arguments, environment and stdin exceed the mailbox's {} bytes",
                abi::MAX_BODY
            ))
        };
        w.request_header(&ExecRequestHeader {
            version: abi::EXEC_VERSION,
            flags: self.flags,
            output_cap: self.output_cap,
            timeout_ms,
        })
        .map_err(too_big)?;
        for arg in &self.argv {
            w.field(abi::EXEC_FIELD_ARG, arg).map_err(too_big)?;
        }
        for entry in &self.env {
            w.field(abi::EXEC_FIELD_ENV, entry).map_err(too_big)?;
        }
        if let Some(cwd) = &self.cwd {
            w.field(abi::EXEC_FIELD_CWD, cwd).map_err(too_big)?;
        }
        if let Some(stdin) = &self.stdin {
            w.field(abi::EXEC_FIELD_STDIN, stdin).map_err(too_big)?;
        }
        for header in &self.headers {
            w.field(abi::EXEC_FIELD_HEADER, header).map_err(too_big)?;
        }
        let len = w.len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// The PATH a program function starts with.
pub const DEFAULT_PATH: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/.vmfork/bin";

/// The program a function template runs for every request (`vmfork
/// template build --exec`, or a Wasm module's `_start`), recorded in its
/// manifest: each request adds its own environment, stdin and limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecEntry {
    pub argv: Vec<String>,
    /// `NAME=value` entries every request starts with.
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    /// Set for an AWS Lambda function (`template build --lambda`): the
    /// program was started before the snapshot and each request is one
    /// invocation of it (crate::lambda).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<LambdaEntry>,
}

/// The region and account in the ARNs vmfork makes up: there is no AWS
/// account behind them, and a real-looking one would mislead.
const ARN_PREFIX: &str = "arn:aws:lambda:local:000000000000:function:";

/// What a Lambda template records beside its command (crate::lambda).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LambdaEntry {
    /// `AWS_LAMBDA_FUNCTION_NAME`, and the end of the function's ARN.
    pub function_name: String,
    /// How long the function may take to reach its first `next`.
    pub init_timeout_ms: u64,
}

impl LambdaEntry {
    /// The ARN each invocation is made under.
    pub fn arn(&self) -> String {
        format!("{ARN_PREFIX}{}", self.function_name)
    }
}

impl ExecEntry {
    /// Splits a command line as a POSIX shell would (quotes and
    /// backslashes, no expansion): `--exec '/usr/bin/prog "an arg"'`.
    pub fn parse(command: &str) -> Result<ExecEntry> {
        let argv = shlex::split(command)
            .ok_or_else(|| Error::InvalidArgument("unbalanced quotes".into()))?;
        if argv.is_empty() {
            return Err(Error::InvalidArgument("no program given".into()));
        }
        Ok(ExecEntry {
            argv,
            // CGI servers hand their programs a PATH; the agent's busybox
            // comes last, so the image's own tools win.
            env: vec![DEFAULT_PATH.into()],
            cwd: None,
            lambda: None,
        })
    }

    /// One request's program: this entry's, with `env` after its own
    /// environment, `stdin`, and the request's limits.
    pub fn spec(
        &self,
        env: impl IntoIterator<Item = Vec<u8>>,
        stdin: Vec<u8>,
        output_cap: u32,
        timeout: Duration,
    ) -> ExecSpec {
        ExecSpec {
            argv: self.argv.iter().map(|a| a.clone().into_bytes()).collect(),
            env: self
                .env
                .iter()
                .map(|e| e.clone().into_bytes())
                .chain(env)
                .collect(),
            cwd: self.cwd.as_ref().map(|c| c.clone().into_bytes()),
            stdin: Some(stdin),
            output_cap,
            timeout: Some(timeout),
            flags: 0,
            headers: Vec::new(),
        }
    }
}

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecOutcome {
    Exited(u8),
    Signaled(u32),
    /// Could not be started; the errno.
    SpawnFailed(u32),
    /// Killed at the request's deadline.
    TimedOut,
    /// A WebAssembly program trapped (the trap is the end of its stderr).
    Trapped,
    /// A Lambda function answered with an error: stdout is its body.
    FunctionError,
}

impl ExecOutcome {
    /// A shell's idea of an exit status: the status, 128 + signal, 127 for
    /// a program that could not start, 124 for a timeout (as `timeout(1)`).
    pub fn shell_status(self) -> u8 {
        match self {
            ExecOutcome::Exited(code) => code,
            ExecOutcome::Signaled(sig) => 128u8.saturating_add(sig.min(127) as u8),
            ExecOutcome::SpawnFailed(_) => 127,
            ExecOutcome::TimedOut => 124,
            // As a process aborted by SIGABRT.
            ExecOutcome::Trapped => 134,
            ExecOutcome::FunctionError => 1,
        }
    }
}

impl std::fmt::Display for ExecOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecOutcome::Exited(code) => write!(f, "exited with status {code}"),
            ExecOutcome::Signaled(sig) => write!(f, "killed by signal {sig}"),
            ExecOutcome::SpawnFailed(errno) => write!(
                f,
                "could not start ({})",
                std::io::Error::from_raw_os_error(*errno as i32)
            ),
            ExecOutcome::TimedOut => write!(f, "timed out and was killed"),
            ExecOutcome::Trapped => write!(f, "trapped (the trap is on its stderr)"),
            ExecOutcome::FunctionError => write!(f, "answered with an error"),
        }
    }
}

/// A program's result, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    pub outcome: ExecOutcome,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// Writes `request` (from [`ExecSpec::encode`]) into a stopped guest's
/// mailbox, for an EXEC sent next, and clears the response header, so a
/// guest that acknowledges EXEC without answering it (one with no agent)
/// is told apart from one that answered badly.
pub fn write_request(mem: &GuestMemoryMmap, request: &[u8]) -> Result<()> {
    mailbox::write_request(mem, request)?;
    mem.write_slice(&[0u8; 16], GuestAddress(abi::RESPONSE_HEADER))
        .map_err(|e| Error::GuestMemory(format!("mailbox: {e}")))
}

/// Reads the result of an EXEC the guest acknowledged. Everything in it is
/// the guest's, so all of it is checked; a guest that refused the request
/// says why.
pub fn read_result(mem: &GuestMemoryMmap) -> Result<ExecOutput> {
    let mut magic = [0u8; 4];
    mem.read_slice(&mut magic, GuestAddress(abi::RESPONSE_HEADER))
        .map_err(|e| Error::GuestMemory(format!("mailbox: {e}")))?;
    if magic == [0; 4] {
        return Err(Error::InvalidArgument(
            "the guest acknowledged the command without running it: it has no vmfork agent \
             (a command needs a guest that runs one, such as the Linux guest; the embedded guest does not)"
                .into(),
        ));
    }
    let response = mailbox::read_response(mem)?;
    let body = match response.status {
        Status::Ok => response.body,
        Status::Rejected | Status::BadRequest => {
            return Err(Error::InvalidArgument(format!(
                "the guest refused the exec request: {}",
                String::from_utf8_lossy(&response.body)
            )))
        }
    };
    let result = ExecResult::parse(&body).map_err(|e| {
        Error::GuestCrash(format!(
            "the guest's exec result is malformed: {}",
            e.reason()
        ))
    })?;
    let h = result.header;
    let outcome = match h.outcome {
        abi::EXEC_OUTCOME_EXITED => ExecOutcome::Exited(h.value.min(255) as u8),
        abi::EXEC_OUTCOME_SIGNALED => ExecOutcome::Signaled(h.value),
        abi::EXEC_OUTCOME_SPAWN_FAILED => ExecOutcome::SpawnFailed(h.value),
        abi::EXEC_OUTCOME_TRAPPED => ExecOutcome::Trapped,
        abi::EXEC_OUTCOME_FUNCTION_ERROR => ExecOutcome::FunctionError,
        _ => ExecOutcome::TimedOut,
    };
    Ok(ExecOutput {
        outcome,
        stdout: result.stdout.to_vec(),
        stderr: result.stderr.to_vec(),
        stdout_truncated: h.flags & abi::EXEC_STDOUT_TRUNCATED != 0,
        stderr_truncated: h.flags & abi::EXEC_STDERR_TRUNCATED != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exec_entry_splits_like_a_shell_and_adds_each_request() {
        let e = ExecEntry::parse(r#"/bin/prog "an arg" 'it''s' x\ y"#).expect("parse");
        assert_eq!(e.argv, ["/bin/prog", "an arg", "its", "x y"]);
        assert_eq!(e.env, [DEFAULT_PATH]);
        assert!(ExecEntry::parse("'open").is_err());
        assert!(ExecEntry::parse("   ").is_err());
        let spec = e.spec(
            [b"A=1".to_vec()],
            b"body".to_vec(),
            64,
            Duration::from_secs(2),
        );
        assert_eq!(
            spec.env,
            [DEFAULT_PATH.as_bytes().to_vec(), b"A=1".to_vec()]
        );
        assert_eq!(spec.stdin.as_deref(), Some(&b"body"[..]));
        assert_eq!(spec.timeout, Some(Duration::from_secs(2)));
        assert!(spec.encode().is_ok());
    }

    #[test]
    fn a_spec_encodes_to_what_the_agent_parses() {
        let spec = ExecSpec {
            argv: vec![b"sh".to_vec(), b"-c".to_vec(), b"echo hi".to_vec()],
            env: vec![b"PATH=/bin".to_vec()],
            cwd: Some(b"/tmp".to_vec()),
            stdin: Some(b"input".to_vec()),
            output_cap: 100,
            timeout: Some(Duration::from_secs(2)),
            ..ExecSpec::default()
        };
        let body = spec.encode().expect("encode");
        let r = abi::ExecRequest::parse(&body).expect("parse");
        assert_eq!(r.header.timeout_ms, 2000);
        assert_eq!(r.each(abi::EXEC_FIELD_ARG).count(), 3);
        assert_eq!(r.one(abi::EXEC_FIELD_STDIN), Some(&b"input"[..]));
        assert!(ExecSpec::default().encode().is_err(), "no program");
        let huge = ExecSpec {
            argv: vec![vec![b'x'; abi::MAX_BODY]],
            ..ExecSpec::default()
        };
        assert!(huge.encode().is_err(), "over the mailbox");
        let fills = ExecSpec {
            argv: vec![vec![
                b'x';
                abi::MAX_BODY
                    - abi::EXEC_REQUEST_HEADER_SIZE
                    - abi::EXEC_FIELD_HEADER_SIZE
            ]],
            ..ExecSpec::default()
        };
        assert_eq!(
            fills.encode().expect("exactly the mailbox").len(),
            abi::MAX_BODY
        );
    }

    #[test]
    fn results_are_read_and_checked() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).expect("memory");
        let mut body = vec![0u8; 64];
        let mut w = ExecWriter::new(&mut body);
        w.result(
            abi::EXEC_OUTCOME_SIGNALED,
            9,
            abi::EXEC_STDOUT_TRUNCATED,
            b"o",
            b"",
        )
        .expect("result");
        let n = w.len();
        let mut header = Vec::new();
        for word in [abi::RESPONSE_MAGIC, n as u32, abi::STATUS_OK, 1] {
            header.extend_from_slice(&word.to_le_bytes());
        }
        mem.write_slice(&body[..n], GuestAddress(abi::RESPONSE_DATA))
            .expect("body");
        mem.write_slice(&header, GuestAddress(abi::RESPONSE_HEADER))
            .expect("header");
        let out = read_result(&mem).expect("read");
        // What write_request leaves when no agent answers.
        write_request(
            &mem,
            &ExecSpec {
                argv: vec![b"x".to_vec()],
                ..ExecSpec::default()
            }
            .encode()
            .expect("encode"),
        )
        .expect("request");
        assert!(
            matches!(read_result(&mem), Err(Error::InvalidArgument(m)) if m.contains("no vmfork agent"))
        );
        mem.write_slice(&header, GuestAddress(abi::RESPONSE_HEADER))
            .expect("header again");
        assert_eq!(out.outcome, ExecOutcome::Signaled(9));
        assert_eq!(out.outcome.shell_status(), 137);
        assert!(out.stdout_truncated && !out.stderr_truncated);
        // A body whose lengths do not add up is the guest's fault.
        mem.write_slice(
            &((n - 1) as u32).to_le_bytes(),
            GuestAddress(abi::RESPONSE_HEADER + 4),
        )
        .expect("len");
        assert!(matches!(read_result(&mem), Err(Error::GuestCrash(_))));
    }
}
