//! The container's stdin. `vmfork clone --stdin -` reads its stdin to the
//! end before the module starts, so the shim collects containerd's stdin
//! FIFO from create on and hands vmfork the bytes once the client closes
//! stdin with CloseIO (what `ctr` does at the end of its input).
//!
//! The FIFO is opened read-only and non-blocking, at create: that open
//! never waits for a writer (a blocking open waits for ever when the
//! client opened and closed its end before it, as `ctr` does with an
//! empty stdin). End of input is then whichever comes first: CloseIO; the
//! end of file after a writer was seen (data, or EAGAIN: a writer with
//! nothing to say yet); or, at start, a FIFO that never had a writer.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::error::{io, Result};

#[derive(Default)]
struct State {
    bytes: Vec<u8>,
    /// CloseIO arrived.
    closed: bool,
    /// Everything written before CloseIO has been read.
    done: bool,
    /// The client's end was open at some point.
    writer_seen: bool,
    /// The task started: a FIFO with no writer yet is empty input.
    started: bool,
}

#[derive(Default)]
pub struct Stdin {
    state: Mutex<State>,
    cond: Condvar,
}

impl Stdin {
    /// Starts collecting the FIFO at `path`.
    pub fn open(path: &str) -> Result<Arc<Stdin>> {
        let mut fifo = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(io("opening the container's stdin", path))?;
        let stdin = Arc::new(Stdin::default());
        let collector = Arc::clone(&stdin);
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                // Read whether or not CloseIO came: what was written
                // before it is still in the pipe.
                let (mut end, started) = {
                    let state = collector.lock();
                    (state.closed, state.started)
                };
                loop {
                    match fifo.read(&mut chunk) {
                        Ok(0) => {
                            let state = collector.lock();
                            end |= state.writer_seen || started;
                            break;
                        }
                        Ok(n) => {
                            let mut state = collector.lock();
                            state.writer_seen = true;
                            state.bytes.extend_from_slice(&chunk[..n]);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            collector.lock().writer_seen = true;
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            log::warn!("reading the container's stdin: {e}");
                            end = true;
                            break;
                        }
                    }
                }
                if end {
                    collector.lock().done = true;
                    collector.cond.notify_all();
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Ok(stdin)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task starts: from now on a FIFO without a writer is the end.
    pub fn started(&self) {
        self.lock().started = true;
    }

    /// CloseIO: the client wrote all it will.
    pub fn close(&self) {
        self.lock().closed = true;
    }

    /// Writes everything (once CloseIO came and it is all read) to `to`,
    /// then drops `to`: vmfork's end of input.
    pub fn feed(self: Arc<Self>, mut to: impl Write + Send + 'static) {
        std::thread::spawn(move || {
            let bytes = {
                let mut state = self.lock();
                while !state.done {
                    state = self.cond.wait(state).unwrap_or_else(|p| p.into_inner());
                }
                std::mem::take(&mut state.bytes)
            };
            if let Err(e) = to.write_all(&bytes) {
                log::warn!("writing the container's stdin to vmfork: {e}");
            }
        });
    }
}
