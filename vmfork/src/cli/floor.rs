//! `vmfork floor`: the KVM floor as a command, for benchmarks; and the
//! floor `vmfork clone --floor` measures beside its clones.

use std::time::Duration;

use clap::Args;
use serde_json::{json, Value};

use super::args::count;
use vmfork_machine::error::Result;
use vmfork_machine::floor::{measure, median, percentile};

#[derive(Debug, Args)]
pub struct FloorArgs {
    /// How many fresh VMs to create and run.
    #[arg(long, default_value = "100", value_name = "N", value_parser = count::<usize>(1, 100_000))]
    pub rounds: usize,
    /// Print one JSON object instead of a text line.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &FloorArgs) -> Result<()> {
    let rounds = args.rounds;
    let samples = measure(rounds)?;
    let (p50, p99, min) = (
        median(&samples),
        percentile(&samples, 99.0),
        samples.iter().min().copied().unwrap_or_default(),
    );
    if args.json {
        outln!(
            "{}",
            json!({"rounds": rounds, "floor_us": p50.as_micros() as u64,
                   "floor_p99_us": p99.as_micros() as u64, "floor_min_us": min.as_micros() as u64})
        );
    } else {
        outln!(
            "KVM floor over {rounds} rounds: p50 {} us, p99 {} us, min {} us",
            p50.as_micros(),
            p99.as_micros(),
            min.as_micros()
        );
    }
    Ok(())
}

/// The floor's median over 50 fresh VMs, when `--floor` asks for it.
pub fn measure_floor(wanted: bool) -> Result<Option<Duration>> {
    Ok(match wanted {
        true => Some(median(&measure(50)?)),
        false => None,
    })
}

/// `floor_us` and `ratio_vs_floor` for a JSON summary: the floor and the
/// clones' p50 over it, both null when the floor was not measured.
pub fn floor_json(p50: Duration, floor: Option<Duration>) -> (Value, Value) {
    match floor {
        Some(f) => (
            json!(f.as_micros() as u64),
            json!(p50.as_secs_f64() / f.as_secs_f64().max(1e-9)),
        ),
        None => (Value::Null, Value::Null),
    }
}
