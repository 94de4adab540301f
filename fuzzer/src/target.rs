//! What a harness implements, and what one run of it reports.

use std::path::PathBuf;
use std::time::Duration;

use crate::mutate::Rng;

/// What one run of an input gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Corpus file names start with it; counted in the run's summary.
    pub class: String,
    /// Inputs that give a feature not seen before join the mutation pool
    /// (a crude stand-in for coverage feedback).
    pub feature: String,
    pub finding: Option<Finding>,
}

/// A bug: a panic, a broken invariant, an absurd allocation, a slow input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Short, file-name safe: `any__<kind>-<hash>` is where the input goes.
    pub kind: &'static str,
    pub detail: String,
}

impl Outcome {
    pub fn new(class: impl Into<String>, feature: impl Into<String>) -> Outcome {
        Outcome {
            class: class.into(),
            feature: feature.into(),
            finding: None,
        }
    }

    /// Records a finding unless one is already recorded (the first broken
    /// check is the one worth reading).
    pub fn find(&mut self, kind: &'static str, detail: impl Into<String>) {
        if self.finding.is_none() {
            self.finding = Some(Finding {
                kind,
                detail: detail.into(),
            });
        }
    }

    /// [`Outcome::find`] when `ok` is false; `detail` is only built then.
    pub fn check(&mut self, ok: bool, kind: &'static str, detail: impl FnOnce() -> String) {
        if !ok {
            self.find(kind, detail());
        }
    }
}

/// Bounds every run is held to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest input the mutator produces.
    pub max_input: usize,
    /// Largest single allocation allowed: this plus twice the input's size.
    /// serde pre-allocates at most 1 MiB per collection from a length
    /// prefix, so a few MiB over the input is already a bug for a decoder.
    pub alloc_slack: usize,
    /// One run taking longer than this is a finding.
    pub slow: Duration,
    /// How many mutations in a hundred go to [`Target::mutate`] first.
    pub structured_percent: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_input: 256 << 10,
            alloc_slack: 4 << 20,
            slow: Duration::from_secs(1),
            structured_percent: 30,
        }
    }
}

/// One thing to fuzz.
pub trait Target {
    /// Printed in messages: the example's name.
    const NAME: &'static str;
    /// Corpus file extension, without the dot.
    const EXTENSION: &'static str = "bin";

    fn corpus_dir() -> PathBuf;
    /// The seed corpus by file name (`<class>__<what>.<ext>`).
    fn seeds() -> Vec<(String, Vec<u8>)>;

    /// Runs one input and checks everything the target promises. Panics
    /// are caught and allocation and time are checked around this.
    fn run(&mut self, input: &[u8], rng: &mut Rng) -> Outcome;

    /// A mutation that knows the format; `false` lets a generic byte
    /// mutation run instead.
    fn mutate(&mut self, _rng: &mut Rng, _pool: &[Vec<u8>], _data: &mut Vec<u8>) -> bool {
        false
    }

    /// Applied after mutating, e.g. to fix a checksum so that mutations
    /// reach past it.
    fn repair(&mut self, _rng: &mut Rng, _data: &mut Vec<u8>) {}

    /// Tokens the byte mutator inserts or overwrites with (keywords,
    /// magic numbers).
    fn dictionary(&self) -> &[&[u8]] {
        &[]
    }

    fn limits(&self) -> Limits {
        Limits::default()
    }

    /// Checked every few thousand runs and at the end of a fuzz run (leaks
    /// that show only over many inputs); `Some` is a finding.
    fn check_health(&mut self) -> Option<String> {
        None
    }
}
