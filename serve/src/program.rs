//! A program function's result as an HTTP response: its stdout through
//! the CGI conventions (cgi.rs), its stderr to the server's log, and any
//! way it failed as a 502 or 504 with the reason.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::cgi::parse_response;
use super::metrics::Counted;
use vmfork_machine::exec::{ExecOutcome, ExecOutput};

/// Lines of one request's stderr that reach the log; the rest are counted.
const MAX_LOGGED_LINES: usize = 64;

pub fn respond(
    function: &str,
    request: u64,
    output: ExecOutput,
    max_output: u32,
) -> (Response, Counted) {
    log_stderr(function, &request, &output);
    let failed = |status: StatusCode, why: String| {
        tracing::warn!(function, request, "{why}");
        let counted = if status == StatusCode::GATEWAY_TIMEOUT {
            Counted::Timeout
        } else {
            Counted::Crash
        };
        (text(status, format!("{function}: {why}")), counted)
    };
    match output.outcome {
        ExecOutcome::Exited(0) => {}
        ExecOutcome::TimedOut => {
            return failed(
                StatusCode::GATEWAY_TIMEOUT,
                "the function ran past its timeout and was killed".into(),
            )
        }
        other => return failed(StatusCode::BAD_GATEWAY, format!("the function {other}")),
    }
    if output.stdout_truncated {
        return failed(
            StatusCode::BAD_GATEWAY,
            format!("the function wrote more than {max_output} bytes (max_output)"),
        );
    }
    match parse_response(&output.stdout) {
        Ok(cgi) => {
            let mut r = (cgi.status, cgi.body).into_response();
            let headers = r.headers_mut();
            // The function's headers replace the defaults the body got
            // (its Content-Type); a name it repeats is repeated.
            for (name, _) in &cgi.headers {
                headers.remove(name);
            }
            for (name, value) in cgi.headers {
                headers.append(name, value);
            }
            (r, Counted::Ok)
        }
        Err(bad) => failed(StatusCode::BAD_GATEWAY, bad),
    }
}

/// Logs what a program (or a Lambda function, under its request id) wrote
/// on stderr.
pub fn log_stderr(function: &str, request: &dyn std::fmt::Display, output: &ExecOutput) {
    if output.stderr.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&output.stderr);
    let mut lines = text.lines();
    for line in lines.by_ref().take(MAX_LOGGED_LINES) {
        tracing::info!(function, request = %request, "stderr: {line}");
    }
    let more = lines.count();
    if more > 0 || output.stderr_truncated {
        tracing::info!(
            function,
            request = %request,
            "stderr: {more} more line(s){}",
            if output.stderr_truncated {
                ", cut at max_output"
            } else {
                ""
            }
        );
    }
}

/// A plain-text answer, newline-ended.
pub(crate) fn text(status: StatusCode, mut body: String) -> Response {
    body.push('\n');
    (status, body).into_response()
}

/// A program's output for unit tests (here and lambda.rs): `stdout`, one
/// line of stderr, nothing cut.
#[cfg(test)]
pub(crate) fn fixture(outcome: ExecOutcome, stdout: &[u8]) -> ExecOutput {
    ExecOutput {
        outcome,
        stdout: stdout.to_vec(),
        stderr: b"a log line\n".to_vec(),
        stdout_truncated: false,
        stderr_truncated: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(outcome: ExecOutcome, stdout: &[u8]) -> ExecOutput {
        fixture(outcome, stdout)
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let cases = [
            (ExecOutcome::Exited(0), StatusCode::OK, Counted::Ok),
            (
                ExecOutcome::Exited(3),
                StatusCode::BAD_GATEWAY,
                Counted::Crash,
            ),
            (
                ExecOutcome::Signaled(9),
                StatusCode::BAD_GATEWAY,
                Counted::Crash,
            ),
            (
                ExecOutcome::SpawnFailed(2),
                StatusCode::BAD_GATEWAY,
                Counted::Crash,
            ),
            (
                ExecOutcome::TimedOut,
                StatusCode::GATEWAY_TIMEOUT,
                Counted::Timeout,
            ),
        ];
        for (outcome, status, counted) in cases {
            let (r, c) = respond("f", 1, output(outcome, b"hi\n"), 1024);
            assert_eq!(r.status(), status, "{outcome:?}");
            assert_eq!(c, counted, "{outcome:?}");
        }
    }

    #[test]
    fn cgi_headers_and_truncation() {
        let (r, _) = respond(
            "f",
            1,
            output(ExecOutcome::Exited(0), b"Status: 201\nX-Y: z\n\nmade"),
            1024,
        );
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["x-y"], "z");
        let (r, _) = respond(
            "f",
            1,
            output(ExecOutcome::Exited(0), b"Content-Type: text/html\n\n<p>"),
            1024,
        );
        let types: Vec<_> = r.headers().get_all("content-type").iter().collect();
        assert_eq!(types, ["text/html"]);
        let mut cut = output(ExecOutcome::Exited(0), b"partial");
        cut.stdout_truncated = true;
        assert_eq!(respond("f", 1, cut, 7).0.status(), StatusCode::BAD_GATEWAY);
        let (r, _) = respond("f", 1, output(ExecOutcome::Exited(0), b"Status: x\n\n"), 9);
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    }
}
