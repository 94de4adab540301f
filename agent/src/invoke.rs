//! The agent's side of Lambda functions (docs/linux-functions.md): the
//! function the VMM asked for at boot (an `EXEC_FLAG_LAMBDA_INIT` request
//! left in the mailbox), started under the Runtime API (lambda.rs) before
//! READY, and one invocation of it per `EXEC_FLAG_LAMBDA_INVOKE` request.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::process::Command;
use std::time::Duration;

use vmfork_guest_abi as abi;
use vmfork_guest_abi::ExecRequest;

use crate::exec::{self, Outcome};
use crate::lambda::{Invocation, Reply, Runtime, RUNTIME_API_ADDR};

/// Where Lambda runs a function from, when the image has it.
const TASK_ROOT: &str = "/var/task";

/// The running function, and the argv it was started with (an invocation
/// names it, so a request meant for another function is refused).
pub struct Function {
    runtime: Runtime,
    argv: Vec<Vec<u8>>,
}

/// Starts the function `request` describes and returns once it waits for
/// its first invocation; or how it failed, as an exec result for the VMM.
/// `echo` shows its output on the console while it initialises.
pub fn start(
    request: &ExecRequest<'_>,
    echo: impl Fn(&[u8]) + Send + Sync + 'static,
) -> Result<Function, Outcome> {
    let argv: Vec<Vec<u8>> = request
        .each(abi::EXEC_FIELD_ARG)
        .map(<[u8]>::to_vec)
        .collect();
    let program = OsStr::from_bytes(argv.first().map_or(&b"/bin/false"[..], Vec::as_slice));
    let mut command = Command::new(program);
    command
        .args(argv.iter().skip(1).map(|a| OsStr::from_bytes(a)))
        .env_clear();
    for entry in request.each(abi::EXEC_FIELD_ENV) {
        let (name, value) = match entry.iter().position(|b| *b == b'=') {
            Some(i) => (&entry[..i], &entry[i + 1..]),
            None => (entry, &b""[..]),
        };
        command.env(OsStr::from_bytes(name), OsStr::from_bytes(value));
    }
    // Lambda's working directory is the task root; an image without one
    // runs the function from `/`.
    let cwd = match request.one(abi::EXEC_FIELD_CWD) {
        Some(cwd) => OsStr::from_bytes(cwd),
        None if std::path::Path::new(TASK_ROOT).is_dir() => OsStr::new(TASK_ROOT),
        None => OsStr::new("/"),
    };
    command.current_dir(cwd);
    let timeout = match request.header.timeout_ms {
        0 => None,
        ms => Some(Duration::from_millis(u64::from(ms))),
    };
    match Runtime::start(RUNTIME_API_ADDR, command, timeout, echo) {
        Ok(runtime) => Ok(Function { runtime, argv }),
        Err(failure) => {
            let mut stderr = failure.output;
            stderr.extend_from_slice(format!("vmfork-agent: {}\n", failure.why).as_bytes());
            Err(Outcome {
                outcome: abi::EXEC_OUTCOME_FUNCTION_ERROR,
                value: 0,
                flags: 0,
                stdout: Vec::new(),
                stderr,
            })
        }
    }
}

impl Function {
    /// One invocation: the event on the request's stdin, its metadata in
    /// its header fields, its deadline `timeout_ms`.
    pub fn invoke(&mut self, request: &ExecRequest<'_>) -> Result<Outcome, String> {
        let named: Vec<&[u8]> = request.each(abi::EXEC_FIELD_ARG).collect();
        if named.len() != self.argv.len() || named.iter().zip(&self.argv).any(|(a, b)| a != b) {
            return Err("the invocation names another function than the one running".into());
        }
        let mut invocation = Invocation {
            request_id: String::new(),
            deadline_ms: 0,
            function_arn: String::new(),
            trace_id: None,
            client_context: None,
            cognito_identity: None,
            body: request
                .one(abi::EXEC_FIELD_STDIN)
                .map(<[u8]>::to_vec)
                .unwrap_or_default(),
        };
        for header in request.each(abi::EXEC_FIELD_HEADER) {
            let text = std::str::from_utf8(header).map_err(|_| "a header is not UTF-8")?;
            let (name, value) = text
                .split_once(':')
                .ok_or_else(|| format!("header {text:?}: expected `Name: value`"))?;
            let value = value.trim().to_string();
            match name.trim().to_ascii_lowercase().as_str() {
                "lambda-runtime-aws-request-id" => invocation.request_id = value,
                "lambda-runtime-deadline-ms" => {
                    invocation.deadline_ms = value
                        .parse()
                        .map_err(|_| format!("deadline {value:?} is not a number"))?
                }
                "lambda-runtime-invoked-function-arn" => invocation.function_arn = value,
                "lambda-runtime-trace-id" => invocation.trace_id = Some(value),
                "lambda-runtime-client-context" => invocation.client_context = Some(value),
                "lambda-runtime-cognito-identity" => invocation.cognito_identity = Some(value),
                other => return Err(format!("unknown invocation header {other:?}")),
            }
        }
        if invocation.request_id.is_empty() {
            return Err("the invocation has no request id".into());
        }
        let timeout = match request.header.timeout_ms {
            0 => None,
            ms => Some(Duration::from_millis(u64::from(ms))),
        };
        let cap = exec::cap(request.header.output_cap);
        let (reply, mut logs, logs_cut) = self.runtime.invoke(invocation, timeout, cap);
        let mut flags = if logs_cut {
            abi::EXEC_STDERR_TRUNCATED
        } else {
            0
        };
        let mut cut = |mut body: Vec<u8>| {
            if body.len() > cap {
                body.truncate(cap);
                flags |= abi::EXEC_STDOUT_TRUNCATED;
            }
            body
        };
        let (outcome, value, stdout) = match reply {
            Reply::Response(body) => (abi::EXEC_OUTCOME_EXITED, 0, cut(body)),
            Reply::Error { body, error_type } => {
                // The body is the answer; the type header goes to the log.
                if let Some(t) = error_type {
                    logs.extend_from_slice(format!("vmfork-agent: error type {t}\n").as_bytes());
                }
                (abi::EXEC_OUTCOME_FUNCTION_ERROR, 0, cut(body))
            }
            Reply::TimedOut => (
                abi::EXEC_OUTCOME_TIMED_OUT,
                request.header.timeout_ms,
                Vec::new(),
            ),
            Reply::Exited(status) => {
                let (outcome, value) = exec::exit_of(status);
                (outcome, value, Vec::new())
            }
        };
        Ok(Outcome {
            outcome,
            value,
            flags,
            stdout,
            stderr: logs,
        })
    }
}
