//! The default guest's pure function code (guest/app/sha256.rs, json.rs),
//! compiled for the host and checked against references; the end-to-end
//! path through a real clone is tests/serve.rs.

#[path = "../guest/app/json.rs"]
mod json;
#[path = "../guest/app/sha256.rs"]
mod sha256;

use std::io::Write;
use std::process::{Command, Stdio};

fn hex_digest(data: &[u8]) -> String {
    let mut hex = [0u8; 64];
    sha256::hex(&sha256::digest(data), &mut hex);
    String::from_utf8(hex.to_vec()).expect("hex is ASCII")
}

fn coreutils_sha256(data: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(data)
        .expect("write");
    let out = child.wait_with_output().expect("wait");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn sha256_matches_fips_vectors() {
    assert_eq!(
        hex_digest(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(
        hex_digest(b"abc"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        hex_digest(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
    );
}

#[test]
fn sha256_matches_coreutils_around_every_padding_boundary() {
    // Lengths around one and two blocks, where the length field moves
    // into a second padding block, plus a multi-block body.
    for len in (0..=130).chain([4096, 100_003]) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        assert_eq!(hex_digest(&data), coreutils_sha256(&data), "length {len}");
    }
}

fn upper(input: &str) -> Result<String, &'static str> {
    let mut out = vec![0u8; input.len()];
    let len = json::upper(input.as_bytes(), &mut out)?;
    Ok(String::from_utf8(out[..len].to_vec()).expect("ASCII in, ASCII out"))
}

#[test]
fn json_upper_uppercases_strings_only() {
    assert_eq!(
        upper(r#"{"name": "vm\"fork", "n": [1, "two"], "t": true}"#),
        Ok(r#"{"NAME": "VM\"FORK", "N": [1, "TWO"], "T": true}"#.to_string())
    );
    // Escapes stay as they are: \n is not \N, \u00e9 keeps its hex.
    assert_eq!(
        upper(r#"["a\nb", "\u00e9x", "c\\d"]"#),
        Ok(r#"["A\nB", "\u00e9X", "C\\D"]"#.to_string())
    );
    assert_eq!(upper(" 42 "), Ok(" 42 ".to_string()));
}

#[test]
fn json_upper_rejects_broken_structure() {
    for (input, why) in [
        ("", "empty document"),
        ("  \n", "empty document"),
        (r#"{"unterminated"#, "unterminated string"),
        ("{not json", "unclosed bracket"),
        ("[1, 2}", "mismatched brackets"),
        ("]", "unbalanced closing bracket"),
        (r#"["\q"]"#, "invalid escape in a string"),
        (r#"["\u12g4"]"#, "invalid \\u escape in a string"),
        ("[\"a\tb\"]", "control character in a string"),
    ] {
        assert_eq!(upper(input), Err(why), "{input:?}");
    }
    let deep = "[".repeat(129) + &"]".repeat(129);
    assert_eq!(upper(&deep), Err("nesting deeper than 128"));
    let ok = "[".repeat(128) + &"]".repeat(128);
    assert_eq!(upper(&ok), Ok(ok.clone()));
}

#[test]
fn json_upper_never_writes_past_a_short_buffer() {
    let mut out = [0u8; 2];
    assert_eq!(
        json::upper(b"[1, 2]", &mut out),
        Err("response buffer too small")
    );
}
