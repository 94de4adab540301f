//! `template.json`: the human-readable description of a template, written
//! last so that its presence means every other file is complete.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub const MANIFEST_FILE: &str = "template.json";
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
/// A manifest is a few hundred bytes; refuse to parse anything huge.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    Full,
    Diff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelInfo {
    /// "embedded" or the path it was booted from.
    pub source: String,
    pub sha256: String,
    pub cmdline: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    pub cpu_vendor: String,
    pub cpu_model: String,
    pub virt: String,
    pub kernel_release: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegionInfo {
    pub guest_addr: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub kind: TemplateKind,
    /// For a diff template: the template whose memory it patches.
    pub base: Option<PathBuf>,
    pub vcpus: u32,
    pub mem_size: u64,
    pub memory_regions: Vec<MemoryRegionInfo>,
    pub kernel: KernelInfo,
    pub host: HostInfo,
    pub created_unix_ms: u64,
    pub state_bytes: u64,
    pub memory_bytes: u64,
    pub dirty_pages: Option<u64>,
}

impl Manifest {
    pub fn read(dir: &Path) -> Result<Manifest> {
        let path = dir.join(MANIFEST_FILE);
        let bad = |reason: String| Error::Template {
            path: dir.to_path_buf(),
            reason,
        };
        let meta = std::fs::metadata(&path).map_err(|e| {
            bad(format!(
                "no readable {MANIFEST_FILE} ({e}); not a template, or an incomplete one"
            ))
        })?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{MANIFEST_FILE} is {} bytes, too large",
                meta.len()
            )));
        }
        let text =
            std::fs::read(&path).map_err(|e| bad(format!("reading {MANIFEST_FILE}: {e}")))?;
        let manifest: Manifest = serde_json::from_slice(&text)
            .map_err(|e| bad(format!("{MANIFEST_FILE} is malformed: {e}")))?;
        let ours = vmfork_snapshot::FORMAT_VERSION;
        if manifest.format_version != ours {
            return Err(bad(format!(
                "template format version {}, this vmfork reads version {ours}",
                manifest.format_version
            )));
        }
        if (manifest.kind == TemplateKind::Diff) != manifest.base.is_some() {
            return Err(bad(
                "a diff template needs a base, and only a diff has one".into()
            ));
        }
        Ok(manifest)
    }
}

pub fn host_info() -> HostInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default()
    };
    HostInfo {
        cpu_vendor: field("vendor_id"),
        cpu_model: field("model name"),
        virt: crate::kvm_host::HostVirt::detect().name().to_string(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}
