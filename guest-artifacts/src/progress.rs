//! Progress of a kernel or rootfs build, on stderr (stdout carries the
//! `name=path` lines scripts read).
//!
//! - On a terminal: an indicatif spinner with the elapsed time, the current
//!   step and, during `make`, the objects compiled so far and their rate
//!   (counted from the `  CC`/`  AS` lines make appends to the build log).
//!   Each step also leaves a line above the spinner. Unstyled when
//!   `NO_COLOR` is set.
//! - Otherwise (a log file, CI): a plain `linux: [  19s] step` line at each
//!   step and every [`PLAIN_EVERY`] while one runs, with the same counts.
//! - `--quiet`: nothing.
//!
//! Both visible modes end with one summary line.
//!
//! vmfork's own `Progress` (vmfork/src/cli/progress.rs) is the same idea for
//! the vmfork binary; this crate is built on its own, without it.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often plain mode repeats the current step while it runs.
pub const PLAIN_EVERY: Duration = Duration::from_secs(15);
const TERMINAL_TICK: Duration = Duration::from_millis(100);

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Hidden,
    Terminal { color: bool },
    Plain,
}

impl Mode {
    /// `Hidden` when `quiet`, `Terminal` when stderr is one, else `Plain`.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Hidden
        } else if std::io::stderr().is_terminal() {
            // no-color.org: set and not empty.
            let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
            Mode::Terminal { color: !no_color }
        } else {
            Mode::Plain
        }
    }
}

/// The progress of one build (`kind` is "linux" or "rootfs"), shown until
/// [`finish`](BuildProgress::finish) or drop.
pub struct BuildProgress {
    shared: Arc<Shared>,
    ticker: Option<JoinHandle<()>>,
}

struct Shared {
    kind: &'static str,
    mode: Mode,
    started: Instant,
    bar: Option<ProgressBar>,
    state: Mutex<State>,
    wake: Condvar,
}

struct State {
    step: String,
    stop: bool,
    last_line: Instant,
    objects: Option<ObjectCounter>,
}

impl BuildProgress {
    pub fn start(kind: &'static str, mode: Mode) -> BuildProgress {
        let started = Instant::now();
        let bar = match mode {
            Mode::Terminal { color } => {
                let template = if color {
                    "{spinner:.green} {prefix:.bold} [{elapsed}] {wide_msg}"
                } else {
                    "{spinner} {prefix} [{elapsed}] {wide_msg}"
                };
                let style = ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                Some(
                    ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
                        .with_style(style)
                        .with_prefix(format!("{kind}:")),
                )
            }
            _ => None,
        };
        let shared = Arc::new(Shared {
            kind,
            mode,
            started,
            bar,
            state: Mutex::new(State {
                step: String::new(),
                stop: false,
                last_line: started,
                objects: None,
            }),
            wake: Condvar::new(),
        });
        let ticker = (mode != Mode::Hidden)
            .then(|| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name("progress".into())
                    .spawn(move || shared.tick_until_stopped())
                    .ok()
            })
            .flatten();
        BuildProgress { shared, ticker }
    }

    /// A line of its own (what is built, where the log is).
    pub fn note(&self, line: &str) {
        self.shared.print(line);
    }

    /// A new step: a line now, then the spinner's message (or the periodic
    /// plain line) until the next one. Stops counting objects.
    pub fn step(&self, what: &str) {
        let mut state = self.shared.lock();
        state.step = what.to_owned();
        state.objects = None;
        state.last_line = Instant::now();
        drop(state);
        self.shared.print(&self.shared.timed(what));
        self.shared.show_step();
    }

    /// A step that runs make with its output appended to `log`: counts the
    /// objects it compiles from here on.
    pub fn step_counting(&self, what: &str, log: &Path) {
        self.step(what);
        self.shared.lock().objects = ObjectCounter::from_end_of(log);
    }

    /// Clears the spinner and prints `summary` as the last line.
    pub fn finish(mut self, summary: &str) {
        self.stop();
        self.shared.print(&self.shared.timed(summary));
    }

    fn stop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(ticker) = self.ticker.take() {
            let _ = ticker.join();
        }
        if let Some(bar) = &self.shared.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for BuildProgress {
    /// A failed build leaves no spinner behind its error message.
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `linux: [  19s] WHAT`.
    fn timed(&self, what: &str) -> String {
        format!(
            "{}: [{:>4}s] {what}",
            self.kind,
            self.started.elapsed().as_secs()
        )
    }

    fn print(&self, line: &str) {
        match (&self.bar, self.mode) {
            (Some(bar), _) => bar.println(line),
            (None, Mode::Plain) => {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
            _ => {}
        }
    }

    /// The step with its counts: "make vmlinux bzImage (812 objects, 6.1/s)".
    fn step_line(state: &mut State) -> String {
        match state.objects.as_mut() {
            Some(counter) => {
                let n = counter.update();
                let rate = n as f64 / counter.since.elapsed().as_secs_f64().max(1e-3);
                format!("{} ({n} objects, {rate:.1}/s)", state.step)
            }
            None => state.step.clone(),
        }
    }

    fn show_step(&self) {
        if let Some(bar) = &self.bar {
            let line = Self::step_line(&mut self.lock());
            bar.set_message(line);
        }
    }

    fn tick_until_stopped(&self) {
        let every = match self.mode {
            Mode::Terminal { .. } => TERMINAL_TICK,
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
            if state.last_line.elapsed() < every {
                continue;
            }
            state.last_line = Instant::now();
            let line = Self::step_line(&mut state);
            match &self.bar {
                Some(bar) => {
                    bar.set_message(line);
                    bar.tick();
                }
                None => {
                    let line = self.timed(&line);
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
            }
        }
    }
}

/// Counts compiled objects in what make appends to a log.
struct ObjectCounter {
    log: PathBuf,
    offset: u64,
    objects: u64,
    since: Instant,
}

impl ObjectCounter {
    fn from_end_of(log: &Path) -> Option<ObjectCounter> {
        let offset = std::fs::metadata(log).ok()?.len();
        Some(ObjectCounter {
            log: log.to_path_buf(),
            offset,
            objects: 0,
            since: Instant::now(),
        })
    }

    /// Reads the complete lines appended since the last call.
    fn update(&mut self) -> u64 {
        let mut text = Vec::new();
        let read = File::open(&self.log).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            f.read_to_end(&mut text)
        });
        if read.is_ok() {
            let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            self.objects += count_objects(&text[..complete]);
            self.offset += complete as u64;
        }
        self.objects
    }
}

/// Kbuild's quiet lines for a compiled object: `  CC      init/main.o`,
/// `  AS      arch/x86/entry/entry_64.o` (host tools, HOSTCC, are not
/// counted).
pub fn count_objects(text: &[u8]) -> u64 {
    text.split(|&b| b == b'\n')
        .filter(|line| line.starts_with(b"  CC ") || line.starts_with(b"  AS "))
        .count() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    #[test]
    fn counts_compiled_objects_only() {
        let log = b"  HOSTCC  scripts/basic/fixdep\n  CC      init/main.o\n  AS      arch/x86/a.o\n  LD      vmlinux\n  CC      kernel/fork.o\n";
        assert_eq!(count_objects(log), 3);
    }

    #[test]
    fn counter_reads_only_new_complete_lines() {
        let dir = TestDir::new("progress");
        let log = dir.path().join("build.log");
        std::fs::write(&log, "  CC      before.o\n").unwrap();
        let mut counter = ObjectCounter::from_end_of(&log).unwrap();
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"  CC      a.o\n  CC      b").unwrap();
        assert_eq!(counter.update(), 1);
        f.write_all(b".o\n").unwrap();
        assert_eq!(counter.update(), 2);
    }

    #[test]
    fn hidden_prints_nothing_and_finishes() {
        let p = BuildProgress::start("linux", Mode::Hidden);
        p.step("make");
        p.finish("done");
    }
}
