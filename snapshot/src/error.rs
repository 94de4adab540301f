//! The one error type of the snapshot crate. Each way a state file can be
//! unusable is its own variant with a one-line message, so the launcher can
//! print it as is and tests can match on the exact cause.

/// Everything that can go wrong encoding or decoding a state file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The first 8 bytes are not [`crate::MAGIC`].
    #[error("not a vmfork state file")]
    BadMagic,
    /// An intact file written by a different format version.
    #[error("state format version {found}, this vmfork reads version {expected}")]
    VersionMismatch { found: u32, expected: u32 },
    /// An intact file written on a different CPU architecture.
    #[error("state file is for {found}, this vmfork runs on {expected}")]
    WrongArch { found: String, expected: String },
    /// The payload length (from the header, or of a value being encoded) is
    /// above the cap; refused before anything of that size is allocated.
    #[error("state payload of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: u64, max: u64 },
    /// The file ends before the header, payload or checksum does.
    #[error("state file is truncated: {found} of {expected} bytes")]
    Truncated { expected: u64, found: u64 },
    /// The CRC64 stored at the end does not match the bytes before it.
    #[error("checksum mismatch: state file is corrupted")]
    ChecksumMismatch { stored: u64, computed: u64 },
    /// Bytes follow the checksum (a concatenation or a botched copy).
    #[error("{count} unexpected bytes after the end of the state file")]
    TrailingBytes { count: u64 },
    /// The checksummed payload is not a valid encoding of the expected type:
    /// written by a build with a different state layout under the same
    /// format version, which is a bug in vmfork's versioning.
    #[error("state payload does not decode: {0}")]
    Decode(#[source] postcard::Error),
    /// The payload decoded but did not use all its bytes: same cause as
    /// [`Error::Decode`].
    #[error("state payload has {unused} bytes left over after decoding")]
    UnusedPayload { unused: u64 },
    #[error("cannot encode state: {0}")]
    Encode(#[source] postcard::Error),
    #[error("state file I/O: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, Error>;
