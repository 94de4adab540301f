//! Mutation fuzzer for the HTTP request path of `vmfork serve`: raw
//! HTTP/1.1 requests against a real router on loopback, with real function
//! templates (cold-booted and saved in-process at start). The target and
//! its checks are in fuzz/http.rs; findings go to fuzz/corpus/http, which
//! tests/fuzz_http_corpus.rs replays. Needs /dev/kvm.
//!
//! ```text
//! cargo run --release -p vmfork-serve --example fuzz_http -- --seconds 600
//! cargo run -p vmfork-serve --example fuzz_http -- --write-seeds
//! ```

#[path = "../fuzz/http.rs"]
mod http;

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

fn main() {
    fuzzer::main(http::HttpTarget::start);
}
