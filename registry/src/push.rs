//! `vmfork template push DIR REF`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

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
        let mut annotations = BTreeMap::new();
        annotations.insert(
            "org.opencontainers.image.title".to_string(),
            self.title.to_string(),
        );
        OciDescriptor {
            media_type: self.media_type.to_string(),
            digest: sha256_digest(&self.data),
            size: self.data.len() as i64,
            urls: None,
            annotations: Some(annotations),
            ..OciDescriptor::default()
        }
    }
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
fn pack(dir: &Path) -> Result<(Blob, [Blob; 3])> {
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

    let memory_file = match template.memory_layers.as_slice() {
        [layer] => layer.file.clone(),
        _ => {
            return Err(unsupported(
                "has more than one memory layer; pushing diffs is".into(),
            ))
        }
    };
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
        .map_err(|e| io(MEMORY_FILE, e))?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut offset = 0u64;
    while offset < manifest.memory_bytes {
        let n = (manifest.memory_bytes - offset).min(READ_CHUNK as u64) as usize;
        memory_file
            .read_exact_at(&mut buf[..n], offset)
            .map_err(|e| io(MEMORY_FILE, e))?;
        encoder
            .write_all(&buf[..n])
            .map_err(|e| io(MEMORY_FILE, e))?;
        offset += n as u64;
    }
    let memory = encoder.finish().map_err(|e| io(MEMORY_FILE, e))?;

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
    Ok((
        Blob {
            media_type: CONFIG_MEDIA_TYPE,
            title: "config.json",
            data: config,
        },
        [
            Blob {
                media_type: MANIFEST_MEDIA_TYPE,
                title: MANIFEST_FILE,
                data: manifest_json,
            },
            Blob {
                media_type: STATE_MEDIA_TYPE,
                title: STATE_FILE,
                data: state,
            },
            Blob {
                media_type: MEMORY_MEDIA_TYPE,
                title: MEMORY_FILE,
                data: memory,
            },
        ],
    ))
}

async fn upload(
    reference: &Reference,
    opts: &Options,
    (config, layers): (Blob, [Blob; 3]),
) -> Result<PushReport> {
    let (client, auth) = client_for(reference, opts);
    let client_err = |e| Error::from_client(reference, e);
    client
        .auth(reference, &auth, RegistryOperation::Push)
        .await
        .map_err(client_err)?;
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: config.descriptor(),
        layers: layers.iter().map(Blob::descriptor).collect(),
        subject: None,
        artifact_type: Some(ARTIFACT_TYPE.to_string()),
        annotations: None,
    };
    let mut bytes = 0u64;
    for (blob, desc) in layers
        .into_iter()
        .zip(&manifest.layers)
        .chain(std::iter::once((config, &manifest.config)))
    {
        bytes += blob.data.len() as u64;
        // A blob the repository already holds (the same state or memory
        // pushed under another tag) is not sent again.
        if client
            .blob_exists(reference, &desc.digest)
            .await
            .map_err(client_err)?
        {
            continue;
        }
        client
            .push_blob(reference, blob.data, &desc.digest)
            .await
            .map_err(client_err)?;
    }
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
