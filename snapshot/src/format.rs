//! The state file: a fixed header, a postcard payload and a CRC64 trailer.
//! docs/snapshot-format.md is the reference for the byte layout; in short
//! (all integers little-endian):
//!
//! ```text
//!  0  magic            8 bytes  b"VMFORKST"
//!  8  format version   u32      FORMAT_VERSION
//! 12  architecture     8 bytes  e.g. b"x86_64\0\0"
//! 20  payload length   u64      N
//! 28  payload          N bytes  postcard encoding of the state
//! 28+N  checksum       u64      CRC-64/NVME of bytes 0 .. 28+N
//! ```
//!
//! The magic, the length field and the trailing checksum are the frame and
//! stay where they are in every format version; a version bump may change
//! anything else. That is why the checksum is verified before the version:
//! a flipped bit in the version field reports corruption, and a version
//! mismatch is only ever reported for an intact file.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// First 8 bytes of every state file.
pub const MAGIC: [u8; 8] = *b"VMFORKST";
/// Version of everything inside the frame (header fields after the magic,
/// payload encoding, state layout). Bump it whenever a saved state would not
/// decode the same way in the new build.
pub const FORMAT_VERSION: u32 = 4;
/// `std::env::consts::ARCH` NUL-padded (or cut) to 8 bytes: register state
/// from one architecture means nothing on another.
pub const ARCH_TAG: [u8; 8] = arch_tag(std::env::consts::ARCH);
/// Bytes before the payload.
pub const HEADER_LEN: usize = 28;
/// Bytes after the payload.
pub const CHECKSUM_LEN: usize = 8;
/// Default cap on the payload length. A whole-VM state is a few hundred KiB
/// (registers, xsave, irqchip, device state, memory layout); this leaves room
/// for growth while keeping a corrupted or hostile length field from making
/// the reader allocate gigabytes.
pub const MAX_STATE_LEN: u64 = 64 << 20;

const VERSION_AT: usize = 8;
const ARCH_AT: usize = 12;
const LEN_AT: usize = 20;
/// A file with an empty payload; anything shorter is truncated.
const MIN_FILE_LEN: u64 = (HEADER_LEN + CHECKSUM_LEN) as u64;
/// First allocation for the frame in [`read_from`]; it then grows with the
/// data actually read, so a length field that promises more than the stream
/// holds costs no more memory than the stream does.
const INITIAL_READ_CAPACITY: usize = 1 << 20;

const fn arch_tag(name: &str) -> [u8; 8] {
    let bytes = name.as_bytes();
    let mut tag = [0u8; 8];
    let mut i = 0;
    while i < bytes.len() && i < tag.len() {
        tag[i] = bytes[i];
        i += 1;
    }
    tag
}

/// Serializes `value` into a complete state file in memory.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    encode_with_limit(value, MAX_STATE_LEN)
}

/// [`encode`] then write the whole file to `w`.
pub fn write_to<T: Serialize + ?Sized>(w: &mut impl Write, value: &T) -> Result<()> {
    let bytes = encode(value)?;
    w.write_all(&bytes)?;
    Ok(())
}

/// Checks and decodes a complete state file held in memory. The payload is
/// capped at [`MAX_STATE_LEN`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let frame_len = parse_header(&bytes[..bytes.len().min(HEADER_LEN)], MAX_STATE_LEN)?;
    let present = bytes.len() as u64;
    if present < frame_len {
        return Err(Error::Truncated {
            expected: frame_len,
            found: present,
        });
    }
    // frame_len <= present, so it fits in usize.
    let (frame, rest) = bytes.split_at(frame_len as usize);
    decode_frame(frame, rest.len() as u64)
}

/// Reads one state file from `r` to its end, allocating at most the frame
/// size implied by a payload of `max_len` bytes, and decodes it. The stream
/// must end with the file: trailing bytes are an error.
pub fn read_from<T: DeserializeOwned>(r: &mut impl Read, max_len: u64) -> Result<T> {
    let mut header = [0u8; HEADER_LEN];
    let got = read_up_to(r, &mut header)?;
    let frame_len = parse_header(&header[..got], max_len)?;
    let frame_len = usize::try_from(frame_len).map_err(|_| Error::TooLarge {
        len: frame_len,
        max: max_len,
    })?;
    let mut frame = Vec::with_capacity(frame_len.min(INITIAL_READ_CAPACITY));
    frame.extend_from_slice(&header);
    read_until_len(r, &mut frame, frame_len)?;
    if frame.len() < frame_len {
        return Err(Error::Truncated {
            expected: frame_len as u64,
            found: frame.len() as u64,
        });
    }
    // Count what follows, without keeping it, up to the cap: enough to say
    // how much junk there is without reading an endless stream forever.
    let trailing = io::copy(&mut r.take(max_len.max(1)), &mut io::sink())?;
    decode_frame(&frame, trailing)
}

fn encode_with_limit<T: Serialize + ?Sized>(value: &T, max_len: u64) -> Result<Vec<u8>> {
    let payload = postcard::to_allocvec(value).map_err(Error::Encode)?;
    let len = payload.len() as u64;
    // Refuse at save time what the reader would refuse at restore time.
    if len > max_len {
        return Err(Error::TooLarge { len, max: max_len });
    }
    Ok(frame_payload(&payload))
}

fn frame_payload(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + CHECKSUM_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&ARCH_TAG);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn crc64(bytes: &[u8]) -> u64 {
    let mut digest = crc64fast_nvme::Digest::new();
    digest.write(bytes);
    digest.sum64()
}

/// Checks what the first bytes of a file can tell before anything else is
/// read or allocated, and returns the length of the whole frame.
/// `prefix` is the first `HEADER_LEN` bytes, or all of a shorter file.
fn parse_header(prefix: &[u8], max_len: u64) -> Result<u64> {
    let found = prefix.len() as u64;
    if prefix.len() < MAGIC.len() {
        // A cut-off copy of one of ours is truncated; anything else is not ours.
        return Err(if MAGIC.starts_with(prefix) {
            Error::Truncated {
                expected: MIN_FILE_LEN,
                found,
            }
        } else {
            Error::BadMagic
        });
    }
    if prefix[..MAGIC.len()] != MAGIC {
        return Err(Error::BadMagic);
    }
    let Some(len_bytes) = prefix.get(LEN_AT..HEADER_LEN) else {
        return Err(Error::Truncated {
            expected: MIN_FILE_LEN,
            found,
        });
    };
    let len = u64::from_le_bytes(le_array(len_bytes));
    if len > max_len {
        return Err(Error::TooLarge { len, max: max_len });
    }
    // Only overflows when the caller's cap is within 36 bytes of u64::MAX.
    MIN_FILE_LEN.checked_add(len).ok_or(Error::TooLarge {
        len,
        max: u64::MAX - MIN_FILE_LEN,
    })
}

/// Checks a complete frame (exactly header + payload + checksum, as sized by
/// its length field) and decodes its payload. `trailing` is how many bytes
/// followed the frame in the file.
fn decode_frame<T: DeserializeOwned>(frame: &[u8], trailing: u64) -> Result<T> {
    let (body, stored) = frame.split_at(frame.len() - CHECKSUM_LEN);
    let stored = u64::from_le_bytes(le_array(stored));
    let computed = crc64(body);
    if stored != computed {
        return Err(Error::ChecksumMismatch { stored, computed });
    }
    if trailing > 0 {
        return Err(Error::TrailingBytes { count: trailing });
    }
    let version = u32::from_le_bytes(le_array(&body[VERSION_AT..ARCH_AT]));
    if version != FORMAT_VERSION {
        return Err(Error::VersionMismatch {
            found: version,
            expected: FORMAT_VERSION,
        });
    }
    let arch = &body[ARCH_AT..LEN_AT];
    if arch != ARCH_TAG {
        return Err(Error::WrongArch {
            found: arch_name(arch),
            expected: arch_name(&ARCH_TAG),
        });
    }
    let (value, unused) =
        postcard::take_from_bytes::<T>(&body[HEADER_LEN..]).map_err(Error::Decode)?;
    if !unused.is_empty() {
        return Err(Error::UnusedPayload {
            unused: unused.len() as u64,
        });
    }
    Ok(value)
}

/// The tag up to its first NUL, printable whatever bytes it holds.
fn arch_name(tag: &[u8]) -> String {
    let end = tag.iter().position(|&b| b == 0).unwrap_or(tag.len());
    String::from_utf8_lossy(&tag[..end])
        .escape_debug()
        .to_string()
}

/// Copies a slice of a fixed header field into an array. Callers slice
/// constant ranges, so a length mismatch is a bug here; it yields zeros
/// (and so a checksum or version error) rather than a panic.
fn le_array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    <[u8; N]>::try_from(bytes).unwrap_or([0; N])
}

/// Fills `buf` from `r` until it is full or the stream ends; returns how
/// many bytes were read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Appends from `r` until `buf` holds `len` bytes or the stream ends. The
/// buffer grows by doubling, clamped to `len`, so it never holds more
/// capacity than the frame needs nor much more than the data read.
fn read_until_len(r: &mut impl Read, buf: &mut Vec<u8>, len: usize) -> io::Result<()> {
    let mut chunk = vec![0u8; 64 << 10];
    while buf.len() < len {
        let want = (len - buf.len()).min(chunk.len());
        match r.read(&mut chunk[..want]) {
            Ok(0) => break,
            Ok(n) => {
                if buf.capacity() - buf.len() < n {
                    let grow = buf.capacity().max(n).min(len - buf.len());
                    buf.reserve_exact(grow);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        name: String,
        regs: Vec<u64>,
        devices: Vec<Option<Vec<u8>>>,
        clock: Option<(u64, i32)>,
    }

    fn sample() -> Sample {
        Sample {
            name: "vcpu0".into(),
            regs: (0..40).map(|i| i * 0x0101_0101).collect(),
            devices: vec![None, Some(vec![1, 2, 3]), Some(vec![])],
            clock: Some((123_456_789, -7)),
        }
    }

    /// A file with arbitrary header fields and a valid checksum, as a
    /// different build of vmfork could write it.
    fn reframe(version: u32, arch: [u8; 8], payload: &[u8]) -> Vec<u8> {
        let mut out = frame_payload(payload);
        out[VERSION_AT..ARCH_AT].copy_from_slice(&version.to_le_bytes());
        out[ARCH_AT..LEN_AT].copy_from_slice(&arch);
        let end = out.len() - CHECKSUM_LEN;
        let crc = crc64(&out[..end]);
        out[end..].copy_from_slice(&crc.to_le_bytes());
        out
    }

    fn both(bytes: &[u8]) -> (Result<Sample>, Result<Sample>) {
        (
            decode(bytes),
            read_from(&mut io::Cursor::new(bytes), MAX_STATE_LEN),
        )
    }

    #[test]
    fn round_trip_in_memory_and_through_a_stream() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
        let mut file = Vec::new();
        write_to(&mut file, &sample()).unwrap();
        assert_eq!(file, bytes);
        let back: Sample = read_from(&mut io::Cursor::new(&file), MAX_STATE_LEN).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn layout_matches_the_documented_offsets() {
        let payload = postcard::to_allocvec(&sample()).unwrap();
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"VMFORKST");
        assert_eq!(bytes[8..12], FORMAT_VERSION.to_le_bytes());
        assert_eq!(&bytes[12..20], &ARCH_TAG);
        assert_eq!(bytes[20..28], (payload.len() as u64).to_le_bytes());
        assert_eq!(&bytes[28..28 + payload.len()], &payload[..]);
        let crc = crc64(&bytes[..28 + payload.len()]);
        assert_eq!(bytes[28 + payload.len()..], crc.to_le_bytes());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(&ARCH_TAG, b"x86_64\0\0");
    }

    #[test]
    fn not_ours_is_bad_magic_with_the_documented_message() {
        for junk in [
            &b"#!/bin/sh\necho hi\n"[..],
            b"\x7fELF",
            b"VMFORKSX",
            &[0u8; 64],
        ] {
            let (a, b) = both(junk);
            assert!(matches!(a, Err(Error::BadMagic)), "{junk:?}: {a:?}");
            assert!(matches!(b, Err(Error::BadMagic)), "{junk:?}: {b:?}");
        }
        assert_eq!(Error::BadMagic.to_string(), "not a vmfork state file");
    }

    #[test]
    fn truncation_at_every_offset_is_truncated_not_a_panic() {
        let bytes = encode(&sample()).unwrap();
        for cut in 0..bytes.len() {
            let (a, b) = both(&bytes[..cut]);
            for r in [a, b] {
                match r {
                    Err(Error::Truncated { found, expected }) => {
                        assert_eq!(found, cut as u64);
                        assert!(expected > found);
                    }
                    other => panic!("cut at {cut}: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_bit_flip_is_detected() {
        let bytes = encode(&sample()).unwrap();
        for bit in 0..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let (a, b) = both(&bad);
            for r in [a, b] {
                let ok = match bit / 8 {
                    // Inside the magic the file is no longer recognisably ours.
                    0..8 => matches!(r, Err(Error::BadMagic)),
                    // A length that grew points past the data (or the cap);
                    // one that shrank moves the checksum into the payload.
                    20..28 => matches!(
                        r,
                        Err(Error::Truncated { .. }
                            | Error::TooLarge { .. }
                            | Error::ChecksumMismatch { .. })
                    ),
                    // Version and arch included: corruption is never
                    // reported as a version or architecture mismatch.
                    _ => matches!(r, Err(Error::ChecksumMismatch { .. })),
                };
                assert!(ok, "bit {bit}: {r:?}");
            }
        }
        let e = decode::<Sample>(&[&bytes[..bytes.len() - 1], &[!bytes[bytes.len() - 1]]].concat());
        assert_eq!(
            e.unwrap_err().to_string(),
            "checksum mismatch: state file is corrupted"
        );
    }

    #[test]
    fn version_mismatch_names_both_versions() {
        let payload = postcard::to_allocvec(&sample()).unwrap();
        let newer = reframe(FORMAT_VERSION + 1, ARCH_TAG, &payload);
        let (a, b) = both(&newer);
        for r in [a, b] {
            let e = r.unwrap_err();
            assert!(matches!(e, Error::VersionMismatch { .. }), "{e:?}");
            assert_eq!(
                e.to_string(),
                format!(
                    "state format version {}, this vmfork reads version {}",
                    FORMAT_VERSION + 1,
                    FORMAT_VERSION
                )
            );
        }
    }

    #[test]
    fn wrong_arch_names_both() {
        let payload = postcard::to_allocvec(&sample()).unwrap();
        let other = if ARCH_TAG == *b"aarch64\0" {
            *b"x86_64\0\0"
        } else {
            *b"aarch64\0"
        };
        let e = decode::<Sample>(&reframe(FORMAT_VERSION, other, &payload)).unwrap_err();
        assert!(matches!(e, Error::WrongArch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains(&arch_name(&other)) && msg.contains(std::env::consts::ARCH));
        let e = decode::<Sample>(&reframe(FORMAT_VERSION, *b"\xff\n\0\0\0\0\0\0", &payload));
        assert!(matches!(e, Err(Error::WrongArch { .. })), "{e:?}");
    }

    /// A stream that serves a header then zeros forever, counting bytes.
    struct Endless {
        header: Vec<u8>,
        served: u64,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let at = self.served as usize;
            let n = if at < self.header.len() {
                let n = buf.len().min(self.header.len() - at);
                buf[..n].copy_from_slice(&self.header[at..at + n]);
                n
            } else {
                buf.fill(0);
                buf.len()
            };
            self.served += n as u64;
            Ok(n)
        }
    }

    #[test]
    fn oversized_length_is_refused_fast_without_allocating_it() {
        for len in [1u64 << 63, u64::MAX, MAX_STATE_LEN + 1] {
            let mut bytes = encode(&sample()).unwrap();
            bytes[LEN_AT..HEADER_LEN].copy_from_slice(&len.to_le_bytes());
            let start = Instant::now();
            let e = decode::<Sample>(&bytes).unwrap_err();
            assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
            let mut stream = Endless {
                header: bytes[..HEADER_LEN].to_vec(),
                served: 0,
            };
            let e = read_from::<Sample>(&mut stream, MAX_STATE_LEN).unwrap_err();
            assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
            assert_eq!(stream.served, HEADER_LEN as u64, "read past the header");
            assert!(start.elapsed() < Duration::from_secs(1));
        }
        // A caller's cap is honoured, and so is a cap near u64::MAX.
        let bytes = encode(&sample()).unwrap();
        let e = read_from::<Sample>(&mut io::Cursor::new(&bytes), 10).unwrap_err();
        assert!(matches!(e, Error::TooLarge { max: 10, .. }), "{e:?}");
        let mut huge = bytes.clone();
        huge[LEN_AT..HEADER_LEN].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = read_from::<Sample>(&mut io::Cursor::new(&huge), u64::MAX).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e:?}");
    }

    #[test]
    fn length_beyond_the_data_is_truncated_and_reads_only_what_is_there() {
        let mut bytes = encode(&sample()).unwrap();
        let claimed = 32u64 << 20;
        bytes[LEN_AT..HEADER_LEN].copy_from_slice(&claimed.to_le_bytes());
        let (a, b) = both(&bytes);
        for r in [a, b] {
            match r {
                Err(Error::Truncated { expected, found }) => {
                    assert_eq!(expected, MIN_FILE_LEN + claimed);
                    assert_eq!(found, bytes.len() as u64);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn trailing_bytes_are_counted() {
        let bytes = [encode(&sample()).unwrap(), vec![0xaa; 5]].concat();
        let (a, b) = both(&bytes);
        for r in [a, b] {
            assert!(matches!(r, Err(Error::TrailingBytes { count: 5 })), "{r:?}");
        }
    }

    #[test]
    fn payload_that_does_not_fit_the_type_is_a_decode_error() {
        let garbage = reframe(FORMAT_VERSION, ARCH_TAG, &[0xff; 12]);
        let r = decode::<Sample>(&garbage);
        assert!(matches!(r, Err(Error::Decode(_))), "{r:?}");
        let r = decode::<Sample>(&frame_payload(&[]));
        assert!(matches!(r, Err(Error::Decode(_))), "{r:?}");
        let pair = encode(&(7u8, 9u8)).unwrap();
        let r = decode::<u8>(&pair);
        assert!(
            matches!(r, Err(Error::UnusedPayload { unused: 1 })),
            "{r:?}"
        );
        let r = decode::<Vec<u64>>(&frame_payload(&[0xff, 0xff, 0xff, 0xff, 0x0f]));
        assert!(matches!(r, Err(Error::Decode(_))), "{r:?}");
    }

    #[test]
    fn encoding_over_the_cap_is_refused() {
        let r = encode_with_limit(&vec![0u8; 100], 50);
        assert!(matches!(r, Err(Error::TooLarge { max: 50, .. })), "{r:?}");
        assert!(encode_with_limit(&vec![0u8; 10], 50).is_ok());
    }

    #[test]
    fn io_errors_surface_and_interruptions_are_retried() {
        struct Flaky<'a> {
            data: &'a [u8],
            fail_next: bool,
            fail_with: io::ErrorKind,
        }
        impl Read for Flaky<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let fail = self.fail_next;
                self.fail_next = !fail;
                if fail {
                    return Err(self.fail_with.into());
                }
                // One byte at a time, to exercise every short-read path.
                let n = buf.len().min(self.data.len()).min(1);
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        let bytes = encode(&sample()).unwrap();
        let mut r = Flaky {
            data: &bytes,
            fail_next: false,
            fail_with: io::ErrorKind::Interrupted,
        };
        assert_eq!(
            read_from::<Sample>(&mut r, MAX_STATE_LEN).unwrap(),
            sample()
        );
        let mut r = Flaky {
            data: &bytes,
            fail_next: false,
            fail_with: io::ErrorKind::PermissionDenied,
        };
        let e = read_from::<Sample>(&mut r, MAX_STATE_LEN).unwrap_err();
        assert!(matches!(e, Error::Io(_)), "{e:?}");
    }
}
