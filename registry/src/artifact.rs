//! The artifact's media types, its config blob, and digests.

use serde::{Deserialize, Serialize};

/// The artifact's type, in its OCI manifest's `artifactType`.
pub const ARTIFACT_TYPE: &str = "application/vnd.vmfork.template.v1";
/// The config blob: a small JSON summary ([`ArtifactConfig`]).
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.vmfork.template.config.v1+json";
/// `template.json`, as is: small, and readable in a registry's UI.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.vmfork.template.manifest.v1+json";
/// `state`, zstd-compressed.
pub const STATE_MEDIA_TYPE: &str = "application/vnd.vmfork.template.state.v1+zstd";
/// `memory`, zstd-compressed: mostly zero pages, which zstd shrinks to
/// almost nothing.
pub const MEMORY_MEDIA_TYPE: &str = "application/vnd.vmfork.template.memory.v1+zstd";

/// The artifact's config blob. Pull reads it before any layer so that a
/// template of another format is refused by name, not by a parse error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArtifactConfig {
    pub format_version: u32,
    pub vcpus: u32,
    pub mem_size: u64,
    pub state_bytes: u64,
    pub memory_bytes: u64,
    /// The hex SHA-256 of `template.json`: the template's identity.
    pub template_sha256: String,
}

/// The hex SHA-256 of `bytes`, as `sha256:HEX`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
