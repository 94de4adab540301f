//! AWS Lambda functions in a Linux guest (docs/linux-functions.md): what a
//! template records about one, the environment Lambda gives a function,
//! and the exec-protocol requests that start it before the snapshot and
//! hand it one invocation in each clone (docs/guest-abi.md).

use std::time::Duration;

use vmfork_guest_abi as abi;

use crate::error::{Error, Result};
pub use crate::exec::LambdaEntry;
use crate::exec::{ExecEntry, ExecSpec, DEFAULT_OUTPUT_CAP, DEFAULT_PATH};

/// Lambda's own limit on a function's init phase.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(10);

/// A Lambda function's name as AWS allows it: 1 to 64 letters, digits,
/// hyphens and underscores.
pub fn check_function_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "Lambda function name {name:?}: use 1 to 64 letters, digits, '-' or '_'"
        )))
    }
}

/// Refuses an `--env` entry that is not `NAME=VALUE`.
pub fn check_env(env: &[String]) -> Result<()> {
    match env
        .iter()
        .find(|e| e.split_once('=').is_none_or(|(name, _)| name.is_empty()))
    {
        Some(e) => Err(Error::InvalidArgument(format!(
            "--env {e:?}: expected NAME=VALUE"
        ))),
        None => Ok(()),
    }
}

/// The entry of a Lambda function started by `command` (split as a shell
/// would), with the environment Lambda documents for custom runtimes and
/// then `env` (`NAME=value`, so a user's value wins over a default).
pub fn entry(
    command: &str,
    function_name: &str,
    memory_mib: u64,
    env: &[String],
    init_timeout: Duration,
) -> Result<ExecEntry> {
    check_function_name(function_name)?;
    check_env(env)?;
    let init_timeout_ms = u64::try_from(init_timeout.as_millis())
        .ok()
        .filter(|ms| (1..=u64::from(u32::MAX)).contains(ms))
        .ok_or_else(|| Error::InvalidArgument("--init-timeout: between 1 ms and 49 days".into()))?;
    let base = ExecEntry::parse(command)?;
    let name = function_name;
    let mut all = vec![
        DEFAULT_PATH.to_string(),
        "LAMBDA_TASK_ROOT=/var/task".into(),
        "LAMBDA_RUNTIME_DIR=/var/runtime".into(),
        format!("AWS_LAMBDA_FUNCTION_NAME={name}"),
        "AWS_LAMBDA_FUNCTION_VERSION=$LATEST".into(),
        format!("AWS_LAMBDA_FUNCTION_MEMORY_SIZE={memory_mib}"),
        format!("AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/{name}"),
        "AWS_LAMBDA_LOG_STREAM_NAME=vmfork".into(),
        // Not `snap-start`, though this is a snapshot: under that value
        // runtimes park in SnapStart's `/runtime/restore/next` for their
        // restore hooks, which the agent does not serve; the snapshot is
        // taken in the first `/next` instead (docs/linux-functions.md).
        "AWS_LAMBDA_INITIALIZATION_TYPE=on-demand".into(),
        "TZ=:UTC".into(),
    ];
    all.extend(env.iter().cloned());
    Ok(ExecEntry {
        argv: base.argv,
        env: all,
        cwd: None,
        lambda: Some(LambdaEntry {
            function_name: name.to_string(),
            init_timeout_ms,
        }),
    })
}

/// The request that starts `entry`'s function in a cold-booted guest:
/// written into the mailbox before boot, answered by the agent once the
/// function waits for its first invocation (or failed).
pub fn init_spec(entry: &ExecEntry, lambda: &LambdaEntry) -> ExecSpec {
    ExecSpec {
        argv: entry.argv.iter().map(|a| a.clone().into_bytes()).collect(),
        env: entry.env.iter().map(|e| e.clone().into_bytes()).collect(),
        cwd: entry.cwd.as_ref().map(|c| c.clone().into_bytes()),
        stdin: None,
        output_cap: DEFAULT_OUTPUT_CAP,
        timeout: Some(Duration::from_millis(lambda.init_timeout_ms)),
        flags: abi::EXEC_FLAG_LAMBDA_INIT,
        headers: Vec::new(),
    }
}

/// One invocation's metadata: the Runtime API headers of its `next`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub request_id: String,
    /// Unix time in ms by which the function must answer.
    pub deadline_ms: u64,
    pub function_arn: String,
    pub trace_id: String,
    /// The caller's client context (JSON), as Lambda's Invoke API passes
    /// it on.
    pub client_context: Option<String>,
}

/// The request for one invocation of `entry`'s running function: `event`
/// on stdin, `invocation` as headers, the function's reply capped at
/// `output_cap` and due within `timeout`.
pub fn invoke_spec(
    entry: &ExecEntry,
    invocation: &Invocation,
    event: Vec<u8>,
    output_cap: u32,
    timeout: Duration,
) -> ExecSpec {
    let header = |name: &str, value: &str| format!("{name}: {value}").into_bytes();
    ExecSpec {
        argv: entry.argv.iter().map(|a| a.clone().into_bytes()).collect(),
        env: Vec::new(),
        cwd: None,
        stdin: Some(event),
        output_cap,
        timeout: Some(timeout),
        flags: abi::EXEC_FLAG_LAMBDA_INVOKE,
        headers: vec![
            header("Lambda-Runtime-Aws-Request-Id", &invocation.request_id),
            header(
                "Lambda-Runtime-Deadline-Ms",
                &invocation.deadline_ms.to_string(),
            ),
            header(
                "Lambda-Runtime-Invoked-Function-Arn",
                &invocation.function_arn,
            ),
            header("Lambda-Runtime-Trace-Id", &invocation.trace_id),
        ]
        .into_iter()
        .chain(
            invocation
                .client_context
                .as_deref()
                .map(|c| header("Lambda-Runtime-Client-Context", c)),
        )
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var<'a>(entry: &'a ExecEntry, name: &str) -> Option<&'a str> {
        let prefix = format!("{name}=");
        entry
            .env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix(prefix.as_str()))
    }

    #[test]
    fn an_entry_has_lambdas_environment_and_the_users_last() {
        let e = entry(
            "/var/task/bootstrap --flag",
            "hello_fn",
            256,
            &["TZ=Europe/Paris".into(), "A=b=c".into()],
            DEFAULT_INIT_TIMEOUT,
        )
        .expect("entry");
        assert_eq!(e.argv, ["/var/task/bootstrap", "--flag"]);
        assert_eq!(var(&e, "AWS_LAMBDA_FUNCTION_NAME"), Some("hello_fn"));
        assert_eq!(var(&e, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"), Some("256"));
        assert_eq!(var(&e, "AWS_LAMBDA_FUNCTION_VERSION"), Some("$LATEST"));
        assert_eq!(var(&e, "TZ"), Some("Europe/Paris"));
        assert_eq!(var(&e, "A"), Some("b=c"));
        let lambda = e.lambda.clone().expect("lambda");
        assert_eq!(
            lambda.arn(),
            "arn:aws:lambda:local:000000000000:function:hello_fn"
        );
        let init = init_spec(&e, &lambda).encode().expect("encode");
        let parsed = abi::ExecRequest::parse(&init).expect("parse");
        assert_eq!(parsed.header.flags, abi::EXEC_FLAG_LAMBDA_INIT);
        assert_eq!(parsed.header.timeout_ms, 10_000);
    }

    #[test]
    fn bad_names_env_and_timeouts_are_refused() {
        let t = DEFAULT_INIT_TIMEOUT;
        for name in ["", "a b", "x/y", &"n".repeat(65)] {
            assert!(entry("/bootstrap", name, 128, &[], t).is_err(), "{name}");
        }
        assert!(entry("/bootstrap", "f", 128, &["NOVALUE".into()], t).is_err());
        assert!(entry("/bootstrap", "f", 128, &["=v".into()], t).is_err());
        assert!(entry("/bootstrap", "f", 128, &[], Duration::ZERO).is_err());
        assert!(entry("'open", "f", 128, &[], t).is_err());
    }

    #[test]
    fn an_invocation_carries_its_metadata_as_headers() {
        let e = entry("/bootstrap", "f", 128, &[], DEFAULT_INIT_TIMEOUT).expect("entry");
        let inv = Invocation {
            request_id: "id-1".into(),
            deadline_ms: 1_700_000_000_123,
            function_arn: "arn:x".into(),
            trace_id: "Root=1-a-b".into(),
            client_context: Some("{}".into()),
        };
        let spec = invoke_spec(&e, &inv, b"{}".to_vec(), 64, Duration::from_secs(3));
        let body = spec.encode().expect("encode");
        let r = abi::ExecRequest::parse(&body).expect("parse");
        assert_eq!(r.header.flags, abi::EXEC_FLAG_LAMBDA_INVOKE);
        let headers: Vec<_> = r.each(abi::EXEC_FIELD_HEADER).collect();
        assert_eq!(headers[0], b"Lambda-Runtime-Aws-Request-Id: id-1");
        assert_eq!(headers[1], b"Lambda-Runtime-Deadline-Ms: 1700000000123");
        assert_eq!(headers[4], b"Lambda-Runtime-Client-Context: {}");
        assert_eq!(r.one(abi::EXEC_FIELD_STDIN), Some(&b"{}"[..]));
    }
}
