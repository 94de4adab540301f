//! Replays the fuzz corpora of the template manifest and the guest channel
//! (fuzz/corpus/{manifest,mailbox}) with the fuzzers' own checks: nothing
//! may panic, allocate absurdly, run slowly or break an invariant, and each
//! seed must give the class its name promises. Fuzzer finds are saved into
//! the same directories as `any__*` and replayed here forever after.

#[path = "../fuzz/mailbox.rs"]
mod mailbox;
#[path = "../fuzz/manifest.rs"]
mod manifest;

use mailbox::GuestChannel;
use manifest::ManifestTarget;

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

#[test]
fn manifest_seeds_are_current() {
    fuzzer::assert_seeds_current::<ManifestTarget>(
        "cargo run -p vmfork-launcher --example fuzz_manifest -- --write-seeds",
    );
}

#[test]
fn manifest_corpus_replays_cleanly() {
    fuzzer::replay(&mut ManifestTarget::new().expect("scratch directory"));
}

#[test]
fn mailbox_seeds_are_current() {
    fuzzer::assert_seeds_current::<GuestChannel>(
        "cargo run -p vmfork-launcher --example fuzz_mailbox -- --write-seeds",
    );
}

#[test]
fn mailbox_corpus_replays_cleanly() {
    fuzzer::replay(&mut GuestChannel::new().expect("a KVM VM for the port bus"));
}

#[test]
fn ready_port_values_decode_as_documented() {
    // Every 4099th value (about a million) here; the fuzzer checks all 2^32.
    assert_eq!(mailbox::sweep_words(4099), None);
    for high in [0x4558u32, 0x504e, 0x4143, 0x5245] {
        for low in 0..=0xffffu32 {
            let v = high << 16 | low;
            let bytes = v.to_le_bytes();
            assert_eq!(
                launcher::devices::ready_port::decode_write(&bytes),
                mailbox::documented(&bytes),
                "{v:#x}"
            );
        }
    }
}
