//! The template holder: one long-lived process per host loads a template's
//! memory into a sealed memfd once, and hands that memfd to every clone
//! process that asks, over a Unix socket with SCM_RIGHTS. A template is
//! then loaded once per host, not once per clone process.
//!
//! Protocol: a client connects; the holder sends one message whose bytes
//! are the template directory's canonical path and whose ancillary data
//! carries the memfd; then it closes the connection.

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

fn holder_err(sock: &Path, reason: String) -> Error {
    Error::Control(format!("template holder {}: {reason}", sock.display()))
}

/// Serves `dir`'s sealed memory on `sock` until `stop` is set. Returns how
/// many clients were served.
pub fn serve(dir: &Path, sock: &Path, stop: Arc<AtomicBool>) -> Result<u64> {
    let template = LoadedTemplate::load(dir)?;
    let sealed = SealedMemory::load(&template)?;
    let path = template.dir.to_string_lossy().into_owned().into_bytes();
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
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; MAX_PATH_BYTES];
    let (n, file): (usize, Option<File>) = stream
        .recv_with_fd(&mut buf)
        .map_err(|e| holder_err(sock, format!("receiving the memfd: {e}")))?;
    let file = file.ok_or_else(|| holder_err(sock, "no memfd in the reply".into()))?;
    let dir = PathBuf::from(String::from_utf8_lossy(&buf[..n]).into_owned());
    let template = LoadedTemplate::load(&dir)?;
    let sealed =
        SealedMemory::from_holder(file, &template).map_err(|e| holder_err(sock, e.to_string()))?;
    Ok((template, sealed))
}
