//! Replays the HTTP fuzz corpus (fuzz/corpus/http) against a real
//! `vmfork serve` router with real function templates, with the fuzzer's
//! own checks (fuzz/http.rs): no panic, no hang, well-formed responses with
//! sane statuses, functions' answers exact, /healthz answering after every
//! input, and every clone reaped with no fd leaked at the end. Needs
//! /dev/kvm, like the rest of the integration tests.

#[path = "../fuzz/http.rs"]
mod http;

use fuzzer::Target;
use http::HttpTarget;

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

#[test]
fn http_seeds_are_current() {
    fuzzer::assert_seeds_current::<HttpTarget>(
        "cargo run -p vmfork-serve --example fuzz_http -- --write-seeds",
    );
}

#[test]
fn http_corpus_replays_cleanly() {
    let mut target = HttpTarget::start().expect("the server and its templates");
    fuzzer::replay(&mut target);
    assert_eq!(target.check_health(), None);
}
