//! Where the guest's serial output goes.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Serial output sink. Stdout is line-buffered here because the guest
/// writes one byte per exit and a syscall per byte would dominate.
pub enum Console {
    Stdout(StdoutLines),
    Discard,
    /// Kept in memory (tests, and later per-request capture).
    Capture(Arc<Mutex<Vec<u8>>>),
}

impl Console {
    pub fn stdout() -> Console {
        Console::Stdout(StdoutLines::default())
    }
}

/// The guest's console on vmfork's stdout: whole lines at a time, and a
/// record of whether stdout was left inside a line.
#[derive(Default)]
pub struct StdoutLines {
    pending: Vec<u8>,
    mid_line: bool,
}

impl StdoutLines {
    fn write_out(&mut self, upto: usize) -> io::Result<()> {
        if upto == 0 {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        out.write_all(&self.pending[..upto])?;
        out.flush()?;
        self.mid_line = self.pending[upto - 1] != b'\n';
        self.pending.drain(..upto);
        Ok(())
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Console::Stdout(lines) => {
                lines.pending.extend_from_slice(buf);
                if lines.pending.len() >= 4096 {
                    lines.write_out(lines.pending.len())?;
                } else if let Some(end) = buf.iter().rposition(|&b| b == b'\n') {
                    // Whole lines out; a partial one waits for its end, a
                    // flush or the drop.
                    let upto = lines.pending.len() - (buf.len() - end - 1);
                    lines.write_out(upto)?;
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
        if let Console::Stdout(lines) = self {
            lines.write_out(lines.pending.len())?;
        }
        Ok(())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        // Best effort: a partial last line still reaches the terminal, and
        // is ended, so what vmfork prints next (the --json line) starts a
        // line of its own. A guest stopped at its ready point may be
        // mid-line: its tty drains the console on another vCPU.
        if let Console::Stdout(lines) = self {
            if lines.mid_line || !lines.pending.is_empty() {
                lines.pending.push(b'\n');
                let _ = lines.write_out(lines.pending.len());
            }
        }
    }
}
