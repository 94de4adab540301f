//! The control socket of a running VM (`--api-sock PATH`). One request per
//! connection, one JSON line each way:
//!   -> {"op":"snapshot","out":"DIR","diff":false} | {"op":"ping"} |
//!      {"op":"dirty_pages","pages":N} | {"op":"pause"} | {"op":"resume"} | {"op":"stop"}
//!   <- {"ok":true,"result":...} | {"ok":false,"error":"..."}

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use vmfork_machine::control::{
    OwnerRequest, OwnerRequests, Refusal, Reply, RequestKind, StopLatch, StopReason,
};
use vmfork_machine::devices::ready_port;
use vmfork_machine::error::{Error, Result};

/// A request line longer than this is refused rather than buffered.
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Snapshot {
        out: PathBuf,
        #[serde(default)]
        diff: bool,
    },
    Ping,
    DirtyPages {
        pages: u32,
    },
    Pause,
    Resume,
    Stop,
}

/// What a request came to: the owner's reply, or `stop`'s, which needs no
/// owner.
#[derive(Debug)]
enum Done {
    Stopping,
    Owner(Reply),
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("bad request: {0}")]
    BadRequest(serde_json::Error),
    #[error("at most 16777215 pages")]
    TooManyPages,
    #[error("the VM stopped before answering")]
    NoAnswer,
    #[error(transparent)]
    Refused(#[from] Refusal),
}

impl Done {
    /// The `result` of an `{"ok":true}` reply.
    fn to_json(&self) -> serde_json::Value {
        match self {
            Done::Stopping => json!("stopping"),
            Done::Owner(Reply::Paused) => json!("paused"),
            Done::Owner(Reply::Resumed) => json!("resumed"),
            Done::Owner(Reply::Acknowledged { ack_us }) => json!({ "ack_us": ack_us }),
            Done::Owner(Reply::Snapshot(s)) => json!({
                "out": s.out,
                "snapshot_us": s.snapshot_us,
                "state_bytes": s.state_bytes,
                "memory_bytes": s.memory_bytes,
                "memory_written_bytes": s.memory_written_bytes,
                "dirty_pages": s.dirty_pages,
                "dirty_scan_us": s.dirty_scan_us,
            }),
        }
    }
}

/// Removes the socket file when the VM's owner is done.
pub struct ApiSocket {
    path: PathBuf,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path`, replacing a socket left over by a dead process but
/// never anything else; `flag` names the option in errors.
pub fn bind_socket(path: &Path, flag: &str) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // A socket nobody answers on is left over from a dead vmfork.
        if meta.file_type().is_socket() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        } else {
            return Err(Error::InvalidArgument(format!(
                "{flag} {}: already exists",
                path.display()
            )));
        }
    }
    UnixListener::bind(path).map_err(|e| {
        Error::InvalidArgument(format!("{flag} {}: cannot listen: {e}", path.display()))
    })
}

/// Serves `path` on a thread of its own: `stop` requests go to `latch`,
/// every other request to the VM's owner through `requests`.
pub fn serve(path: &Path, latch: StopLatch, requests: OwnerRequests) -> Result<ApiSocket> {
    let listener = bind_socket(path, "--api-sock")?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            // Filtered before it accepts a single request.
            vmfork_isolation::seccomp::install_in_thread(
                vmfork_isolation::seccomp::ThreadKind::Api,
            );
            for stream in listener.incoming().flatten() {
                // One connection at a time is enough for a control plane,
                // and serialises snapshot requests naturally.
                if let Err(e) = serve_one(stream, &latch, &requests) {
                    tracing::debug!("api connection: {e}");
                }
            }
        })?;
    Ok(ApiSocket {
        path: path.to_path_buf(),
    })
}

fn serve_one(
    stream: UnixStream,
    latch: &StopLatch,
    requests: &OwnerRequests,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line)?;
    let answer = serde_json::from_str::<Request>(&line)
        .map_err(Failure::BadRequest)
        .and_then(|request| dispatch(request, latch, requests));
    let reply = match answer {
        Ok(done) => json!({"ok": true, "result": done.to_json()}),
        Err(failure) => json!({"ok": false, "error": failure.to_string()}),
    };
    let mut stream = stream;
    writeln!(stream, "{reply}")
}

fn dispatch(
    request: Request,
    latch: &StopLatch,
    requests: &OwnerRequests,
) -> std::result::Result<Done, Failure> {
    let kind = match request {
        Request::Stop => {
            latch.stop(StopReason::Requested);
            return Ok(Done::Stopping);
        }
        Request::Snapshot { out, diff } => RequestKind::Snapshot { out, diff },
        Request::Ping => RequestKind::Command(ready_port::CMD_PING),
        Request::DirtyPages { pages } => {
            RequestKind::Command(ready_port::dirty_command(pages).ok_or(Failure::TooManyPages)?)
        }
        Request::Pause => RequestKind::Pause,
        Request::Resume => RequestKind::Resume,
    };
    let (reply, answer) = mpsc::channel();
    requests.submit(OwnerRequest { kind, reply });
    let reply = answer
        .recv_timeout(REPLY_TIMEOUT)
        .map_err(|_| Failure::NoAnswer)??;
    Ok(Done::Owner(reply))
}

/// Client side, for `vmfork ctl`.
pub fn call(path: &Path, request: &Request) -> Result<serde_json::Value> {
    let fail = |reason: String| Error::Control(format!("{}: {reason}", path.display()));
    let request = serde_json::to_string(request).map_err(|e| fail(e.to_string()))?;
    let mut stream = UnixStream::connect(path).map_err(|e| fail(format!("cannot connect: {e}")))?;
    writeln!(stream, "{request}").map_err(|e| fail(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST_BYTES * 16))
        .read_line(&mut line)
        .map_err(|e| fail(e.to_string()))?;
    let reply: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| fail(format!("malformed reply: {e}")))?;
    if reply["ok"] == json!(true) {
        Ok(reply["result"].clone())
    } else {
        Err(fail(
            reply["error"]
                .as_str()
                .unwrap_or("request failed")
                .to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_keep_their_wire_form() {
        assert_eq!(Done::Stopping.to_json(), json!("stopping"));
        assert_eq!(Done::Owner(Reply::Paused).to_json(), json!("paused"));
        assert_eq!(Done::Owner(Reply::Resumed).to_json(), json!("resumed"));
        assert_eq!(
            Done::Owner(Reply::Acknowledged { ack_us: 7 }).to_json(),
            json!({"ack_us": 7})
        );
        let failure = Failure::from(Refusal::NotWaiting(Duration::from_secs(5)));
        assert_eq!(
            failure.to_string(),
            "the guest did not wait for a command within 5.0 s"
        );
    }
}
