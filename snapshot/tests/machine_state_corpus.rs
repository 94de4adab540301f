//! The real state decoder (`read_from::<MachineState>` then `validate`, as
//! a restore runs it) over states saved by real template builds, and over
//! deterministic mutations of them with the checksum repaired so every
//! mutation reaches the payload decoder and the validation. Nothing may
//! panic; every accepted state must pass validation or be refused by it.
//! New seeds: copy a template's `state` file to
//! snapshot/fuzz/machine-corpus/ok__NAME.bin (`ok__rootfs*` from a template
//! built with --rootfs); `version__*` are states of older format versions.

use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;

use vmfork_snapshot::state::MachineState;
use vmfork_snapshot::{read_from, CHECKSUM_LEN, HEADER_LEN, MAX_STATE_LEN};

fn corpus() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/machine-corpus");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("machine corpus directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            (
                name.unwrap_or_default(),
                std::fs::read(&p).expect("corpus file"),
            )
        })
        .collect()
}

/// What a restore does with the bytes: decode, then validate.
fn load(bytes: &[u8]) -> Result<MachineState, String> {
    let state: MachineState =
        read_from(&mut Cursor::new(bytes), MAX_STATE_LEN).map_err(|e| e.to_string())?;
    state.validate().map_err(|e| e.to_string())?;
    Ok(state)
}

fn repair_checksum(bytes: &mut [u8]) {
    let body = bytes.len() - CHECKSUM_LEN;
    let mut digest = crc64fast_nvme::Digest::new();
    digest.write(&bytes[..body]);
    bytes[body..].copy_from_slice(&digest.sum64().to_le_bytes());
}

#[test]
fn saved_states_decode_and_validate() {
    let corpus = corpus();
    assert!(
        corpus.iter().any(|(n, _)| n.starts_with("ok__")),
        "no ok__ seeds"
    );
    for (name, bytes) in &corpus {
        let result = panic::catch_unwind(|| load(bytes))
            .unwrap_or_else(|_| panic!("decoding {name} panicked"));
        if name.starts_with("ok__") {
            let state = result.unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!state.vcpus.is_empty(), "{name}");
            // Saved from a VM booted with --rootfs: its window survives.
            assert_eq!(state.pmem.is_some(), name.contains("rootfs"), "{name}");
        } else if name.starts_with("version__") {
            // States an older vmfork wrote: one line saying so.
            let e = result.expect_err("an old state must be refused");
            assert!(
                e.contains("state format version") && !e.contains('\n'),
                "{name}: {e}"
            );
        } else {
            assert!(result.is_err(), "{name} should be refused");
        }
    }
}

#[test]
fn mutated_states_never_panic() {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut refused = 0usize;
    for (name, original) in corpus().into_iter().filter(|(n, _)| n.starts_with("ok__")) {
        let payload = HEADER_LEN..original.len() - CHECKSUM_LEN;
        for round in 0..3000 {
            let mut bytes = original.clone();
            for _ in 0..1 + next() % 4 {
                let at = payload.start + (next() as usize) % payload.len();
                match next() % 3 {
                    0 => bytes[at] ^= 1 << (next() % 8),
                    1 => bytes[at] = next() as u8,
                    _ => bytes[at] = 0xff,
                }
            }
            repair_checksum(&mut bytes);
            let outcome = panic::catch_unwind(AssertUnwindSafe(|| load(&bytes)));
            match outcome {
                Err(_) => panic!("{name} mutation {round} panicked the decoder"),
                Ok(Err(_)) => refused += 1,
                Ok(Ok(_)) => {}
            }
        }
    }
    // Most single-byte changes in kvm structs are still valid states; the
    // ones in lengths and tags must be refused, and some always are.
    assert!(refused > 0, "no mutation was ever refused");
}
