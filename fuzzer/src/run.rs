//! One run of one input under `catch_unwind`, with the checks every target
//! gets: a panic on any thread, the largest allocation, the time taken.
//! Both the fuzz loop (engine.rs) and corpus replay (corpus.rs) use it.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Mutex;
use std::time::Instant;

use crate::alloc;
use crate::mutate::Rng;
use crate::target::{Finding, Outcome, Target};

static PANIC_MESSAGE: Mutex<Option<String>> = Mutex::new(None);

/// Records the first panic message from any thread (a server's worker
/// panics on its own thread, not inside our `catch_unwind`).
pub(crate) fn capture_panics(forward: bool) {
    let previous = panic::take_hook();
    panic::set_hook(Box::new(move |info| {
        if let Ok(mut m) = PANIC_MESSAGE.lock() {
            m.get_or_insert_with(|| info.to_string());
        }
        if forward {
            previous(info);
        }
    }));
}

fn take_panic_message() -> Option<String> {
    PANIC_MESSAGE.lock().ok().and_then(|mut m| m.take())
}

/// Runs one input with every generic check around the target's own:
/// a panic on any thread, the largest allocation, the time taken.
pub fn check<T: Target>(target: &mut T, input: &[u8], rng: &mut Rng) -> Outcome {
    let limits = target.limits();
    take_panic_message();
    alloc::reset();
    let started = Instant::now();
    let result = panic::catch_unwind(AssertUnwindSafe(|| target.run(input, rng)));
    let elapsed = started.elapsed();
    let peak = alloc::peak();
    let mut outcome = result.unwrap_or_else(|_| Outcome::new("PANIC", "panic"));
    if let Some(message) = take_panic_message() {
        // A panic elsewhere outranks whatever the run concluded from it.
        outcome.finding = Some(Finding {
            kind: "panic",
            detail: message,
        });
    }
    let allowed = input.len().saturating_mul(2) + limits.alloc_slack;
    outcome.check(peak <= allowed, "alloc", || {
        format!(
            "one allocation of {peak} bytes for a {}-byte input",
            input.len()
        )
    });
    outcome.check(elapsed <= limits.slow, "slow", || {
        format!("took {elapsed:?} (limit {:?})", limits.slow)
    });
    outcome
}
