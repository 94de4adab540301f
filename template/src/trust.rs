//! Whether a template's recorded facts may be believed: who could have
//! written its directory (docs/security.md, "Templates: verified, not
//! trusted"). Its files are checked on the descriptors the load opened
//! ([`crate::files::trusted_owner`]); this module checks the path to them,
//! because a user who can rename any directory above a template can swap
//! the whole folder between two loads.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::files::trusted_owner;

/// The sticky bit: in such a directory only an entry's owner (or the
/// directory's, or root) may rename or remove it, so `/tmp` is safe to
/// pass through when the entry below it is ours.
const S_ISVTX: u32 = 0o1000;

/// Which templates a process believes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum TrustPolicy {
    /// Any template only this user or root could have written: its
    /// directory, every directory above it (world-writable ones only with
    /// the sticky bit) and its files.
    #[default]
    Owner,
    /// Only templates inside these directories, which the operator named
    /// as trusted stores (canonical paths), and written below the store
    /// only by this user or root. Everything else is untrusted however it
    /// is owned.
    Stores(Arc<[PathBuf]>),
}

impl TrustPolicy {
    /// The stores the operator named, canonicalized so a template's
    /// canonical path can be compared with them. A store that does not
    /// exist is an error: a typo must not silently trust nothing.
    pub fn stores(dirs: &[PathBuf]) -> std::io::Result<TrustPolicy> {
        let mut stores = Vec::with_capacity(dirs.len());
        for dir in dirs {
            let canonical = dir.canonicalize().map_err(|e| {
                std::io::Error::new(e.kind(), format!("trusted store {}: {e}", dir.display()))
            })?;
            if !canonical.is_dir() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("trusted store {} is not a directory", dir.display()),
                ));
            }
            stores.push(canonical);
        }
        Ok(TrustPolicy::Stores(stores.into()))
    }

    /// Whether the path to `dir` (canonical) lets only this user or root
    /// replace what is at it.
    pub fn trusts_path(&self, dir: &Path) -> bool {
        match self {
            TrustPolicy::Owner => safe_from(dir, Path::new("/")),
            TrustPolicy::Stores(stores) => stores
                .iter()
                .any(|store| dir.starts_with(store) && safe_from(dir, store)),
        }
    }
}

/// Every directory from `dir` up to and including `top` is owned by this
/// user or root and not writable by others, except that a directory above
/// `dir` may be world- or group-writable if it is sticky (the entry below
/// it is then checked as ours). A directory that cannot be stat'ed is not
/// safe.
fn safe_from(dir: &Path, top: &Path) -> bool {
    let mut at = Some(dir);
    let mut first = true;
    while let Some(path) = at {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return false;
        };
        let sticky_parent = !first && meta.mode() & S_ISVTX != 0;
        if !(trusted_owner(&meta) || sticky_parent && owned_by_us_or_root(&meta)) {
            return false;
        }
        if path == top {
            return true;
        }
        first = false;
        at = path.parent();
    }
    // Walked past the root without meeting `top`: not below it.
    false
}

fn owned_by_us_or_root(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    meta.uid() == me || meta.uid() == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmfork-trust-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch");
        dir.canonicalize().expect("canonical")
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn a_writable_parent_untrusts_what_is_below_it_unless_sticky() {
        let root = scratch("parents");
        let parent = root.join("parent");
        let tpl = parent.join("tpl");
        std::fs::create_dir_all(&tpl).expect("mkdir");
        chmod(&root, 0o755);
        chmod(&parent, 0o755);
        assert!(TrustPolicy::Owner.trusts_path(&tpl), "{}", tpl.display());
        chmod(&parent, 0o777);
        assert!(
            !TrustPolicy::Owner.trusts_path(&tpl),
            "world-writable parent"
        );
        chmod(&parent, 0o1777);
        assert!(
            TrustPolicy::Owner.trusts_path(&tpl),
            "sticky parent, as /tmp"
        );
        // The template directory itself may not lean on the sticky bit.
        chmod(&tpl, 0o1777);
        assert!(
            !TrustPolicy::Owner.trusts_path(&tpl),
            "world-writable template"
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_store_trusts_only_what_is_inside_it() {
        let root = scratch("stores");
        let store = root.join("store");
        let inside = store.join("a/tpl");
        let outside = root.join("elsewhere/tpl");
        std::fs::create_dir_all(&inside).expect("mkdir");
        std::fs::create_dir_all(&outside).expect("mkdir");
        chmod(&root, 0o755);
        let policy = TrustPolicy::stores(std::slice::from_ref(&store)).expect("store");
        assert!(policy.trusts_path(&inside));
        assert!(!policy.trusts_path(&outside));
        // The store's own parents are the operator's choice.
        chmod(&root, 0o777);
        assert!(policy.trusts_path(&inside));
        // Below the store, a directory others can write is not trusted.
        chmod(&store.join("a"), 0o777);
        assert!(!policy.trusts_path(&inside));
        chmod(&root, 0o755);
        std::fs::remove_dir_all(&root).expect("cleanup");
        assert!(TrustPolicy::stores(&[root.join("missing")]).is_err());
    }
}
