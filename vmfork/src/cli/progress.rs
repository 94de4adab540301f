//! Progress on long work, always on stderr (stdout carries results and
//! `--json`).
//!
//! ```ignore
//! let mode = ProgressMode::detect(args.quiet || args.json);
//! let progress = Progress::new(Some(n), "clone", mode);
//! for i in 0..n {
//!     start_one(i)?;
//!     progress.inc(1);
//! }
//! progress.finish(&format!("{n} clones started"));
//! ```
//!
//! What each mode prints:
//! - [`ProgressMode::Terminal`]: an indicatif bar (known total) or spinner
//!   redrawn in place with the elapsed time, the count, the rate and the
//!   current step; cleared at the end. Unstyled when `NO_COLOR` is set.
//! - [`ProgressMode::Plain`] (stderr is a file or a pipe): one line every
//!   [`PLAIN_EVERY`] and each time another 10 % of a known total is done,
//!   `vmfork clone: [  5.0s] starting (300/1000, 30 %, 60.1/s)`.
//! - [`ProgressMode::Hidden`] (`--quiet`, `--json`): nothing at all.
//!
//! Both visible modes end with one summary line from [`Progress::finish`],
//! however short the work was, so a log always shows how long it took.
//!
//! The ticker thread inherits the caller's seccomp list (the `vmm` list) and
//! does not stack a narrower one: indicatif's styling may call `isatty()`
//! (TCGETS) lazily on first use, which the `watchdog` list forbids. The
//! terminal is drawn through [`Stderr`], not indicatif's own, because that
//! one asks the terminal size with TIOCGWINSZ, which no list allows.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// How often plain mode prints a line while the work goes on.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// How often the terminal bar or spinner is redrawn.
const TERMINAL_TICK: Duration = Duration::from_millis(100);

/// Where progress goes; see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Hidden,
    Terminal { color: bool },
    Plain,
}

impl ProgressMode {
    /// The mode for this process: `Hidden` when `quiet` (the command's
    /// `--quiet` or `--json`), `Terminal` when stderr is one, else `Plain`.
    pub fn detect(quiet: bool) -> ProgressMode {
        if quiet {
            ProgressMode::Hidden
        } else if std::io::stderr().is_terminal() {
            // no-color.org: set and not empty.
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            ProgressMode::Terminal { color: !no_color }
        } else {
            ProgressMode::Plain
        }
    }
}

/// Progress of one piece of long work: a count out of an optional total and
/// the current step, shown as the [`ProgressMode`] says until
/// [`finish`](Progress::finish) or drop. Cheap to update from a hot loop
/// (`inc` is an atomic add); share it by reference across threads.
pub struct Progress {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

struct Shared {
    what: String,
    total: Option<u64>,
    mode: ProgressMode,
    started: Instant,
    pos: AtomicU64,
    bar: Option<ProgressBar>,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    message: String,
    stop: bool,
    /// Plain mode: when the last line went out, and the last tenth printed.
    last_line: Instant,
    last_tenth: u64,
}

impl Progress {
    /// Starts showing progress of `what` ("template build", "clone"),
    /// counted out of `total` when it is known (a bar) or not (a spinner).
    pub fn new(total: Option<u64>, what: &str, mode: ProgressMode) -> Progress {
        let started = Instant::now();
        let bar = match mode {
            ProgressMode::Terminal { color } => Some(terminal_bar(total, what, color)),
            _ => None,
        };
        let shared = Arc::new(Shared {
            what: what.to_owned(),
            total,
            mode,
            started,
            pos: AtomicU64::new(0),
            bar,
            state: Mutex::new(State {
                message: String::new(),
                stop: false,
                last_line: started,
                last_tenth: 0,
            }),
            wake: Condvar::new(),
        });
        let ticker = (mode != ProgressMode::Hidden)
            .then(|| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("progress".into())
                    .spawn(move || shared.tick_until_stopped())
                    .ok()
            })
            .flatten();
        Progress { shared, ticker }
    }

    /// Adds `n` to the count.
    // `clone -n N` sets its count; nothing adds to one yet but the tests.
    #[allow(dead_code)]
    pub fn inc(&self, n: u64) {
        let pos = self.shared.pos.fetch_add(n, Ordering::Relaxed) + n;
        self.shared.moved(pos);
    }

    /// Sets the count to `pos`.
    pub fn set(&self, pos: u64) {
        self.shared.pos.store(pos, Ordering::Relaxed);
        self.shared.moved(pos);
    }

    /// Names the current step ("writing memory").
    pub fn set_message(&self, message: &str) {
        if let Some(bar) = &self.shared.bar {
            bar.set_message(message.to_owned());
        }
        self.shared.lock().message = message.to_owned();
    }

    /// Stops showing progress and prints `summary` as one last line
    /// (`vmfork template build: [  1.2s] done: ...`), in both visible modes.
    pub fn finish(mut self, summary: &str) {
        self.stop();
        if let Some(bar) = &self.shared.bar {
            bar.finish_and_clear();
        }
        if self.shared.mode != ProgressMode::Hidden {
            self.shared.print_line(summary);
        }
    }

    fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
    }
}

impl Drop for Progress {
    /// Work that failed leaves no half-drawn bar behind its error message.
    fn drop(&mut self) {
        if self.ticker.is_some() {
            self.stop();
            if let Some(bar) = &self.shared.bar {
                bar.finish_and_clear();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn moved(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            return;
        }
        // Plain mode: a line each time another tenth of the total is done.
        if let (ProgressMode::Plain, Some(total)) = (self.mode, self.total) {
            let tenth = pos.saturating_mul(10) / total.max(1);
            let mut state = self.lock();
            if tenth > state.last_tenth {
                state.last_tenth = tenth;
                state.last_line = Instant::now();
                let message = state.message.clone();
                drop(state);
                self.print_line(&message);
            }
        }
    }

    fn tick_until_stopped(&self) {
        let every = match self.mode {
            ProgressMode::Terminal { .. } => TERMINAL_TICK,
            _ => PLAIN_EVERY,
        };
        let mut state = self.lock();
        loop {
            let wait = every.saturating_sub(state.last_line.elapsed());
            state = self
                .wake
                .wait_timeout(state, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            if state.stop {
                return;
            }
            if let Some(bar) = &self.bar {
                bar.tick();
                state.last_line = Instant::now();
            } else if state.last_line.elapsed() >= every {
                state.last_line = Instant::now();
                let message = state.message.clone();
                drop(state);
                self.print_line(&message);
                state = self.lock();
            }
        }
    }

    /// `vmfork WHAT: [  5.0s] MESSAGE (COUNTS)` on stderr.
    fn print_line(&self, message: &str) {
        let elapsed = self.started.elapsed().as_secs_f64();
        let mut line = format!("vmfork {}: [{elapsed:>5.1}s] {message}", self.what);
        if let Some(counts) = self.counts(elapsed) {
            line.push_str(&format!(" ({counts})"));
        }
        line.push('\n');
        // Progress is never worth failing the work for.
        let _ = std::io::stderr().write_all(line.as_bytes());
    }

    /// "300/1000, 30 %, 60.1/s", or None before anything was counted.
    fn counts(&self, elapsed: f64) -> Option<String> {
        let pos = self.pos.load(Ordering::Relaxed);
        let rate = pos as f64 / elapsed.max(1e-3);
        match self.total {
            Some(total) => Some(format!(
                "{pos}/{total}, {} %, {rate:.1}/s",
                pos.saturating_mul(100) / total.max(1)
            )),
            None if pos > 0 => Some(format!("{pos}, {rate:.1}/s")),
            None => None,
        }
    }
}

fn terminal_bar(total: Option<u64>, what: &str, color: bool) -> ProgressBar {
    let template = match (total.is_some(), color) {
        (true, true) => {
            "{spinner:.green} vmfork {prefix:.bold} [{elapsed}] {bar:30.cyan/blue} {pos}/{len} ({per_sec}, eta {eta}) {wide_msg}"
        }
        (true, false) => {
            "{spinner} vmfork {prefix} [{elapsed}] {bar:30} {pos}/{len} ({per_sec}, eta {eta}) {wide_msg}"
        }
        (false, true) => "{spinner:.green} vmfork {prefix:.bold} [{elapsed}] {wide_msg}",
        (false, false) => "{spinner} vmfork {prefix} [{elapsed}] {wide_msg}",
    };
    let style = ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
        .progress_chars("=> ");
    let target = ProgressDrawTarget::term_like(Box::new(Stderr::new()));
    ProgressBar::with_draw_target(total, target)
        .with_style(style)
        .with_prefix(format!("{what}:"))
}

/// stderr as indicatif's terminal, with the width from `$COLUMNS` (else 80)
/// rather than TIOCGWINSZ, which the seccomp lists forbid.
#[derive(Debug)]
struct Stderr {
    width: u16,
}

impl Stderr {
    fn new() -> Stderr {
        let width = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(80);
        Stderr { width }
    }

    fn put(&self, s: &str) -> std::io::Result<()> {
        std::io::stderr().write_all(s.as_bytes())
    }
}

impl TermLike for Stderr {
    fn width(&self) -> u16 {
        self.width
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}A"))?;
        }
        Ok(())
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}B"))?;
        }
        Ok(())
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}C"))?;
        }
        Ok(())
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        if n > 0 {
            self.put(&format!("\x1b[{n}D"))?;
        }
        Ok(())
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.put(&format!("{s}\n"))
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.put(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.put("\r\x1b[2K")
    }
    fn flush(&self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_and_without_a_total() {
        let p = Progress::new(Some(1000), "clone", ProgressMode::Hidden);
        assert_eq!(p.shared.counts(1.0), Some("0/1000, 0 %, 0.0/s".into()));
        p.inc(250);
        p.inc(50);
        assert_eq!(p.shared.counts(5.0), Some("300/1000, 30 %, 60.0/s".into()));
        let p = Progress::new(None, "build", ProgressMode::Hidden);
        assert_eq!(p.shared.counts(1.0), None);
        p.set(42);
        assert_eq!(p.shared.counts(2.0), Some("42, 21.0/s".into()));
        p.finish("done");
    }

    #[test]
    fn quiet_hides_everything() {
        assert_eq!(ProgressMode::detect(true), ProgressMode::Hidden);
    }
}
