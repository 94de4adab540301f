//! The `fuzzer` crate's API (../../fuzzer) for AFL++ builds of the fuzz
//! examples. Everything but `main` is the same source, compiled in here:
//! a harness runs with the same checks (`check`: panics on any thread, the
//! largest allocation, the time taken, the target's own), the same repair
//! step and the same PRNG seeding as corpus replay. Only `main` differs: it
//! hands inputs from AFL++ to the target instead of running the home-made
//! mutation loop (afl_main.rs).

#[path = "../../../fuzzer/src/alloc.rs"]
mod alloc;
// The seed writing and pool loading there serve the home-made loop only.
#[allow(dead_code)]
#[path = "../../../fuzzer/src/corpus.rs"]
mod corpus;
#[path = "../../../fuzzer/src/mutate.rs"]
mod mutate;
#[path = "../../../fuzzer/src/run.rs"]
mod run;
#[path = "../../../fuzzer/src/target.rs"]
mod target;

mod afl_main;

pub use afl_main::main;
pub use alloc::PeakAlloc;
pub use corpus::{assert_seeds_current, expected_class, fnv1a, replay};
pub use mutate::{mutate_bytes, Rng, INTERESTING_NUMBERS};
pub use run::check;
pub use target::{Finding, Limits, Outcome, Target};
