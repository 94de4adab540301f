//! A small stable-Rust mutation fuzzer (libFuzzer needs nightly), shared by
//! every fuzz harness in vmfork: the state decoder
//! (snapshot/examples/fuzz_state.rs) and the template manifest,
//! guest channel and HTTP front end (serve/examples and template/examples).
//!
//! A harness implements [`Target`]: its seeds, one run with its own checks,
//! and optionally mutations that know its format. This crate supplies the
//! rest, the same for all of them: a deterministic PRNG, generic byte
//! mutations, the run loop with `catch_unwind`, a peak-allocation check
//! ([`PeakAlloc`]), a slow-input check, findings saved into the corpus as
//! `any__<kind>-<hash>.<ext>`, and [`replay`], which the corpus regression
//! tests call from plain `cargo test`.
//!
//! Corpus file names are `<class>__<what>.<ext>`: replaying the file must
//! give that class (what [`Outcome::class`] says), and `any` (fuzzer
//! finds) only promises no finding.

mod alloc;
mod corpus;
mod engine;
mod mutate;
mod run;
mod target;

pub use alloc::PeakAlloc;
pub use corpus::{assert_seeds_current, expected_class, fnv1a, replay};
pub use engine::main;
pub use mutate::{mutate_bytes, Rng, INTERESTING_NUMBERS};
pub use run::check;
pub use target::{Finding, Limits, Outcome, Target};
