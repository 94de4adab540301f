//! Mutation fuzzer for the template manifest (`template.json`); the target
//! and its checks are in fuzz/manifest.rs, the engine in fuzzer/. Findings
//! are saved into fuzz/corpus/manifest, which tests/fuzz_corpus.rs replays.
//!
//! ```text
//! cargo run --release -p vmfork-template --example fuzz_manifest -- --seconds 600
//! cargo run -p vmfork-template --example fuzz_manifest -- --write-seeds
//! ```

#[path = "../fuzz/manifest.rs"]
mod manifest;

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

fn main() {
    fuzzer::main(manifest::ManifestTarget::new);
}
