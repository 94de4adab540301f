//! `vmfork template push DIR REF`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::{Reference, RegistryOperation};
use serde::Serialize;
use vmfork_template::files::open_template_file;
use vmfork_template::manifest::{
    Manifest, TemplateKind, FORMAT_VERSION, MANIFEST_FILE, MEMORY_FILE, STATE_FILE,
};
use vmfork_template::{LoadOptions, LoadedTemplate};

use crate::artifact::{
    sha256_digest, ArtifactConfig, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    MEMORY_MEDIA_TYPE, STATE_MEDIA_TYPE,
};
use crate::client::{block_on, client_for, Options};
use crate::error::{Error, Result};

/// zstd's default: the memory of a small guest is mostly zero pages,
/// which any level shrinks to nearly nothing; higher levels cost seconds.
const ZSTD_LEVEL: i32 = 3;
const READ_CHUNK: usize = 1 << 20;
/// oci-client's own chunk size for a chunked upload.
const SEND_CHUNK: usize = 4 << 20;

/// What a push stored.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub reference: String,
    /// The OCI manifest's digest: pull by `REPO@DIGEST` to get exactly
    /// this push back.
    pub digest: String,
    pub layers: usize,
    /// Bytes sent as blobs (config and compressed layers).
    pub bytes: u64,
}

struct Blob {
    media_type: &'static str,
    title: &'static str,
    data: Vec<u8>,
}

impl Blob {
    fn descriptor(&self) -> OciDescriptor {
        descriptor(
            self.media_type,
            self.title,
            sha256_digest(&self.data),
            self.data.len() as u64,
        )
    }
}

fn descriptor(media_type: &str, title: &str, digest: String, size: u64) -> OciDescriptor {
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "org.opencontainers.image.title".to_string(),
        title.to_string(),
    );
    OciDescriptor {
        media_type: media_type.to_string(),
        digest,
        size: size as i64,
        urls: None,
        annotations: Some(annotations),
        ..OciDescriptor::default()
    }
}

/// The memory file, compressed as it is sent: its digest is known only
/// once the last chunk has gone, and it is never held whole in memory.
struct MemorySource {
    file: Arc<File>,
    len: u64,
}

/// The template's files, ready to send.
struct Packed {
    config: Blob,
    manifest_json: Blob,
    state: Blob,
    memory: MemorySource,
}

/// Pushes the template at `dir` as `reference`. The template is loaded
/// with every check a restore makes first: only a template vmfork would
/// restore leaves the machine.
pub fn push(dir: &Path, reference: &Reference, opts: &Options) -> Result<PushReport> {
    let blobs = pack(dir)?;
    block_on(upload(reference, opts, blobs)).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?
}

/// Reads and compresses the template's files into the config blob and
/// the three layers.
fn pack(dir: &Path) -> Result<Packed> {
    let unsupported = |what: String| Error::Unsupported {
        path: dir.to_path_buf(),
        what,
    };
    // Refused before the full load: a diff's load would go looking for its
    // base, and a rootfs template's for its image, and fail about those.
    let manifest = Manifest::read(dir)?;
    if manifest.kind == TemplateKind::Diff {
        return Err(unsupported(
            "is a diff (it names its base template by path); pushing diffs is".into(),
        ));
    }
    if let Some(rootfs) = &manifest.rootfs {
        return Err(unsupported(format!(
            "has a rootfs image ({}, a separate file); pushing rootfs templates is",
            rootfs.path.display()
        )));
    }
    let template = LoadedTemplate::load_with(dir, LoadOptions::default())?;
    let io = |what: &str, e: std::io::Error| Error::Io {
        path: dir.join(what),
        source: e,
    };

    // The bytes pushed must be the ones just checked: the manifest's
    // identity is its hash, and the load kept the memory file open.
    let (mut file, _) = open_template_file(dir, MANIFEST_FILE, None)?;
    let mut manifest_json = Vec::new();
    (&mut file)
        .take(1 << 20)
        .read_to_end(&mut manifest_json)
        .map_err(|e| io(MANIFEST_FILE, e))?;
    if sha256_digest(&manifest_json) != format!("sha256:{}", template.sha256) {
        return Err(Error::Template(vmfork_machine::error::Error::Template {
            path: dir.to_path_buf(),
            reason: format!("{MANIFEST_FILE} changed while it was being pushed"),
        }));
    }
    let manifest = &template.manifest;

    let (mut file, _) = open_template_file(dir, STATE_FILE, Some(manifest.state_bytes))?;
    let mut state = Vec::new();
    (&mut file)
        .take(manifest.state_bytes)
        .read_to_end(&mut state)
        .map_err(|e| io(STATE_FILE, e))?;
    let state = zstd::bulk::compress(&state, ZSTD_LEVEL).map_err(|e| io(STATE_FILE, e))?;

    let memory = match template.memory_layers.as_slice() {
        [layer] => MemorySource {
            file: layer.file.clone(),
            len: manifest.memory_bytes,
        },
        _ => {
            return Err(unsupported(
                "has more than one memory layer; pushing diffs is".into(),
            ))
        }
    };

    let config = ArtifactConfig {
        format_version: FORMAT_VERSION,
        vcpus: manifest.vcpus,
        mem_size: manifest.mem_size,
        state_bytes: manifest.state_bytes,
        memory_bytes: manifest.memory_bytes,
        template_sha256: template.sha256.clone(),
    };
    let config = serde_json::to_vec(&config).map_err(|e| Error::Artifact {
        reference: dir.display().to_string(),
        detail: format!("encoding the config: {e}"),
    })?;
    Ok(Packed {
        config: Blob {
            media_type: CONFIG_MEDIA_TYPE,
            title: "config.json",
            data: config,
        },
        manifest_json: Blob {
            media_type: MANIFEST_MEDIA_TYPE,
            title: MANIFEST_FILE,
            data: manifest_json,
        },
        state: Blob {
            media_type: STATE_MEDIA_TYPE,
            title: STATE_FILE,
            data: state,
        },
        memory,
    })
}

async fn upload(reference: &Reference, opts: &Options, packed: Packed) -> Result<PushReport> {
    let (client, auth) = client_for(reference, opts);
    let client_err = |e| Error::from_client(reference, e);
    client
        .auth(reference, &auth, RegistryOperation::Push)
        .await
        .map_err(client_err)?;
    let Packed {
        config,
        manifest_json,
        state,
        memory,
    } = packed;

    let pushed = client
        .push_blob_stream_chunked(reference, compressed_stream(memory))
        .await
        .map_err(client_err)?;
    let memory = descriptor(
        MEMORY_MEDIA_TYPE,
        MEMORY_FILE,
        pushed.blob_digest,
        pushed.size,
    );
    let mut bytes = pushed.size;
    let mut small = Vec::new();
    for blob in [manifest_json, state, config] {
        let desc = blob.descriptor();
        bytes += blob.data.len() as u64;
        // A blob the repository already holds (the same state pushed under
        // another tag) is not sent again.
        if !client
            .blob_exists(reference, &desc.digest)
            .await
            .map_err(client_err)?
        {
            client
                .push_blob(reference, blob.data, &desc.digest)
                .await
                .map_err(client_err)?;
        }
        small.push(desc);
    }
    let [manifest_json, state, config] =
        <[OciDescriptor; 3]>::try_from(small).map_err(|_| Error::Artifact {
            reference: reference.whole(),
            detail: "three small blobs expected".into(),
        })?;
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config,
        layers: vec![manifest_json, state, memory],
        subject: None,
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        annotations: None,
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| Error::Artifact {
        reference: reference.whole(),
        detail: format!("encoding the manifest: {e}"),
    })?;
    let digest = sha256_digest(&body);
    client
        .push_manifest_raw(
            reference,
            body,
            http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
        )
        .await
        .map_err(client_err)?;
    Ok(PushReport {
        reference: reference.whole(),
        digest,
        layers: manifest.layers.len(),
        bytes,
    })
}

/// Reads `len` bytes of a file from offset 0 without moving a shared
/// file position (the load's descriptor may be used elsewhere).
struct FileReader {
    file: Arc<File>,
    offset: u64,
    len: u64,
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.len - self.offset).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..n], self.offset)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("{MEMORY_FILE} shrank while it was being pushed"),
            ));
        }
        self.offset += n as u64;
        Ok(n)
    }
}

/// The memory file zstd-compressed, in chunks of up to [`SEND_CHUNK`].
/// Compression runs on the runtime's one thread between sends: this
/// command does nothing else meanwhile.
fn compressed_stream(
    memory: MemorySource,
) -> impl futures_util::Stream<Item = oci_client::errors::Result<bytes::Bytes>> + Send + 'static {
    let reader = FileReader {
        file: memory.file,
        offset: 0,
        len: memory.len,
    };
    let encoder =
        zstd::stream::read::Encoder::new(BufReader::with_capacity(READ_CHUNK, reader), ZSTD_LEVEL);
    futures_util::stream::try_unfold(Some(encoder), |encoder| async move {
        let mut encoder = match encoder {
            Some(Ok(encoder)) => encoder,
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(None),
        };
        let mut chunk = vec![0u8; SEND_CHUNK];
        let mut filled = 0;
        while filled < chunk.len() {
            match encoder.read(&mut chunk[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        chunk.truncate(filled);
        Ok(Some((bytes::Bytes::from(chunk), Some(Ok(encoder)))))
    })
}
