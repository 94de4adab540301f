//! Progress on long work, always on stderr (stdout carries results and
//! `--json`). Shared by the `vmfork` binary (template build, clone) and
//! `vmfork-guest-artifacts` (kernel and rootfs builds).
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
//!   [`PLAIN_EVERY`] (or [`Options::plain_every`]) and each time another
//!   10 % of a known total is done,
//!   `vmfork clone: [  5.0s] starting (300/1000, 30 %, 60.1/s)`.
//! - [`ProgressMode::Hidden`] (`--quiet`, `--json`): nothing at all.
//!
//! Both visible modes end with one summary line from [`Progress::finish`],
//! however short the work was, so a log always shows how long it took.
//! [`Progress::line`] and [`Progress::println`] leave lines of their own
//! on the way (above the bar on a terminal), and [`Progress::set_detail`]
//! shows something the caller recomputes at each redraw, such as a count
//! read from a build log.
//!
//! The ticker thread inherits the caller's seccomp list (the `vmm` list) and
//! does not stack a narrower one: indicatif's styling may call `isatty()`
//! (TCGETS) lazily on first use, which the `watchdog` list forbids. The
//! terminal is drawn through our own stderr `TermLike` (`terminal.rs`), not
//! indicatif's, because that one asks the terminal size with TIOCGWINSZ,
//! which no list allows.
#![deny(unsafe_op_in_unsafe_fn)]

mod terminal;

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;

/// How often plain mode prints a line while the work goes on, unless
/// [`Options::plain_every`] says otherwise.
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

/// How a [`Progress`] names itself and paces its plain lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// What every line and the bar start with: `vmfork clone`, `linux`.
    pub label: String,
    /// How often plain mode prints a line while the work goes on.
    pub plain_every: Duration,
}

impl Options {
    /// `vmfork WHAT`, a plain line every [`PLAIN_EVERY`]: what
    /// [`Progress::new`] uses.
    pub fn vmfork(what: &str) -> Options {
        Options {
            label: format!("vmfork {what}"),
            plain_every: PLAIN_EVERY,
        }
    }
}

/// Recomputed at each redraw and each plain line, and shown in parentheses
/// after the current step: "812 objects, 6.1/s".
pub type Detail = Box<dyn FnMut() -> String + Send>;

/// Progress of one piece of long work: a count out of an optional total and
/// the current step, shown as the [`ProgressMode`] says until
/// [`finish`](Progress::finish) or drop. Cheap to update from a hot loop
/// (`inc` is an atomic add); share it by reference across threads.
pub struct Progress {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

struct Shared {
    options: Options,
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
    detail: Option<Detail>,
    stop: bool,
    /// Plain mode: when the last line went out, and the last tenth printed.
    last_line: Instant,
    last_tenth: u64,
}

impl Progress {
    /// Starts showing progress of `what` ("template build", "clone"),
    /// counted out of `total` when it is known (a bar) or not (a spinner).
    pub fn new(total: Option<u64>, what: &str, mode: ProgressMode) -> Progress {
        Progress::with_options(total, Options::vmfork(what), mode)
    }

    /// [`Progress::new`] with another label or plain-line period.
    pub fn with_options(total: Option<u64>, options: Options, mode: ProgressMode) -> Progress {
        let started = Instant::now();
        let bar = match mode {
            ProgressMode::Terminal { color } => Some(terminal::bar(total, &options.label, color)),
            _ => None,
        };
        let shared = Arc::new(Shared {
            options,
            total,
            mode,
            started,
            pos: AtomicU64::new(0),
            bar,
            state: Mutex::new(State {
                message: String::new(),
                detail: None,
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
        let mut state = self.shared.lock();
        state.message = message.to_owned();
        self.shared.redraw(&mut state);
    }

    /// Shows what `detail` returns after the current step, asked afresh at
    /// each redraw and plain line, until replaced or removed (`None`).
    pub fn set_detail(&self, detail: Option<Detail>) {
        let mut state = self.shared.lock();
        state.detail = detail;
        self.shared.redraw(&mut state);
    }

    /// Prints `LABEL: [  5.0s] TEXT (COUNTS)` now, as a line of its own
    /// (above the bar on a terminal); a plain-mode step that is logged as
    /// it starts.
    pub fn line(&self, text: &str) {
        let line = self.shared.timed(text);
        self.println(&line);
        self.shared.lock().last_line = Instant::now();
    }

    /// Prints `text` as it is, on a line of its own (above the bar on a
    /// terminal), in both visible modes.
    pub fn println(&self, text: &str) {
        match (&self.shared.bar, self.shared.mode) {
            (Some(bar), _) => bar.println(text),
            (None, ProgressMode::Plain) => put_line(text),
            _ => {}
        }
    }

    /// Stops showing progress and prints `summary` as one last line
    /// (`vmfork template build: [  1.2s] done: ...`), in both visible modes.
    pub fn finish(mut self, summary: &str) {
        self.stop();
        if let Some(bar) = &self.shared.bar {
            bar.finish_and_clear();
        }
        if self.shared.mode != ProgressMode::Hidden {
            put_line(&self.shared.timed(summary));
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

impl State {
    /// The current step with its detail, if any.
    fn shown(&mut self) -> String {
        match self.detail.as_mut() {
            Some(detail) => with_detail(&self.message, &detail()),
            None => self.message.clone(),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts the current step on the bar, if there is one.
    fn redraw(&self, state: &mut State) {
        if let Some(bar) = &self.bar {
            bar.set_message(state.shown());
        }
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
                let message = state.shown();
                drop(state);
                put_line(&self.timed(&message));
            }
        }
    }

    fn tick_until_stopped(&self) {
        let every = match self.mode {
            ProgressMode::Terminal { .. } => TERMINAL_TICK,
            _ => self.options.plain_every,
        };
        let mut state = self.lock();
        loop {
            // Stopped before this thread first took the lock: the wake-up
            // came before anyone waited for it, and waiting now would
            // hold up `stop` for a whole tick (5 s in plain mode, seen
            // as `clone` taking 5 s to report a refused template).
            if state.stop {
                return;
            }
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
                if state.detail.is_some() {
                    bar.set_message(state.shown());
                }
                bar.tick();
                state.last_line = Instant::now();
            } else if state.last_line.elapsed() >= every {
                state.last_line = Instant::now();
                let message = state.shown();
                drop(state);
                put_line(&self.timed(&message));
                state = self.lock();
            }
        }
    }

    /// `LABEL: [  5.0s] TEXT (COUNTS)`.
    fn timed(&self, text: &str) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let pos = self.pos.load(Ordering::Relaxed);
        let counts = counts(pos, self.total, elapsed);
        plain_line(&self.options.label, elapsed, text, counts.as_deref())
    }
}

/// One line on stderr. Progress is never worth failing the work for.
fn put_line(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `LABEL: [  5.0s] TEXT (COUNTS)`, without the counts when there are none.
fn plain_line(label: &str, elapsed: f64, text: &str, counts: Option<&str>) -> String {
    let line = format!("{label}: [{elapsed:>5.1}s] {text}");
    match counts {
        Some(counts) => with_detail(&line, counts),
        None => line,
    }
}

/// `TEXT (DETAIL)`, or `TEXT` alone when the detail is empty.
fn with_detail(text: &str, detail: &str) -> String {
    if detail.is_empty() {
        text.to_owned()
    } else {
        format!("{text} ({detail})")
    }
}

/// "300/1000, 30 %, 60.1/s", or None before anything was counted toward
/// an unknown total.
fn counts(pos: u64, total: Option<u64>, elapsed: f64) -> Option<String> {
    let rate = pos as f64 / elapsed.max(1e-3);
    match total {
        Some(total) => Some(format!(
            "{pos}/{total}, {} %, {rate:.1}/s",
            pos.saturating_mul(100) / total.max(1)
        )),
        None if pos > 0 => Some(format!("{pos}, {rate:.1}/s")),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_and_without_a_total() {
        assert_eq!(
            counts(0, Some(1000), 1.0),
            Some("0/1000, 0 %, 0.0/s".into())
        );
        assert_eq!(
            counts(300, Some(1000), 5.0),
            Some("300/1000, 30 %, 60.0/s".into())
        );
        assert_eq!(counts(0, None, 1.0), None);
        assert_eq!(counts(42, None, 2.0), Some("42, 21.0/s".into()));
    }

    #[test]
    fn inc_and_set_move_the_count() {
        let p = Progress::new(Some(1000), "clone", ProgressMode::Hidden);
        p.inc(250);
        p.inc(50);
        assert_eq!(p.shared.pos.load(Ordering::Relaxed), 300);
        p.set(42);
        assert_eq!(p.shared.pos.load(Ordering::Relaxed), 42);
        p.finish("done");
    }

    #[test]
    fn plain_lines_name_the_work_and_the_time() {
        assert_eq!(
            plain_line(
                "vmfork clone",
                5.0,
                "starting",
                Some("300/1000, 30 %, 60.0/s")
            ),
            "vmfork clone: [  5.0s] starting (300/1000, 30 %, 60.0/s)"
        );
        assert_eq!(
            plain_line("linux", 123.45, "make vmlinux bzImage", None),
            "linux: [123.5s] make vmlinux bzImage"
        );
    }

    #[test]
    fn detail_follows_the_step_and_is_asked_each_time() {
        let p = Progress::new(None, "build", ProgressMode::Hidden);
        p.set_message("make");
        assert_eq!(p.shared.lock().shown(), "make");
        let mut n = 0;
        p.set_detail(Some(Box::new(move || {
            n += 1;
            format!("{n} objects")
        })));
        assert_eq!(p.shared.lock().shown(), "make (1 objects)");
        assert_eq!(p.shared.lock().shown(), "make (2 objects)");
        p.set_detail(Some(Box::new(String::new)));
        assert_eq!(p.shared.lock().shown(), "make");
        p.set_detail(None);
        assert_eq!(p.shared.lock().shown(), "make");
    }

    #[test]
    fn quiet_hides_everything() {
        assert_eq!(ProgressMode::detect(true), ProgressMode::Hidden);
    }

    #[test]
    fn options_for_vmfork_say_vmfork() {
        let options = Options::vmfork("template build");
        assert_eq!(options.label, "vmfork template build");
        assert_eq!(options.plain_every, PLAIN_EVERY);
    }
}
