//! The template holder: one long-lived process per host loads a template's
//! memory into a sealed memfd once, and hands that memfd to every clone
//! process that asks, over a Unix socket with SCM_RIGHTS. A template is
//! then loaded once per host, not once per clone process.
//!
//! Protocol: a client connects; the holder sends one message whose bytes
//! are the template directory's canonical path, a NUL, and the template's
//! identity (hex SHA-256 of its manifest), and whose ancillary data
//! carries the memfd; then it closes the connection. The client refuses a
//! reply without the NUL and identity (a holder killed mid-send) and an
//! identity that differs from the manifest it loads itself (the directory
//! was rebuilt since the holder loaded it: its memfd is another build's
//! memory). A dead holder is a refused connection or an empty reply, a
//! stopped one a reply timeout: each a one-line error, never a hang.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::memfd::SealedMemory;
use crate::error::{Error, Result};
use crate::template::LoadedTemplate;

const MAX_PATH_BYTES: usize = 4096;
/// How long a client waits for a holder that accepted its connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Hex SHA-256.
const IDENTITY_LEN: usize = 64;

/// Which build of a template this is: the manifest records the creation
/// time, kernel and layout, so a rebuild at the same path differs.
fn identity(template: &LoadedTemplate) -> Result<String> {
    use sha2::{Digest, Sha256};
    let json = serde_json::to_vec(&template.manifest)
        .map_err(|e| Error::Control(format!("template holder: encoding the manifest: {e}")))?;
    Ok(Sha256::digest(&json)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn holder_err(sock: &Path, reason: String) -> Error {
    Error::Control(format!("template holder {}: {reason}", sock.display()))
}

/// Serves `dir`'s sealed memory on `sock` until `stop` is set. Returns how
/// many clients were served.
pub fn serve(dir: &Path, sock: &Path, stop: Arc<AtomicBool>) -> Result<u64> {
    // Its own thread in `clone --processes`, the main thread (stacked on
    // the vmm list) in `template serve`: filtered before anything else.
    crate::seccomp::install(crate::seccomp::ThreadKind::Holder)?;
    let template = LoadedTemplate::load(dir)?;
    let sealed = SealedMemory::load(&template)?;
    let mut path = template.dir.to_string_lossy().into_owned().into_bytes();
    path.push(0);
    path.extend_from_slice(identity(&template)?.as_bytes());
    if path.len() > MAX_PATH_BYTES {
        return Err(holder_err(sock, "template path too long".into()));
    }
    let listener = crate::cli::api::bind_socket(sock, "--sock")?;
    listener.set_nonblocking(true)?;
    let mut served = 0u64;
    while !stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.send_with_fd(&path[..], sealed.as_file().as_raw_fd()) {
                    tracing::warn!("template holder: sending the memfd: {e}");
                } else {
                    served += 1;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => tracing::warn!("template holder: accept: {e}"),
        }
    }
    let _ = std::fs::remove_file(sock);
    Ok(served)
}

/// Asks the holder at `sock` for its template: the directory and the
/// sealed memfd, whose seals and size are checked before use.
pub fn fetch(sock: &Path) -> Result<(LoadedTemplate, SealedMemory)> {
    let stream =
        UnixStream::connect(sock).map_err(|e| holder_err(sock, format!("cannot connect: {e}")))?;
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_PATH_BYTES];
    let (n, file): (usize, Option<File>) = stream.recv_with_fd(&mut buf).map_err(|e| {
        let why = match e.errno() {
            libc::EAGAIN => format!("no reply within {} s", REPLY_TIMEOUT.as_secs()),
            _ => format!("receiving the memfd: {e}"),
        };
        holder_err(sock, why)
    })?;
    let file = file.ok_or_else(|| {
        holder_err(
            sock,
            "no memfd in the reply (did the holder exit?)".to_string(),
        )
    })?;
    let reply = &buf[..n];
    let (dir, id) = match reply.iter().position(|&b| b == 0) {
        Some(nul) if reply.len() - nul - 1 == IDENTITY_LEN => (&reply[..nul], &reply[nul + 1..]),
        _ => return Err(holder_err(sock, "incomplete reply".into())),
    };
    let dir = PathBuf::from(String::from_utf8_lossy(dir).into_owned());
    let template = LoadedTemplate::load(&dir)?;
    if identity(&template)?.as_bytes() != id {
        return Err(holder_err(
            sock,
            format!(
                "it holds another build of {} (rebuilt since the holder loaded it); restart the holder",
                dir.display()
            ),
        ));
    }
    let sealed =
        SealedMemory::from_holder(file, &template).map_err(|e| holder_err(sock, e.to_string()))?;
    Ok((template, sealed))
}
