//! The template holder: one long-lived process per host loads a template's
//! memory into a sealed memfd once, and hands that memfd to every clone
//! process that asks, over a Unix socket with SCM_RIGHTS. A template is
//! then loaded once per host, not once per clone process.
//!
//! Protocol: a client connects; the holder sends one message whose bytes
//! are the template directory's canonical path, a NUL, and the template's
//! identity (hex SHA-256 of its template.json), and whose ancillary data
//! carries the memfd; then it closes the connection. The client first
//! refuses a holder that runs as another user than its own or root
//! (SO_PEERCRED): the holder decides what its clones run. It refuses a
//! reply without the NUL and identity (a holder killed mid-send) and an
//! identity that differs from the manifest it loads itself (the directory
//! was rebuilt since the holder loaded it: its memfd is another build's
//! memory). A dead holder is a refused connection or an empty reply, a
//! stopped one a connect or reply timeout: each a one-line error, never a
//! hang.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use vmm_sys_util::sock_ctrl_msg::ScmSocket;

use super::memfd::SealedMemory;
use vmfork_machine::error::{Error, Result};
use vmfork_template::LoadedTemplate;

const MAX_PATH_BYTES: usize = 4096;
/// How long a client waits for a holder that accepted its connection.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Hex SHA-256.
const IDENTITY_LEN: usize = 64;

/// Connects within `timeout`. A blocking connect to a holder that is alive
/// but not accepting (stopped, or swamped) waits without end once its
/// listen backlog is full, so the socket is non-blocking while connecting:
/// a Unix socket's connect then fails with EAGAIN instead, and is retried.
fn connect(sock: &Path, timeout: Duration) -> Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let path = sock.as_os_str().as_bytes();
    // SAFETY: an all-zero sockaddr_un is valid; the path is copied in below
    // only if it fits with its terminating NUL.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.len() >= addr.sun_path.len() {
        return Err(holder_err(sock, "the socket path is too long".into()));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the descriptor is owned by
    // the UnixStream at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(holder_err(
            sock,
            format!("socket: {}", std::io::Error::last_os_error()),
        ));
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let deadline = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: connect(2) with a sockaddr_un filled above and its size.
        let rc = unsafe {
            libc::connect(
                fd,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(holder_err(sock, format!("cannot connect: {e}")));
        }
        if std::time::Instant::now() > deadline {
            return Err(holder_err(
                sock,
                format!(
                    "it accepted no connection within {} s (stopped or overloaded?)",
                    timeout.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Blocking again for the reply, which has its own timeout. (fcntl, not
    // std's set_nonblocking: that is an ioctl the seccomp lists leave out.)
    // SAFETY: fcntl flag updates on our own descriptor.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(holder_err(
                sock,
                format!("fcntl: {}", std::io::Error::last_os_error()),
            ));
        }
    }
    Ok(stream)
}

/// The uid of the process that listens at the other end of `stream`
/// (SO_PEERCRED: its credentials when it called listen(2)).
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    // SAFETY: an all-zero ucred is valid; getsockopt fills at most `len`
    // bytes of it, and `len` is checked after.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on our own socket into a ucred of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(std::io::Error::other("short SO_PEERCRED answer"));
    }
    Ok(cred.uid)
}

/// A holder chooses which directory a client loads and which memory its
/// clones run on, so only this process's own user (`own`) and root may
/// be one: anyone else who can create a socket the client is pointed at
/// is refused.
fn check_holder_uid(sock: &Path, holder: u32, own: u32) -> Result<()> {
    if holder == own || holder == 0 {
        return Ok(());
    }
    Err(holder_err(
        sock,
        format!("it runs as uid {holder}, not as this user ({own}) or root; refusing its template"),
    ))
}

fn holder_err(sock: &Path, reason: String) -> Error {
    Error::Control(format!("template holder {}: {reason}", sock.display()))
}

/// Serves `dir`'s sealed memory on `sock` until `stop` is set. Returns how
/// many clients were served.
/// `ready` runs once the socket listens, so that whoever waits for the
/// holder connects to it rather than to a stale socket file a killed
/// process left at the same path.
pub fn serve(dir: &Path, sock: &Path, stop: Arc<AtomicBool>, ready: impl FnOnce()) -> Result<u64> {
    // Its own thread in `clone --processes`, the main thread (stacked on
    // the vmm list) in `template serve`: filtered before anything else.
    vmfork_isolation::seccomp::install(vmfork_isolation::seccomp::ThreadKind::Holder)?;
    let template = LoadedTemplate::load(dir)?;
    let sealed = SealedMemory::load(&template)?;
    let mut path = template.dir.to_string_lossy().into_owned().into_bytes();
    path.push(0);
    path.extend_from_slice(template.sha256.as_bytes());
    if path.len() > MAX_PATH_BYTES {
        return Err(holder_err(sock, "template path too long".into()));
    }
    let listener = vmfork_template::api::bind_socket(sock, "--sock")?;
    listener.set_nonblocking(true)?;
    ready();
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
    let stream = connect(sock, REPLY_TIMEOUT)?;
    let holder = peer_uid(&stream)
        .map_err(|e| holder_err(sock, format!("who runs it (SO_PEERCRED): {e}")))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    check_holder_uid(sock, holder, unsafe { libc::geteuid() })?;
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
    if template.sha256.as_bytes() != id {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener that never accepts and has room for one pending
    /// connection: what a stopped holder looks like once its backlog is
    /// full.
    fn stalled_listener(path: &Path) -> std::os::fd::OwnedFd {
        let listener = std::os::unix::net::UnixListener::bind(path).expect("bind");
        // SAFETY: listen(2) on the listener's own descriptor, shrinking its
        // backlog to one pending connection.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        listener.into()
    }

    #[test]
    fn a_holder_that_accepts_nothing_is_a_timeout_not_a_hang() {
        let path = std::env::temp_dir().join(format!("vmfork-holder-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let _listener = stalled_listener(&path);
        // The first connection fits in the backlog; the next would block a
        // plain connect(2) for as long as the holder does not accept.
        let first = connect(&path, Duration::from_millis(200));
        assert!(first.is_ok(), "{:?}", first.err());
        let start = std::time::Instant::now();
        let second = connect(&path, Duration::from_millis(200));
        let _ = std::fs::remove_file(&path);
        let err = second
            .expect_err("a full backlog must time out")
            .to_string();
        assert!(err.contains("accepted no connection"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn only_a_holder_of_our_own_user_or_root_is_believed() {
        let sock = Path::new("/run/h.sock");
        assert!(check_holder_uid(sock, 1000, 1000).is_ok());
        assert!(check_holder_uid(sock, 0, 1000).is_ok());
        assert!(check_holder_uid(sock, 0, 0).is_ok());
        for (holder, own) in [(1001, 1000), (65534, 0), (1000, 65534)] {
            let err = check_holder_uid(sock, holder, own).expect_err("another user");
            assert_eq!(err.exit_code(), 17, "{err}");
            let message = err.to_string();
            assert!(
                message.contains(&format!("uid {holder}")) && !message.contains('\n'),
                "{message}"
            );
        }
        // The peer uid of a socket is read as it is: here our own.
        let (a, _b) = UnixStream::pair().expect("socketpair");
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(peer_uid(&a).expect("SO_PEERCRED"), me);
        assert!(check_holder_uid(sock, peer_uid(&a).expect("uid"), me).is_ok());
    }

    #[test]
    fn a_missing_holder_is_refused_at_once() {
        let path = std::env::temp_dir().join("vmfork-holder-test-missing.sock");
        let _ = std::fs::remove_file(&path);
        let err = connect(&path, Duration::from_secs(5))
            .expect_err("nothing listens")
            .to_string();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
