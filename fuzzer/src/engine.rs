//! The run loop: pick an input from the pool, mutate it, run it (run.rs),
//! keep inputs that show something new, save findings into the corpus.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::alloc;
use crate::corpus::{load_pool, save_finding, write_seeds};
use crate::mutate::{mutate_bytes, Rng};
use crate::run::{capture_panics, check};
use crate::target::{Limits, Target};

const MAX_POOL: usize = 4096;
/// How often (in runs) [`Target::check_health`] runs during fuzzing.
const HEALTH_EVERY: u64 = 2048;
/// Inputs saved into the corpus per kind of finding and run.
const SAVED_PER_KIND: u64 = 3;

struct Args {
    seconds: u64,
    runs: Option<u64>,
    seed: u64,
    corpus: Option<PathBuf>,
    write_seeds: bool,
    /// Print each new feature: shows what the pool is made of.
    show_features: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        seconds: 60,
        runs: None,
        seed: 0x5eed,
        corpus: None,
        write_seeds: false,
        show_features: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        let number = |name: &str, v: String| v.parse::<u64>().map_err(|e| format!("{name}: {e}"));
        match arg.as_str() {
            "--seconds" => args.seconds = number("--seconds", value("--seconds")?)?,
            "--runs" => args.runs = Some(number("--runs", value("--runs")?)?),
            "--seed" => args.seed = number("--seed", value("--seed")?)?,
            "--corpus" => args.corpus = Some(value("--corpus")?.into()),
            "--write-seeds" => args.write_seeds = true,
            "--show-features" => args.show_features = true,
            other => {
                return Err(format!(
                    "unknown argument {other}; expected --seconds N, --runs N, --seed N, \
                     --corpus DIR, --write-seeds or --show-features"
                ))
            }
        }
    }
    Ok(args)
}

/// The `main` of a fuzz example: `--seconds N` (default 60) or `--runs N`
/// of fuzzing from `--seed N`, or `--write-seeds` to (re)write the seed
/// corpus. `make` builds the target only when it will run (a target may
/// start VMs or servers). Exits 1 when anything was found.
pub fn main<T: Target>(make: impl FnOnce() -> Result<T, String>) {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{}: {e}", T::NAME);
            std::process::exit(2);
        }
    };
    let corpus = args.corpus.clone().unwrap_or_else(T::corpus_dir);
    if args.write_seeds {
        match write_seeds::<T>(&corpus) {
            Ok(n) => println!("wrote {n} seeds to {}", corpus.display()),
            Err(e) => {
                eprintln!("{}: writing seeds into {}: {e}", T::NAME, corpus.display());
                std::process::exit(1);
            }
        }
        return;
    }
    let target = match make() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{}: {e}", T::NAME);
            std::process::exit(1);
        }
    };
    let found = fuzz(target, &args, &corpus);
    std::process::exit(i32::from(found > 0));
}

fn fuzz<T: Target>(mut target: T, args: &Args, corpus: &std::path::Path) -> usize {
    capture_panics(false);
    if !alloc::installed() {
        println!(
            "{}: PeakAlloc is not the global allocator: allocation checks are off",
            T::NAME
        );
    }
    let limits = target.limits();
    let mut pool = load_pool::<T>(corpus);
    let mut rng = Rng(args.seed);
    let mut features: HashSet<String> = HashSet::new();
    let mut classes: BTreeMap<String, u64> = BTreeMap::new();
    let mut findings: BTreeMap<String, u64> = BTreeMap::new();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let mut execs: u64 = 0;
    println!(
        "{}: seed {:#x}, {} inputs, {}",
        T::NAME,
        args.seed,
        pool.len(),
        match args.runs {
            Some(n) => format!("{n} runs"),
            None => format!("{} s", args.seconds),
        }
    );
    // One bug usually shows up in thousands of inputs: keep the first few
    // of each kind, count the rest.
    let mut report = |kind: &str, detail: &str, input: &[u8]| {
        let seen = findings.entry(kind.to_string()).or_default();
        *seen += 1;
        if *seen <= SAVED_PER_KIND {
            match save_finding::<T>(corpus, kind, input) {
                Ok(path) => println!("FINDING {kind}: saved {}", path.display()),
                Err(e) => println!("FINDING {kind}: could not save it: {e}"),
            }
            println!("  {}", shorten(detail));
        }
    };
    let done = |execs: u64| match args.runs {
        Some(n) => execs >= n,
        None => Instant::now() >= deadline,
    };
    while !done(execs) {
        let input = mutate(&mut target, &mut rng, &pool, &limits);
        execs += 1;
        let outcome = check(&mut target, &input, &mut rng);
        *classes.entry(outcome.class.clone()).or_default() += 1;
        if let Some(f) = &outcome.finding {
            report(f.kind, &f.detail, &input);
        }
        if execs.is_multiple_of(HEALTH_EVERY) {
            if let Some(problem) = target.check_health() {
                report("health", &problem, &input);
            }
        }
        if pool.len() < MAX_POOL && !features.contains(&outcome.feature) {
            if args.show_features {
                println!("feature {:?}", outcome.feature);
            }
            features.insert(outcome.feature);
            pool.push(input);
        }
    }
    if let Some(problem) = target.check_health() {
        println!("FINDING health at the end: {problem}");
        *findings.entry("health".into()).or_default() += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {execs} executions in {secs:.1} s ({:.0}/s), pool {}, {} distinct outcomes, {} findings",
        T::NAME,
        execs as f64 / secs,
        pool.len(),
        features.len(),
        findings.values().sum::<u64>()
    );
    for (class, n) in &classes {
        println!("  {class:>20}: {n}");
    }
    for (kind, n) in &findings {
        println!("  finding {kind}: {n} inputs");
    }
    findings.len()
}

/// A finding's detail, cut to a readable length.
fn shorten(detail: &str) -> String {
    match detail.char_indices().nth(600) {
        Some((at, _)) => format!("{}... ({} bytes)", &detail[..at], detail.len()),
        None => detail.to_string(),
    }
}

fn mutate<T: Target>(target: &mut T, rng: &mut Rng, pool: &[Vec<u8>], limits: &Limits) -> Vec<u8> {
    let mut data = rng.pick(pool).clone();
    for _ in 0..1 + rng.below(4) {
        // Some mutations know the format when the target offers any; the
        // rest are blind, which finds what the format-aware ones assume
        // away.
        if !(rng.chance(limits.structured_percent) && target.mutate(rng, pool, &mut data)) {
            mutate_bytes(rng, pool, target.dictionary(), &mut data);
        }
    }
    data.truncate(limits.max_input);
    target.repair(rng, &mut data);
    data
}
