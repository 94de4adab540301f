//! Shared by the corpus regression test (tests/fuzz_corpus.rs) and the
//! mutation fuzzer (examples/fuzz_state.rs): a state type shaped like
//! vmfork's (nested Vecs, Options, enums, fixed arrays, strings), the seed
//! corpus, and the error classes that corpus file names are prefixed with.
//!
//! The framing here is written from docs/snapshot-format.md, not from the
//! crate's code, so the seeds also pin the documented byte layout.
#![allow(dead_code)] // each includer uses a different part

use serde::{Deserialize, Serialize};
use vmfork_snapshot::{Error, ARCH_TAG, FORMAT_VERSION, MAGIC, MAX_STATE_LEN};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleState {
    pub name: String,
    pub flags: u64,
    pub vcpus: Vec<SampleVcpu>,
    pub devices: Vec<SampleDevice>,
    pub memory: Option<SampleMemory>,
    pub paused: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleVcpu {
    pub index: u8,
    pub regs: [u64; 18],
    pub msrs: Vec<(u32, u64)>,
    pub xsave: Option<Vec<u8>>,
    pub tsc_khz: Option<u32>,
    pub lapic: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SampleDevice {
    Serial { fifo: Vec<u8>, lsr: u8, ier: u8 },
    ReadyPort { armed: bool, value: Option<u32> },
    Pit(Vec<(u16, i64)>),
    Detached,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleMemory {
    pub regions: Vec<(u64, u64)>,
    pub dirty: Option<Vec<Vec<u64>>>,
    pub diff: bool,
    pub label: Option<String>,
}

/// Header size, offsets and trailer size from docs/snapshot-format.md.
pub const HEADER: usize = 28;
pub const VERSION_AT: usize = 8;
pub const ARCH_AT: usize = 12;
pub const LEN_AT: usize = 20;
pub const CRC: usize = 8;

pub fn crc64(bytes: &[u8]) -> u64 {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(bytes);
    d.sum64()
}

/// A state file with the given header fields and a correct checksum.
pub fn frame(version: u32, arch: [u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&arch);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Makes a mutated file's length field and checksum agree with its size,
/// so mutations inside the payload get past the frame checks and reach the
/// postcard decoder. Files too short for a header are left alone.
pub fn fix_frame(bytes: &mut [u8]) {
    if bytes.len() < HEADER + CRC {
        return;
    }
    let payload = (bytes.len() - HEADER - CRC) as u64;
    bytes[LEN_AT..HEADER].copy_from_slice(&payload.to_le_bytes());
    let end = bytes.len() - CRC;
    let crc = crc64(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
}

fn ours(payload: &[u8]) -> Vec<u8> {
    frame(FORMAT_VERSION, ARCH_TAG, payload)
}

fn payload_of(state: &SampleState) -> Vec<u8> {
    // Encoding a finite in-memory value cannot fail; this runs only in the
    // test and the fuzzer, on values built right here.
    postcard::to_allocvec(state).expect("sample state encodes")
}

pub fn minimal_state() -> SampleState {
    SampleState {
        name: String::new(),
        flags: 0,
        vcpus: vec![],
        devices: vec![],
        memory: None,
        paused: false,
    }
}

pub fn full_state(vcpus: u8, xsave_len: usize) -> SampleState {
    SampleState {
        name: "template-α/äöü".into(),
        flags: u64::MAX - 1,
        vcpus: (0..vcpus)
            .map(|i| SampleVcpu {
                index: i,
                regs: std::array::from_fn(|r| (r as u64 + 1) << (i % 48)),
                msrs: (0..12)
                    .map(|m| (0xc000_0080 + m, m as u64 * 0x1111))
                    .collect(),
                xsave: (i % 2 == 0).then(|| (0..xsave_len).map(|b| b as u8).collect()),
                tsc_khz: (i == 0).then_some(2_995_200),
                lapic: std::array::from_fn(|b| b as u8 ^ i),
            })
            .collect(),
        devices: vec![
            SampleDevice::Serial {
                fifo: b"login: ".to_vec(),
                lsr: 0x60,
                ier: 0x0f,
            },
            SampleDevice::ReadyPort {
                armed: true,
                value: Some(0xdead_beef),
            },
            SampleDevice::Pit(vec![(0xffff, -1), (0x1234, i64::MIN)]),
            SampleDevice::Detached,
        ],
        memory: Some(SampleMemory {
            regions: vec![(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)],
            dirty: Some(vec![vec![], vec![1, 2, 3, u64::MAX]]),
            diff: true,
            label: Some("base".into()),
        }),
        paused: true,
    }
}

/// Every seed of the corpus, by file name. `<class>__<what>.bin`: the class
/// is what decoding it must give ([`class_of`]); fuzzer finds use `any`.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let full = ours(&payload_of(&full_state(2, 64)));
    let minimal_payload = payload_of(&minimal_state());
    let mut seeds: Vec<(&str, Vec<u8>)> = vec![
        ("ok__full", full.clone()),
        ("ok__minimal", ours(&minimal_payload)),
        ("ok__four-vcpus", ours(&payload_of(&full_state(4, 1024)))),
        ("bad-magic__script", b"#!/bin/sh\nexec vmfork\n".to_vec()),
        (
            "bad-magic__elf",
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec(),
        ),
        ("bad-magic__one-bit", flip(&full, 3 * 8 + 1)),
        ("truncated__empty", vec![]),
        ("truncated__magic-prefix", MAGIC[..5].to_vec()),
        ("truncated__header", full[..HEADER - 3].to_vec()),
        ("truncated__payload", full[..full.len() / 2].to_vec()),
        ("truncated__no-checksum", full[..full.len() - CRC].to_vec()),
        (
            "truncated__length-past-end",
            with_len(&full, len_of(&full) + 1000),
        ),
        ("too-large__length-2pow63", with_len(&full, 1 << 63)),
        ("too-large__length-max", with_len(&full, u64::MAX)),
        (
            "too-large__cap-plus-one",
            with_len(&full, MAX_STATE_LEN + 1),
        ),
        ("checksum__payload-bit", flip(&full, (HEADER + 5) * 8)),
        ("checksum__crc-bit", flip(&full, full.len() * 8 - 1)),
        ("checksum__version-bit", flip(&full, VERSION_AT * 8)),
        ("checksum__arch-bit", flip(&full, ARCH_AT * 8 + 2)),
        (
            "checksum__length-shrunk",
            with_len(&full, len_of(&full) - 1),
        ),
        (
            "version__next",
            frame(FORMAT_VERSION + 1, ARCH_TAG, &minimal_payload),
        ),
        ("version__zero", frame(0, ARCH_TAG, &minimal_payload)),
        (
            "arch__other",
            frame(FORMAT_VERSION, other_arch(), &minimal_payload),
        ),
        (
            "arch__garbage-tag",
            frame(FORMAT_VERSION, *b"\xff\x00abc\n\r\t", &minimal_payload),
        ),
        ("trailing__junk", [full.clone(), b"junk".to_vec()].concat()),
        ("trailing__two-files", [full.clone(), full.clone()].concat()),
        ("decode__empty-payload", ours(&[])),
        ("decode__garbage-payload", ours(&[0xa5; 40])),
        (
            "decode__cut-payload",
            ours(&payload_of(&full_state(1, 8))[..50]),
        ),
        // Minimal payload is name "", flags 0, no vcpus, no devices,
        // memory None, paused false: six zero bytes. Break one field each.
        ("decode__bad-utf8", ours(&[2, 0xff, 0xfe, 0, 0, 0, 0, 0])),
        (
            "decode__varint-overflow",
            ours(&[
                0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0,
            ]),
        ),
        (
            "decode__huge-vec-length",
            ours(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0]),
        ),
        ("decode__bad-enum-tag", ours(&[0, 0, 0, 1, 9, 0, 0])),
        ("decode__bad-option-tag", ours(&[0, 0, 0, 0, 2, 0])),
        ("decode__bad-bool", ours(&[0, 0, 0, 0, 0, 2])),
        (
            "unused-payload__extra-byte",
            ours(&[minimal_payload.clone(), vec![0]].concat()),
        ),
    ];
    assert_eq!(minimal_payload, [0; 6], "SampleState layout changed");
    seeds
        .drain(..)
        .map(|(name, bytes)| (format!("{name}.bin"), bytes))
        .collect()
}

fn flip(bytes: &[u8], bit: usize) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[bit / 8] ^= 1 << (bit % 8);
    out
}

fn len_of(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[LEN_AT..HEADER].try_into().expect("8-byte field"))
}

fn with_len(bytes: &[u8], len: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[LEN_AT..HEADER].copy_from_slice(&len.to_le_bytes());
    out
}

fn other_arch() -> [u8; 8] {
    if ARCH_TAG == *b"aarch64\0" {
        *b"x86_64\0\0"
    } else {
        *b"aarch64\0"
    }
}

/// The class a decode result belongs to; corpus names start with it.
pub fn class_of<T>(r: &Result<T, Error>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(Error::BadMagic) => "bad-magic",
        Err(Error::VersionMismatch { .. }) => "version",
        Err(Error::WrongArch { .. }) => "arch",
        Err(Error::TooLarge { .. }) => "too-large",
        Err(Error::Truncated { .. }) => "truncated",
        Err(Error::ChecksumMismatch { .. }) => "checksum",
        Err(Error::TrailingBytes { .. }) => "trailing",
        Err(Error::Decode(_)) => "decode",
        Err(Error::UnusedPayload { .. }) => "unused-payload",
        Err(Error::Encode(_)) => "encode",
        Err(Error::Io(_)) => "io",
    }
}

/// The class a corpus file name promises, `None` for `any` (fuzzer finds,
/// which must only not panic).
pub fn expected_class(file_name: &str) -> Option<&str> {
    let class = file_name.split("__").next().unwrap_or(file_name);
    (class != "any").then_some(class)
}

pub fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}
