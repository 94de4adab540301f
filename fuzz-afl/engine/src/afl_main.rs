//! `fuzzer::main` for AFL++ builds: the harness's `main` calls it exactly
//! as it calls the home-made engine's, and gets one of
//!
//! - no arguments: run under `afl-fuzz` (persistent mode, inputs from
//!   shared memory); a finding aborts the process, which AFL++ records as
//!   a crash;
//! - `--write-dict FILE`: the target's dictionary as an AFL++ dictionary;
//! - `--triage DIR KIND FILE...`: runs each file (an AFL++ crash or hang)
//!   as one fuzz run does and saves what ran into the corpus directory DIR
//!   as `any__<kind>-<hash>.<ext>`, the kind being the finding's or KIND
//!   when the file gives none now;
//! - `--classes FILE...`: how many of the files (AFL++'s queue) give each
//!   outcome class, to see what the coverage-guided corpus is made of.
//!
//! An input runs exactly as corpus replay runs the bytes that get saved:
//! the target's repair step first (seeded by the input, so a run is a
//! function of its input and AFL++'s stability holds), then `check` seeded
//! by the repaired bytes, which is what `fuzzer::replay` does with a file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::corpus::save_finding;
use crate::mutate::Rng;
use crate::run::{capture_panics, check};
use crate::target::{Outcome, Target};
use crate::{alloc, fnv1a};

/// How often (in runs) [`Target::check_health`] runs, as in the home-made
/// engine.
const HEALTH_EVERY: u64 = 2048;

pub fn main<T: Target>(make: impl FnOnce() -> Result<T, String>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None => {
            fuzz(make);
            Ok(())
        }
        Some("--write-dict") if args.len() == 2 => {
            make().and_then(|t| write_dict(&t, Path::new(&args[1])))
        }
        Some("--triage") if args.len() >= 3 => {
            make().and_then(|mut t| triage(&mut t, Path::new(&args[1]), &args[2], &args[3..]))
        }
        Some("--classes") => make().and_then(|mut t| classes(&mut t, &args[1..])),
        Some(_) => Err(
            "this is an AFL++ build: run it under afl-fuzz (scripts/fuzz-afl.sh), \
             or give --write-dict FILE, --triage DIR KIND FILE... or --classes FILE..."
                .to_string(),
        ),
    };
    if let Err(e) = result {
        eprintln!("{}: {e}", T::NAME);
        std::process::exit(1);
    }
}

/// One input as a fuzz run takes it: the bytes that ran and what they gave.
fn run_one<T: Target>(target: &mut T, data: &[u8]) -> (Vec<u8>, Outcome) {
    let mut input = data.to_vec();
    input.truncate(target.limits().max_input);
    target.repair(&mut Rng(fnv1a(data)), &mut input);
    let outcome = check(target, &input, &mut Rng(fnv1a(&input)));
    (input, outcome)
}

/// The target, built in the process that runs inputs: AFL++ forks its
/// forkserver's children from the state before the first input, and a
/// fork keeps neither threads (the HTTP target's server) nor the right to
/// use KVM file descriptors (KVM refuses ioctls from another process's
/// address space), so nothing is built before the fork.
struct Driver<T, F> {
    make: Option<F>,
    target: Option<T>,
    runs: u64,
    health_log: Option<PathBuf>,
}

// A finding, including a panic caught inside `check`, aborts the process,
// so no state a panic left half-updated is ever used again.
impl<T, F> std::panic::RefUnwindSafe for Driver<T, F> {}

impl<T: Target, F: FnOnce() -> Result<T, String>> Driver<T, F> {
    fn run(&mut self, data: &[u8]) {
        if self.target.is_none() {
            let made = self.make.take().map(|make| make());
            match made {
                Some(Ok(t)) => self.target = Some(t),
                Some(Err(e)) => {
                    eprintln!("{}: {e}", T::NAME);
                    std::process::exit(1);
                }
                None => std::process::exit(1),
            }
        }
        let Some(target) = self.target.as_mut() else {
            return;
        };
        let (_, outcome) = run_one(target, data);
        if let Some(f) = &outcome.finding {
            eprintln!("{}: FINDING {}: {}", T::NAME, f.kind, f.detail);
            std::process::abort();
        }
        self.runs += 1;
        if self.runs.is_multiple_of(HEALTH_EVERY) {
            if let Some(problem) = target.check_health() {
                // Leaks show over many inputs, not in one: logged for the
                // script to report rather than pinned on this input.
                self.log_health(&problem);
            }
        }
    }

    fn log_health(&self, problem: &str) {
        let line = format!("{}: health after {} runs: {problem}\n", T::NAME, self.runs);
        let logged = self.health_log.as_ref().is_some_and(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .is_ok()
        });
        if !logged {
            eprint!("{line}");
        }
    }
}

fn fuzz<T: Target>(make: impl FnOnce() -> Result<T, String>) {
    // Panics on any thread become findings of the run they happen in, as
    // in replay; the message still goes to stderr (AFL_DEBUG_CHILD=1).
    capture_panics(true);
    if !alloc::installed() {
        eprintln!(
            "{}: PeakAlloc is not the global allocator: allocation checks are off",
            T::NAME
        );
    }
    let mut driver = Driver {
        make: Some(make),
        target: None,
        runs: 0,
        health_log: std::env::var_os("VMFORK_AFL_HEALTH_LOG").map(PathBuf::from),
    };
    afl::fuzz_nohook!(|data: &[u8]| driver.run(data));
}

/// AFL++ dictionary syntax: `name="bytes"` with `\xNN` for anything but
/// printable ASCII, and `\"`, `\\` escaped.
fn write_dict<T: Target>(target: &T, path: &Path) -> Result<(), String> {
    // afl-fuzz refuses a dictionary entry over 128 bytes (MAX_DICT_FILE).
    const MAX_TOKEN: usize = 128;
    let mut text = String::new();
    let mut written = 0;
    for (i, token) in target.dictionary().iter().enumerate() {
        if token.is_empty() || token.len() > MAX_TOKEN {
            continue;
        }
        text.push_str(&format!("token_{i}=\""));
        for &b in token.iter() {
            match b {
                b'"' | b'\\' => text.push_str(&format!("\\{}", b as char)),
                0x20..=0x7e => text.push(b as char),
                _ => text.push_str(&format!("\\x{b:02x}")),
            }
        }
        text.push_str("\"\n");
        written += 1;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "{}: {written} dictionary tokens in {}",
        T::NAME,
        path.display()
    );
    Ok(())
}

fn triage<T: Target>(
    target: &mut T,
    dir: &Path,
    kind: &str,
    files: &[String],
) -> Result<(), String> {
    capture_panics(false);
    for file in files {
        let data = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
        let (input, outcome) = run_one(target, &data);
        let (kind, detail) = match &outcome.finding {
            Some(f) => (f.kind, f.detail.as_str()),
            None => (kind, "no finding when run again"),
        };
        let saved =
            save_finding::<T>(dir, kind, &input).map_err(|e| format!("{}: {e}", dir.display()))?;
        let detail: String = detail.chars().take(400).collect();
        println!("{file} -> {}: {kind}: {detail}", saved.display());
    }
    Ok(())
}

fn classes<T: Target>(target: &mut T, files: &[String]) -> Result<(), String> {
    capture_panics(false);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for file in files {
        let data = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
        let (_, outcome) = run_one(target, &data);
        let class = match outcome.finding {
            Some(f) => format!("finding {}", f.kind),
            None => outcome.class,
        };
        *counts.entry(class).or_default() += 1;
    }
    let total = files.len().max(1) as f64;
    for (class, n) in &counts {
        println!("  {class:>24}: {n} ({:.1}%)", *n as f64 * 100.0 / total);
    }
    Ok(())
}
