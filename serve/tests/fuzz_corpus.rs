//! Replays the fuzz corpus of the guest channel (fuzz/corpus/mailbox) with
//! the fuzzer's own checks: nothing may panic, allocate absurdly, run slowly
//! or break an invariant, and each seed must give the class its name
//! promises. Fuzzer finds are saved there as `any__*` and replayed forever.

#[path = "../fuzz/mailbox.rs"]
mod mailbox;

use mailbox::GuestChannel;

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

#[test]
fn mailbox_seeds_are_current() {
    fuzzer::assert_seeds_current::<GuestChannel>(
        "cargo run -p vmfork-serve --example fuzz_mailbox -- --write-seeds",
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
                vmfork_machine::devices::ready_port::decode_write(&bytes),
                mailbox::documented(&bytes),
                "{v:#x}"
            );
        }
    }
}
