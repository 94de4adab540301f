//! The node's template cache: one template per distinct Wasm module,
//! found again by the module's SHA-256, and one per distinct Linux root
//! filesystem, found again by the tree's (crate::linux).
//!
//! `STATE/templates/<sha256>` (a module's) or `STATE/templates/linux-<sha256>`
//! (a tree's) is a finished template; it only ever appears
//! by `rename(2)` of a template built in a directory of its own under
//! `STATE/tmp/`, so a reader never sees half a template and two shims
//! building the same module at once both succeed (the loser of the rename
//! drops its copy). Every build appends one line to `STATE/builds.log`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use crate::error::{io, Result};
use crate::linux;
use crate::spec::Kind;
use crate::vmfork;

/// Where the cache lives unless `VMFORK_SHIM_STATE_DIR` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vmfork";

pub fn state_dir() -> PathBuf {
    std::env::var_os("VMFORK_SHIM_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// The hex SHA-256 of the module's bytes.
pub fn digest(module: &Path) -> Result<String> {
    let bytes = std::fs::read(module).map_err(io("reading the module", module))?;
    let hash = Sha256::digest(&bytes);
    Ok(hash.iter().map(|b| format!("{b:02x}")).collect())
}

/// The template of a container's program, built now if the cache does
/// not have it.
pub fn template_for(state: &Path, kind: &Kind) -> Result<PathBuf> {
    let (sha, source) = match kind {
        Kind::Wasm { module } => (digest(module)?, module),
        Kind::Linux { root } => (format!("linux-{}", linux::tree_digest(root)?), root),
    };
    let templates = state.join("templates");
    let target = templates.join(&sha);
    if target.is_dir() {
        log::info!("template cache hit: {}", target.display());
        return Ok(target);
    }
    std::fs::create_dir_all(&templates).map_err(io("creating", &templates))?;
    let work = unique_dir(&state.join("tmp"), &sha)?;
    let out = work.join("template");
    let built = match kind {
        Kind::Wasm { module } => build_wasm(module, &out),
        Kind::Linux { root } => linux::build(state, root, &sha, &work, &out),
    };
    let result = built.and_then(|()| publish(&out, &target));
    let _ = std::fs::remove_dir_all(&work);
    let fresh = result?;
    if fresh {
        record_build(state, &sha, source);
    }
    Ok(target)
}

/// A new, empty directory `PARENT/<sha>.<pid>.<n>`.
fn unique_dir(parent: &Path, sha: &str) -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("{sha}.{}.{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io("creating", &dir)(e)),
        }
    }
}

fn build_wasm(module: &Path, out: &Path) -> Result<()> {
    log::info!(
        "building a template of {} in {}",
        module.display(),
        out.display()
    );
    vmfork::build(
        Command::new(vmfork::bin())
            .args(["template", "build", "--quiet", "--wasm"])
            .arg(module)
            .arg("--out")
            .arg(out),
        || format!("vmfork template build --wasm {}", module.display()),
    )
}

/// Renames the built template into place. Ok(false) when another build of
/// the same module got there first (its template is as good as ours).
fn publish(built: &Path, target: &Path) -> Result<bool> {
    match std::fs::rename(built, target) {
        Ok(()) => Ok(true),
        Err(e)
            if target.is_dir()
                && matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) =>
        {
            Ok(false)
        }
        Err(e) => Err(io("moving the template into the cache at", target)(e)),
    }
}

/// One line per build in `STATE/builds.log` (best effort: the template is
/// there whether or not the line is).
fn record_build(state: &Path, sha: &str, module: &Path) {
    let path = state.join("builds.log");
    let line = format!("built {sha} from {}\n", module.display());
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        log::warn!("recording the build in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_publish_of_the_same_template_is_success_and_keeps_the_first() {
        let dir = std::env::temp_dir().join(format!("vmfork-shim-publish-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b, target) = (dir.join("a"), dir.join("b"), dir.join("t"));
        for (d, mark) in [(&a, "first"), (&b, "second")] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::write(d.join("mark"), mark).expect("write");
        }
        assert!(publish(&a, &target).expect("first"));
        assert!(!publish(&b, &target).expect("second"));
        assert_eq!(
            std::fs::read_to_string(target.join("mark")).expect("read"),
            "first"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
