//! `vmfork template pull REF --out DIR`.

use std::path::{Path, PathBuf};

use oci_client::manifest::{OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use oci_client::{Client, Reference, RegistryOperation};
use serde::Serialize;
use vmfork_template::files::TemplateWriter;
use vmfork_template::manifest::{
    Manifest, TemplateKind, FORMAT_VERSION, MANIFEST_FILE, MEMORY_FILE, STATE_FILE,
};
use vmfork_template::{LoadOptions, LoadedTemplate};

use crate::artifact::{
    sha256_digest, ArtifactConfig, ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    MEMORY_MEDIA_TYPE, STATE_MEDIA_TYPE,
};
use crate::blob::{fetch, Capped, SparseFile};
use crate::client::{block_on, client_for, Options};
use crate::error::{Error, Result};

/// An OCI manifest of three layers is about a kilobyte.
const MAX_OCI_MANIFEST: usize = 64 << 10;
const MAX_CONFIG: u64 = 64 << 10;
/// The template crate refuses a larger `template.json` too.
const MAX_TEMPLATE_JSON: u64 = 1 << 20;

/// What a pull wrote.
#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub reference: String,
    pub out: PathBuf,
    /// The OCI manifest's digest.
    pub digest: String,
    /// Blob bytes received.
    pub bytes: u64,
    pub memory_bytes: u64,
}

/// Pulls `reference` into `out`, which must not exist. The files are
/// written into a hidden sibling directory that becomes `out` only after
/// the template loads with every check a restore makes; on any failure
/// it is removed, and `out` never appears.
pub fn pull(reference: &Reference, out: &Path, opts: &Options) -> Result<PullReport> {
    let writer = TemplateWriter::create(out)?;
    let report =
        block_on(download(reference, out, opts, &writer)).map_err(|source| Error::Io {
            path: out.to_path_buf(),
            source,
        })??;
    LoadedTemplate::load_with(&writer.path(""), LoadOptions::default())?;
    writer.commit()?;
    Ok(report)
}

fn artifact(reference: &Reference, detail: impl Into<String>) -> Error {
    Error::Artifact {
        reference: reference.whole(),
        detail: detail.into(),
    }
}

async fn download(
    reference: &Reference,
    out: &Path,
    opts: &Options,
    writer: &TemplateWriter,
) -> Result<PullReport> {
    let (client, auth) = client_for(reference, opts);
    let client_err = |e| Error::from_client(reference, e);
    client
        .auth(reference, &auth, RegistryOperation::Pull)
        .await
        .map_err(client_err)?;
    let (manifest, digest) = oci_manifest(&client, reference, &auth).await?;
    let [json_desc, state_desc, memory_desc] = match manifest.layers.as_slice() {
        [a, b, c] => [a, b, c],
        layers => {
            return Err(artifact(
                reference,
                format!("not a vmfork template: {} layers, expected 3", layers.len()),
            ))
        }
    };
    for (desc, expected) in [
        (&manifest.config, CONFIG_MEDIA_TYPE),
        (json_desc, MANIFEST_MEDIA_TYPE),
        (state_desc, STATE_MEDIA_TYPE),
        (memory_desc, MEMORY_MEDIA_TYPE),
    ] {
        if desc.media_type != expected {
            return Err(artifact(
                reference,
                format!(
                    "not a vmfork template: media type {:?} where {expected} belongs",
                    desc.media_type
                ),
            ));
        }
    }

    let mut config = Vec::new();
    fetch(
        &client,
        reference,
        &manifest.config,
        "config",
        MAX_CONFIG,
        &mut config,
    )
    .await?;
    let config: ArtifactConfig =
        serde_json::from_slice(&config).map_err(|e| artifact(reference, format!("config: {e}")))?;
    if config.format_version != FORMAT_VERSION {
        return Err(artifact(
            reference,
            format!(
                "a template of format {}; this vmfork reads format {FORMAT_VERSION}",
                config.format_version
            ),
        ));
    }

    let mut json = Vec::new();
    fetch(
        &client,
        reference,
        json_desc,
        MANIFEST_FILE,
        MAX_TEMPLATE_JSON,
        &mut json,
    )
    .await?;
    // Every size below comes from here, checked as any template's is
    // before the registry is asked for more.
    let template = Manifest::parse(out, &json)?;
    if template.kind != TemplateKind::Full || template.rootfs.is_some() {
        return Err(artifact(
            reference,
            "a diff or rootfs template, which vmfork does not pull yet",
        ));
    }
    if sha256_digest(&json) != format!("sha256:{}", config.template_sha256) {
        return Err(artifact(
            reference,
            "the config names another template.json than the layer holds",
        ));
    }
    writer.write_file(MANIFEST_FILE, &json)?;

    let mut state = Capped::new(Vec::new(), template.state_bytes);
    {
        let mut decoder = zstd::stream::write::Decoder::new(&mut state)
            .map_err(|e| artifact(reference, format!("{STATE_FILE}: {e}")))?;
        let limit = compressed_limit(template.state_bytes);
        fetch(
            &client,
            reference,
            state_desc,
            STATE_FILE,
            limit,
            &mut decoder,
        )
        .await?;
    }
    exact(reference, STATE_FILE, state.written, template.state_bytes)?;
    writer.write_file(STATE_FILE, &state.inner)?;

    let memory = writer.create_file(MEMORY_FILE)?;
    let io = |e| Error::Io {
        path: out.join(MEMORY_FILE),
        source: e,
    };
    let mut sparse = Capped::new(SparseFile::new(&memory), template.memory_bytes);
    {
        let mut decoder = zstd::stream::write::Decoder::new(&mut sparse)
            .map_err(|e| artifact(reference, format!("{MEMORY_FILE}: {e}")))?;
        let limit = compressed_limit(template.memory_bytes);
        fetch(
            &client,
            reference,
            memory_desc,
            MEMORY_FILE,
            limit,
            &mut decoder,
        )
        .await?;
    }
    exact(
        reference,
        MEMORY_FILE,
        sparse.written,
        template.memory_bytes,
    )?;
    memory.set_len(template.memory_bytes).map_err(io)?;
    memory.sync_all().map_err(io)?;

    let bytes = [&manifest.config, json_desc, state_desc, memory_desc]
        .iter()
        .map(|d| d.size as u64)
        .sum();
    Ok(PullReport {
        reference: reference.whole(),
        out: out.to_path_buf(),
        digest,
        bytes,
        memory_bytes: template.memory_bytes,
    })
}

/// The OCI manifest, bounded, checked against the reference's digest when
/// it names one, and only if it is a vmfork template's.
async fn oci_manifest(
    client: &Client,
    reference: &Reference,
    auth: &oci_client::secrets::RegistryAuth,
) -> Result<(OciImageManifest, String)> {
    let (body, _) = client
        .pull_manifest_raw(reference, auth, &[OCI_IMAGE_MEDIA_TYPE])
        .await
        .map_err(|e| Error::from_client(reference, e))?;
    if body.len() > MAX_OCI_MANIFEST {
        return Err(artifact(
            reference,
            format!("manifest of {} bytes; not a vmfork template", body.len()),
        ));
    }
    let digest = sha256_digest(&body);
    if let Some(expected) = reference.digest() {
        if !expected.eq_ignore_ascii_case(&digest) {
            return Err(Error::Digest {
                reference: reference.whole(),
                what: "manifest",
                expected: expected.to_string(),
                actual: digest,
            });
        }
    }
    let manifest: OciImageManifest = serde_json::from_slice(&body).map_err(|e| {
        artifact(
            reference,
            format!(
                "not a vmfork template (manifest: {})",
                crate::error::one_line(&e.to_string())
            ),
        )
    })?;
    if manifest.artifact_type.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(artifact(
            reference,
            format!(
                "not a vmfork template (artifact type {:?})",
                manifest.artifact_type.as_deref().unwrap_or("none")
            ),
        ));
    }
    Ok((manifest, digest))
}

/// The most a zstd frame of `len` bytes of content can take, plus room
/// for framing: anything larger is not this template's layer.
fn compressed_limit(len: u64) -> u64 {
    let bound =
        usize::try_from(len).map_or(u64::MAX, |l| zstd::zstd_safe::compress_bound(l) as u64);
    bound.saturating_add(4096)
}

fn exact(reference: &Reference, what: &str, got: u64, expected: u64) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(artifact(
            reference,
            format!("{what} decompresses to {got} bytes, the template declares {expected}"),
        ))
    }
}
