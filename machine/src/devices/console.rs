//! Where the guest's serial output goes.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Serial output sink. Stdout is line-buffered here because the guest
/// writes one byte per exit and a syscall per byte would dominate.
pub enum Console {
    Stdout(Vec<u8>),
    Discard,
    /// Kept in memory (tests, and later per-request capture).
    Capture(Arc<Mutex<Vec<u8>>>),
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Console::Stdout(line) => {
                line.extend_from_slice(buf);
                if buf.contains(&b'\n') || line.len() >= 4096 {
                    self.flush()?;
                }
            }
            Console::Discard => {}
            Console::Capture(out) => out
                .lock()
                .map_err(|_| io::Error::other("console capture poisoned"))?
                .extend_from_slice(buf),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Console::Stdout(line) = self {
            let mut out = io::stdout().lock();
            out.write_all(line)?;
            out.flush()?;
            line.clear();
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // Best effort: a partial last line still reaches the terminal.
        let _ = self.flush();
    }
}
