//! Fetching one blob: bounded by the size the manifest declares (itself
//! checked against a limit derived from the template before anything is
//! fetched), hashed as it arrives, and written through a sink that
//! refuses to grow past what the template says the file holds.

use std::fs::File;
use std::io::{self, Write};

use futures_util::StreamExt;
use oci_client::manifest::OciDescriptor;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};

use crate::artifact::hex;
use crate::error::{one_line, Error, Result};

/// Streams the blob `desc` names into `sink`. Nothing about its size is
/// taken from the registry: `desc.size` must already be within `limit`,
/// and a body that runs past it is cut off.
pub(crate) async fn fetch(
    client: &Client,
    reference: &Reference,
    desc: &OciDescriptor,
    what: &'static str,
    limit: u64,
    sink: &mut dyn Write,
) -> Result<()> {
    let artifact = |detail: String| Error::Artifact {
        reference: reference.whole(),
        detail,
    };
    let size = u64::try_from(desc.size)
        .map_err(|_| artifact(format!("{what}: negative size {}", desc.size)))?;
    if size > limit {
        return Err(artifact(format!(
            "{what}: {size} bytes, more than the {limit} this template can need"
        )));
    }
    let expected = desc.digest.to_ascii_lowercase();
    if expected
        .strip_prefix("sha256:")
        .is_none_or(|h| h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(artifact(format!(
            "{what}: digest {:?} is not a sha256 digest",
            desc.digest
        )));
    }
    let mut stream = client
        .pull_blob_stream(reference, desc)
        .await
        .map_err(|e| Error::from_client(reference, e))?;
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    let mismatch = |hasher: Sha256| {
        let actual = format!("sha256:{}", hex(&hasher.finalize()));
        (actual != expected).then(|| Error::Digest {
            reference: reference.whole(),
            what,
            expected: expected.clone(),
            actual,
        })
    };
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            // oci-client checks the digest too, and reports a mismatch as
            // a stream error after the last chunk: name it as ours does.
            Err(e) => {
                if received == size {
                    if let Some(err) = mismatch(hasher) {
                        return Err(err);
                    }
                }
                return Err(Error::Registry {
                    registry: reference.resolve_registry().to_string(),
                    detail: format!("reading {what}: {}", one_line(&e.to_string())),
                });
            }
        };
        received += chunk.len() as u64;
        if received > size {
            return Err(artifact(format!(
                "{what}: the registry sent more than the {size} bytes the manifest declares"
            )));
        }
        hasher.update(&chunk);
        sink.write_all(&chunk)
            .map_err(|e| sink_error(reference, what, e))?;
    }
    if received != size {
        return Err(artifact(format!(
            "{what}: the registry sent {received} bytes, the manifest declares {size}"
        )));
    }
    if let Some(err) = mismatch(hasher) {
        return Err(err);
    }
    sink.flush().map_err(|e| sink_error(reference, what, e))
}

/// A sink's refusal (too much data, a corrupt zstd frame) is about the
/// artifact; a failed write to the disk is about the output.
fn sink_error(reference: &Reference, what: &'static str, e: io::Error) -> Error {
    Error::Artifact {
        reference: reference.whole(),
        detail: format!("{what}: {}", one_line(&e.to_string())),
    }
}

/// Keeps what is written, up to `cap` bytes; more is an error, so a
/// decompression bomb stops at the size the template declares.
pub(crate) struct Capped<W> {
    pub inner: W,
    pub written: u64,
    pub cap: u64,
}

impl<W: Write> Capped<W> {
    pub fn new(inner: W, cap: u64) -> Self {
        Capped {
            inner,
            written: 0,
            cap,
        }
    }
}

impl<W: Write> Write for Capped<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.cap {
            return Err(io::Error::other(format!(
                "decompresses to more than the {} bytes the template declares",
                self.cap
            )));
        }
        let n = self.inner.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the memory file sparse: zero pages stay holes, as in a template
/// vmfork built itself, so a pulled 128 MiB template of a small guest
/// takes a few MiB of disk.
pub(crate) struct SparseFile<'a> {
    file: &'a File,
    offset: u64,
    buf: Vec<u8>,
}

/// Whole pages at a time, so that the zero test sees page-aligned pages.
const SPARSE_BUF: usize = 1 << 20;

impl<'a> SparseFile<'a> {
    pub fn new(file: &'a File) -> Self {
        SparseFile {
            file,
            offset: 0,
            buf: Vec::with_capacity(SPARSE_BUF),
        }
    }

    fn drain(&mut self) -> io::Result<()> {
        vmfork_template::files::write_sparse(self.file, self.offset, &self.buf)?;
        self.offset += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl Write for SparseFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(SPARSE_BUF - self.buf.len());
        self.buf.extend_from_slice(&buf[..n]);
        if self.buf.len() == SPARSE_BUF {
            self.drain()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.drain()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn capped_refuses_past_its_cap() {
        let mut w = Capped::new(Vec::new(), 10);
        assert!(w.write_all(b"12345").is_ok());
        assert!(w.write_all(b"123456").is_err());
        assert_eq!(w.written, 5);
    }

    #[test]
    fn sparse_file_leaves_zero_pages_as_holes() {
        let dir =
            std::env::temp_dir().join(format!("vmfork-registry-sparse-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("m");
        let file = File::create(&path).expect("file");
        let mut data = vec![0u8; 3 * SPARSE_BUF];
        data[SPARSE_BUF + 4096 * 3 + 7] = 9;
        let mut sink = SparseFile::new(&file);
        // Odd-sized writes, as a decoder makes them.
        for chunk in data.chunks(12_345) {
            sink.write_all(chunk).expect("write");
        }
        sink.flush().expect("flush");
        file.set_len(data.len() as u64).expect("len");
        assert_eq!(std::fs::read(&path).expect("read"), data);
        let blocks = std::fs::metadata(&path).expect("meta").blocks();
        assert!(blocks * 512 <= 64 * 1024, "{blocks} blocks");
        let _ = std::fs::remove_dir_all(dir);
    }
}
