//! Templates: a VM saved at its ready point as a directory (`template.json`,
//! `state`, `memory`), and VMs restored from one. docs/snapshot-format.md
//! describes the files; `persist` holds each component's save/restore.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod api;
pub mod build;
pub mod clone_info;
pub mod dirty;
pub mod files;
pub mod manifest;
pub mod owner;
mod restore;
pub mod rootfs;
pub mod trust;

pub use restore::{
    restore, restore_vcpus, LoadOptions, LoadedTemplate, MemoryLayer, RamSource, RestoreOptions,
};

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use files::{write_sparse, TemplateWriter};
use manifest::{host_info, Manifest, MemoryRegionInfo, TemplateKind, MEMORY_FILE, STATE_FILE};
use vmfork_machine::error::{Error, Result};
use vmfork_machine::machine::Machine;

/// What a snapshot wrote, for reports.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    pub dir: PathBuf,
    pub state_bytes: u64,
    /// Apparent size of the memory file.
    pub memory_bytes: u64,
    /// Bytes of memory actually written (the rest are holes).
    pub memory_written: u64,
    pub dirty_pages: Option<u64>,
    /// Time spent reading the dirty set from pagemap (diff snapshots).
    pub dirty_scan_us: Option<u64>,
}

/// Writes a paused machine as a template at `out`. With `diff`, only the
/// pages changed since the machine was restored are written, and the
/// template records its base.
pub fn snapshot(machine: &mut Machine, out: &Path, diff: bool) -> Result<SnapshotReport> {
    let exec = machine.origin().exec.clone();
    snapshot_with(machine, out, diff, exec)
}

/// [`snapshot`] of a function template whose requests run `exec`.
pub fn snapshot_with(
    machine: &mut Machine,
    out: &Path,
    diff: bool,
    exec: Option<vmfork_machine::exec::ExecEntry>,
) -> Result<SnapshotReport> {
    let origin = machine.origin();
    let base = match (diff, &origin.template, &origin.template_sha256) {
        (false, ..) => None,
        (true, Some(base), Some(sha256)) => Some((base.clone(), sha256.clone())),
        (true, ..) => {
            return Err(Error::Snapshot(
                "--diff needs a VM restored from a template (a cold-booted VM has no base)".into(),
            ))
        }
    };
    let mut state = machine.save_state()?;
    let writer = TemplateWriter::create(out)?;
    let memory_file = writer.create_file(MEMORY_FILE)?;
    let io = |e: std::io::Error| Error::Template {
        path: out.to_path_buf(),
        reason: format!("writing {MEMORY_FILE}: {e}"),
    };
    let file_size = state.memory.file_size();
    memory_file.set_len(file_size).map_err(io)?;

    let mut written = 0u64;
    let mut dirty_pages = None;
    let mut dirty_scan = std::time::Duration::ZERO;
    for (region, saved) in machine.memory().iter().zip(&state.memory.regions) {
        let host = machine
            .memory()
            .get_host_address(region.start_addr())
            .map_err(|e| Error::GuestMemory(format!("host address of RAM: {e}")))?;
        // SAFETY: the region is a live mapping of `region.len()` bytes owned
        // by the machine, and every vCPU is paused, so nothing writes it
        // while this slice exists.
        let bytes = unsafe { std::slice::from_raw_parts(host, region.len() as usize) };
        if base.is_some() {
            let scan_start = std::time::Instant::now();
            let ranges = dirty::dirty_ranges(host as u64, region.len())?;
            dirty_scan += scan_start.elapsed();
            for &(start, len) in &ranges {
                let chunk = &bytes[start as usize..(start + len) as usize];
                use std::os::unix::fs::FileExt;
                memory_file
                    .write_all_at(chunk, saved.file_offset + start)
                    .map_err(io)?;
                written += len;
                state
                    .memory
                    .dirty_ranges
                    .push((saved.file_offset + start, len));
            }
            *dirty_pages.get_or_insert(0) += ranges.iter().map(|r| r.1 / 4096).sum::<u64>();
        } else {
            written += write_sparse(&memory_file, saved.file_offset, bytes).map_err(io)?;
        }
    }
    state.memory.diff = base.is_some();
    memory_file.sync_all().map_err(io)?;

    let encoded = vmfork_snapshot::encode(&state)
        .map_err(|e| Error::Snapshot(format!("encoding state: {e}")))?;
    writer.write_file(STATE_FILE, &encoded)?;
    let manifest = Manifest {
        format_version: manifest::FORMAT_VERSION,
        kind: if base.is_some() {
            TemplateKind::Diff
        } else {
            TemplateKind::Full
        },
        base_sha256: base.as_ref().map(|(_, sha256)| sha256.clone()),
        base: base.map(|(dir, _)| dir),
        vcpus: state.vcpus.len() as u32,
        mem_size: state.memory.mem_size,
        memory_regions: state
            .memory
            .regions
            .iter()
            .map(|r| MemoryRegionInfo {
                guest_addr: r.guest_addr,
                size: r.size,
            })
            .collect(),
        kernel: machine.origin().kernel.clone(),
        host: host_info(),
        created_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        state_bytes: encoded.len() as u64,
        memory_bytes: file_size,
        dirty_pages,
        // Hashed here once per image (a restored VM's image already knows
        // its recorded digest), never again unless asked to verify.
        rootfs: machine
            .pmem()
            .map(|p| rootfs::RootfsInfo::of(&p.image))
            .transpose()?,
        exec,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::Snapshot(format!("encoding manifest: {e}")))?;
    writer.write_file(manifest::MANIFEST_FILE, &json)?;
    writer.commit()?;
    Ok(SnapshotReport {
        dir: out.to_path_buf(),
        state_bytes: encoded.len() as u64,
        memory_bytes: file_size,
        memory_written: written,
        dirty_pages,
        dirty_scan_us: dirty_pages.map(|_| dirty_scan.as_micros() as u64),
    })
}
