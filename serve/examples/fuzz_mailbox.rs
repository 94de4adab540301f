//! Mutation fuzzer for the host side of the guest channel: the function
//! mailbox's response and port I/O at and around the ready port, driven by
//! a malicious guest. The target and its checks are in fuzz/mailbox.rs;
//! findings go to fuzz/corpus/mailbox, which tests/fuzz_corpus.rs replays.
//! Needs /dev/kvm (the UART behind the port bus wants a VM's irqfd).
//!
//! Before fuzzing, every one of the 2^32 values a guest can write to the
//! ready port is decoded and compared with docs/guest-abi.md.
//!
//! ```text
//! cargo run --release -p vmfork-serve --example fuzz_mailbox -- --seconds 600
//! cargo run -p vmfork-serve --example fuzz_mailbox -- --write-seeds
//! ```

use std::time::Instant;

#[path = "../fuzz/mailbox.rs"]
mod mailbox;

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

fn main() {
    if !std::env::args().any(|a| a == "--write-seeds") {
        let started = Instant::now();
        if let Some((value, got, want)) = mailbox::sweep_words(1) {
            println!("fuzz_mailbox: FINDING {value:#x} decodes to {got:?}, documented {want:?}");
            std::process::exit(1);
        }
        println!(
            "fuzz_mailbox: all 2^32 ready-port values decode as documented ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
    }
    fuzzer::main(mailbox::GuestChannel::new);
}
