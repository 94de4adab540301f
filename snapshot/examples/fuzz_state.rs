//! A stable-Rust mutation fuzzer for the state file decoder (libFuzzer needs
//! nightly), on the shared engine in fuzzer/. It mutates the corpus in
//! snapshot/fuzz/corpus and runs `decode` and `read_from`. A finding is a
//! panic, a decode/read_from disagreement, a decoded value that does not
//! survive encode and decode again, an allocation far larger than the
//! input, or one run taking over a second. Findings are saved into the
//! corpus as `any__<kind>-<hash>.bin`, which tests/fuzz_corpus.rs then
//! replays on every `cargo test`.
//!
//! ```text
//! cargo run --release -p vmfork-snapshot --example fuzz_state -- --seconds 600
//! cargo run -p vmfork-snapshot --example fuzz_state -- --write-seeds
//! ```

use std::io::Cursor;
use std::path::PathBuf;

use fuzzer::{Outcome, Rng, Target};

#[path = "../fuzz/sample_state.rs"]
mod sample_state;

use sample_state::{class_of, fix_frame, SampleState};
use sample_state::{ARCH_AT, HEADER, LEN_AT, VERSION_AT};
use vmfork_snapshot::{decode, encode, read_from, Error, MAX_STATE_LEN};

#[global_allocator]
static ALLOC: fuzzer::PeakAlloc = fuzzer::PeakAlloc;

struct StateDecoder;

impl Target for StateDecoder {
    const NAME: &'static str = "fuzz_state";

    fn corpus_dir() -> PathBuf {
        sample_state::corpus_dir()
    }

    fn seeds() -> Vec<(String, Vec<u8>)> {
        sample_state::seeds()
    }

    fn run(&mut self, input: &[u8], rng: &mut Rng) -> Outcome {
        let decoded = decode::<SampleState>(input);
        let cap = match rng.below(4) {
            0 => MAX_STATE_LEN,
            1 => rng.below(input.len() + 1) as u64,
            2 => u64::MAX,
            _ => input.len() as u64,
        };
        let streamed = read_from::<SampleState>(&mut Cursor::new(input), cap);
        let mut outcome = Outcome::new(class_of(&decoded), feature_of(&decoded));
        // With the default cap both readers see the same file the same way.
        outcome.check(
            cap != MAX_STATE_LEN || class_of(&decoded) == class_of(&streamed),
            "disagree",
            || format!("decode {decoded:?}, read_from {streamed:?}"),
        );
        // Postcard accepts overlong varints, so bytes need not re-encode to
        // themselves; the value must survive another round trip unchanged.
        if let Ok(state) = &decoded {
            let again = encode(state)
                .ok()
                .and_then(|b| decode::<SampleState>(&b).ok());
            outcome.check(again.as_ref() == Some(state), "roundtrip", || {
                format!("{state:?} came back as {again:?}")
            });
        }
        outcome
    }

    fn mutate(&mut self, rng: &mut Rng, _pool: &[Vec<u8>], data: &mut Vec<u8>) -> bool {
        let len = data.len();
        if len < HEADER {
            return false;
        }
        match rng.below(3) {
            0 => {
                let actual = len.saturating_sub(HEADER + 8) as u64;
                let value = match rng.below(7) {
                    0 => actual.wrapping_add(1 + rng.below(8) as u64),
                    1 => actual.wrapping_sub(1 + rng.below(8) as u64),
                    2 => 1 << 63,
                    3 => u64::MAX,
                    4 => MAX_STATE_LEN + rng.below(3) as u64 - 1,
                    5 => rng.next_u64(),
                    _ => actual,
                };
                data[LEN_AT..HEADER].copy_from_slice(&value.to_le_bytes());
            }
            1 => {
                // A varint at its limits, where length prefixes and integers live.
                let at = HEADER + rng.below(len - HEADER + 1);
                let varint: &[u8] = match rng.below(3) {
                    0 => &[0xff, 0xff, 0xff, 0xff, 0x0f],
                    1 => &[0xff; 10],
                    _ => &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02],
                };
                data.splice(at..at, varint.iter().copied());
            }
            _ => {
                let at = if rng.chance(50) { VERSION_AT } else { ARCH_AT } + rng.below(4);
                data[at] = rng.next_u64() as u8;
            }
        }
        true
    }

    fn repair(&mut self, rng: &mut Rng, data: &mut Vec<u8>) {
        // Most mutations break the checksum; repair it often so the payload
        // decoder, not just the frame checks, gets exercised.
        if rng.chance(60) {
            fix_frame(data);
        }
    }
}

fn feature_of(r: &Result<SampleState, Error>) -> String {
    match r {
        Ok(s) => format!(
            "ok {} {} {:?} {}",
            s.vcpus.len(),
            s.devices.len(),
            s.memory
                .as_ref()
                .map(|m| (m.regions.len(), m.dirty.is_some())),
            s.name.len().min(4)
        ),
        // Postcard's message names the kind of failure, not the input.
        Err(Error::Decode(e)) => format!("decode {e}"),
        Err(_) => class_of(r).to_string(),
    }
}

fn main() {
    fuzzer::main(|| Ok(StateDecoder));
}
