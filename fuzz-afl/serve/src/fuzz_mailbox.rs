//! The guest channel's fuzz target (serve/fuzz/mailbox.rs) under AFL++.
//! serve/examples/fuzz_mailbox.rs first decodes all 2^32 ready-port
//! values: 30 s optimized, minutes with AFL++'s instrumentation on every
//! branch, and again in every `--write-dict`, `--triage` and `--classes`
//! run. That sweep is exhaustive, not fuzzing: the example and
//! serve/tests/fuzz_corpus.rs keep doing it, this binary only fuzzes.

// `sweep_words` is the exhaustive check left out here.
#[allow(dead_code)]
#[path = "../../../serve/fuzz/mailbox.rs"]
mod mailbox;

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

fn main() {
    fuzzer::main(mailbox::GuestChannel::new);
}
