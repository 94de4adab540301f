//! Replays the fuzz corpus of the template manifest (fuzz/corpus/manifest)
//! with the fuzzer's own checks: nothing may panic, allocate absurdly, run
//! slowly or break an invariant, and each seed must give the class its name
//! promises. Fuzzer finds are saved there as `any__*` and replayed forever.

#[path = "../fuzz/manifest.rs"]
mod manifest;

use manifest::ManifestTarget;

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

#[test]
fn manifest_seeds_are_current() {
    fuzzer::assert_seeds_current::<ManifestTarget>(
        "cargo run -p vmfork-template --example fuzz_manifest -- --write-seeds",
    );
}

#[test]
fn manifest_corpus_replays_cleanly() {
    fuzzer::replay(&mut ManifestTarget::new().expect("scratch directory"));
}
