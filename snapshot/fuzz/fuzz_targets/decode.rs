//! libFuzzer target: the state decoder on arbitrary bytes. Each input runs
//! twice: as is, and with its frame repaired (length field and CRC made to
//! match), so coverage guidance also reaches the postcard payload decoder
//! instead of stopping at the checksum. The checks are those of
//! examples/fuzz_state.rs: no panic, `decode` and `read_from` agree, and a
//! decoded value survives another round trip.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

#[path = "../sample_state.rs"]
mod sample_state;

use sample_state::{class_of, fix_frame, SampleState};
use vmfork_snapshot::{decode, encode, read_from, MAX_STATE_LEN};

fn check(input: &[u8]) {
    let decoded = decode::<SampleState>(input);
    let streamed = read_from::<SampleState>(&mut Cursor::new(input), MAX_STATE_LEN);
    assert_eq!(class_of(&decoded), class_of(&streamed));
    if let Ok(state) = decoded {
        let again = encode(&state).expect("a decoded state encodes");
        assert_eq!(decode::<SampleState>(&again).ok(), Some(state));
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut repaired = data.to_vec();
    fix_frame(&mut repaired);
    if repaired != data {
        check(&repaired);
    }
});
