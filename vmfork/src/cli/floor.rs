//! `vmfork floor`: the KVM floor as a command, for benchmarks.

use clap::Args;
use serde_json::json;

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
