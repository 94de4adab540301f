//! Replays the fuzz corpus (snapshot/fuzz/corpus) through both decoders:
//! nothing may panic, every seed must give the class its name promises, and
//! the in-memory and streaming decoders must agree. Fuzzer finds are saved
//! into the same directory as `any__*.bin` and replayed here forever after.

use std::io::Cursor;
use std::panic::{self, AssertUnwindSafe};

#[path = "../fuzz/sample_state.rs"]
mod sample_state;

use sample_state::{class_of, corpus_dir, expected_class, seeds, SampleState};
use vmfork_snapshot::{decode, encode, read_from, MAX_STATE_LEN};

#[test]
fn corpus_seeds_are_current() {
    for (name, bytes) in seeds() {
        let path = corpus_dir().join(&name);
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} is missing or stale; regenerate the seeds with \
             `cargo run -p vmfork-snapshot --example fuzz_state -- --write-seeds`",
            path.display()
        );
    }
}

#[test]
fn every_corpus_file_decodes_to_its_class_without_panicking() {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(files.len() >= seeds().len(), "corpus is missing seeds");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let in_memory = panic::catch_unwind(|| decode::<SampleState>(&bytes))
            .unwrap_or_else(|_| panic!("decode panicked on {name}"));
        let streamed = panic::catch_unwind(AssertUnwindSafe(|| {
            read_from::<SampleState>(&mut Cursor::new(&bytes), MAX_STATE_LEN)
        }))
        .unwrap_or_else(|_| panic!("read_from panicked on {name}"));
        assert_eq!(
            class_of(&in_memory),
            class_of(&streamed),
            "{name}: decode and read_from disagree: {in_memory:?} vs {streamed:?}"
        );
        if let Some(class) = expected_class(&name) {
            assert_eq!(class_of(&in_memory), class, "{name}: {in_memory:?}");
        }
        if let Ok(state) = in_memory {
            let again = encode(&state).unwrap();
            assert_eq!(decode::<SampleState>(&again).unwrap(), state, "{name}");
            // Seeds are written by `encode`; fuzzer finds may hold overlong
            // varints, which postcard accepts, so only seeds are byte-exact.
            if name.starts_with("ok__") {
                assert_eq!(again, bytes, "{name} does not re-encode to itself");
            }
        }
    }
}
