//! Progress of a kernel or rootfs build, on stderr (stdout carries the
//! `name=path` lines scripts read), shown by the shared `vmfork-progress`
//! crate: a spinner on a terminal, plain lines every [`PLAIN_EVERY`]
//! otherwise (`linux: [ 19.0s] step`), nothing under `--quiet`.
//!
//! What is particular to builds: each step also leaves a line of its own,
//! and during `make` the step shows the objects compiled so far and their
//! rate, counted from the `  CC`/`  AS` lines make appends to the build log.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmfork_progress::{Options, Progress, ProgressMode};

/// How often plain mode repeats the current step while it runs: a kernel
/// build takes minutes, so less often than vmfork's own commands.
pub const PLAIN_EVERY: Duration = Duration::from_secs(15);

/// The progress of one build (`kind` is "linux" or "rootfs"), shown until
/// [`finish`](BuildProgress::finish) or drop.
pub struct BuildProgress {
    progress: Progress,
}

impl BuildProgress {
    pub fn start(kind: &str, mode: ProgressMode) -> BuildProgress {
        let options = Options {
            label: kind.to_owned(),
            plain_every: PLAIN_EVERY,
        };
        BuildProgress {
            progress: Progress::with_options(None, options, mode),
        }
    }

    /// A line of its own (what is built, where the log is).
    pub fn note(&self, line: &str) {
        self.progress.println(line);
    }

    /// A new step: a line now, then the spinner's message (or the periodic
    /// plain line) until the next one. Stops counting objects.
    pub fn step(&self, what: &str) {
        self.progress.set_detail(None);
        self.progress.set_message(what);
        self.progress.line(what);
    }

    /// A step that runs make with its output appended to `log`: counts the
    /// objects it compiles from here on.
    pub fn step_counting(&self, what: &str, log: &Path) {
        self.step(what);
        if let Some(mut counter) = ObjectCounter::from_end_of(log) {
            self.progress
                .set_detail(Some(Box::new(move || counter.describe())));
        }
    }

    /// Clears the spinner and prints `summary` as the last line.
    pub fn finish(self, summary: &str) {
        self.progress.finish(summary);
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

    /// "812 objects, 6.1/s", counted since make started.
    fn describe(&mut self) -> String {
        let objects = self.update();
        objects_and_rate(objects, self.since.elapsed().as_secs_f64())
    }
}

fn objects_and_rate(objects: u64, secs: f64) -> String {
    let rate = objects as f64 / secs.max(1e-3);
    format!("{objects} objects, {rate:.1}/s")
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
    use std::io::Write;

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
    fn objects_come_with_their_rate() {
        assert_eq!(objects_and_rate(812, 133.1), "812 objects, 6.1/s");
        assert_eq!(objects_and_rate(0, 0.0), "0 objects, 0.0/s");
    }

    #[test]
    fn hidden_prints_nothing_and_finishes() {
        let p = BuildProgress::start("linux", ProgressMode::Hidden);
        p.step("make");
        p.finish("done");
    }
}
