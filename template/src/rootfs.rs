//! The rootfs image a template was built with: what its manifest records
//! of it (path, size, identity, digest), the cheap identity check every
//! load makes, and the digest check `--verify` asks for.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use vmfork_machine::error::{Error, Result};
use vmfork_machine::memory::{ImageIdentity, PmemImage, PMEM_SIZE_ALIGN};

/// The image as the template saw it when it was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootfsInfo {
    /// Canonical and absolute, so a load opens it without following a
    /// symlink.
    pub path: PathBuf,
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Hex SHA-256 of the contents, computed once when the template was
    /// built and checked again only with `--verify`.
    pub sha256: String,
}

impl RootfsInfo {
    /// What a template built from a machine with `image` records: its
    /// identity when it was opened, and its digest (hashed now unless it
    /// is already known, as it is for a VM restored from a template).
    pub fn of(image: &PmemImage) -> Result<RootfsInfo> {
        let id = image.identity;
        Ok(RootfsInfo {
            path: image.path.clone(),
            size: id.size,
            dev: id.dev,
            ino: id.ino,
            mtime_ns: id.mtime_ns,
            sha256: image.sha256()?.to_string(),
        })
    }

    pub fn identity(&self) -> ImageIdentity {
        ImageIdentity {
            size: self.size,
            dev: self.dev,
            ino: self.ino,
            mtime_ns: self.mtime_ns,
        }
    }

    /// The fields must be ones vmfork could have written.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !self.path.is_absolute() {
            return Err("the rootfs image path is not absolute".into());
        }
        if self.size == 0 || !self.size.is_multiple_of(PMEM_SIZE_ALIGN) {
            return Err(format!(
                "a rootfs image of {} bytes, not a non-zero multiple of 2 MiB",
                self.size
            ));
        }
        if !is_sha256_hex(&self.sha256) {
            return Err("the rootfs digest is not 64 lowercase hex digits".into());
        }
        Ok(())
    }

    /// Opens and maps the recorded image, refused unless its size and
    /// identity are still the recorded ones (one open and one fstat). With
    /// `verify`, its contents are hashed again and must give the recorded
    /// digest; otherwise the recorded digest is taken on trust.
    pub fn open(&self, verify: bool) -> Result<Arc<PmemImage>> {
        let image = PmemImage::open_recorded(&self.path, &self.identity())?;
        if verify {
            let now = image.compute_sha256()?;
            if now != self.sha256 {
                return Err(Error::RootfsChanged {
                    path: self.path.clone(),
                    what: format!(
                        "its contents changed (SHA-256 {}.., recorded {}..)",
                        &now[..12],
                        &self.sha256[..12]
                    ),
                });
            }
        }
        image.vouch_sha256(self.sha256.clone());
        Ok(Arc::new(image))
    }
}

pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::path::Path;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmfork-rootfs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir.canonicalize().expect("canonical")
    }

    fn image(dir: &Path) -> PathBuf {
        let path = dir.join("rootfs.img");
        let mut bytes: Vec<u8> = (0..PMEM_SIZE_ALIGN).map(|i| (i % 251) as u8).collect();
        vmfork_machine::boot::rootfs_check::stamp_superblock(&mut bytes);
        std::fs::write(&path, bytes).expect("write image");
        path
    }

    fn recorded(path: &Path) -> RootfsInfo {
        RootfsInfo::of(&PmemImage::open(path).expect("open")).expect("record")
    }

    fn changed(info: &RootfsInfo, verify: bool) -> String {
        match info.open(verify) {
            Err(e @ Error::RootfsChanged { .. }) => {
                assert_eq!(e.exit_code(), 21);
                let line = e.to_string();
                assert!(!line.contains('\n') && line.contains(&*info.path.to_string_lossy()));
                line
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("a changed image was accepted"),
        }
    }

    #[test]
    fn a_record_holds_the_files_identity_and_digest() {
        let dir = scratch("record");
        let path = image(&dir);
        let info = recorded(&path);
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(info.path, path);
        assert_eq!(info.identity(), ImageIdentity::of(&meta));
        assert_eq!(info.size, PMEM_SIZE_ALIGN);
        let bytes = std::fs::read(&path).expect("read");
        let digest: String = {
            use sha2::{Digest, Sha256};
            Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        assert_eq!(info.sha256, digest);
        assert!(info.validate().is_ok());
        let json = serde_json::to_string(&info).expect("json");
        assert_eq!(
            serde_json::from_str::<RootfsInfo>(&json).expect("back"),
            info
        );
        let opened = info.open(true).expect("unchanged image");
        assert_eq!(opened.sha256().expect("digest"), info.sha256);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn invalid_records_are_refused() {
        let good = RootfsInfo {
            path: "/img".into(),
            size: PMEM_SIZE_ALIGN,
            dev: 1,
            ino: 2,
            mtime_ns: 3,
            sha256: "ab".repeat(32),
        };
        assert!(good.validate().is_ok());
        for (bad, needle) in [
            (
                RootfsInfo {
                    path: "img".into(),
                    ..good.clone()
                },
                "absolute",
            ),
            (
                RootfsInfo {
                    size: 0,
                    ..good.clone()
                },
                "2 MiB",
            ),
            (
                RootfsInfo {
                    size: PMEM_SIZE_ALIGN + 4096,
                    ..good.clone()
                },
                "2 MiB",
            ),
            (
                RootfsInfo {
                    sha256: "AB".repeat(32),
                    ..good.clone()
                },
                "digest",
            ),
        ] {
            let why = bad.validate().expect_err("invalid");
            assert!(why.contains(needle), "{why}");
        }
    }

    #[test]
    fn changes_are_named_and_same_mtime_rewrites_need_verify() {
        let dir = scratch("changes");
        let path = image(&dir);
        let info = recorded(&path);
        // Rewritten in place with the same size and mtime: the identity
        // check cannot tell, the digest can.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open rw");
        file.write_all_at(b"changed", 4096).expect("rewrite");
        let mtime = std::fs::metadata(&path)
            .expect("meta")
            .modified()
            .expect("mtime");
        file.set_modified(
            std::time::UNIX_EPOCH + std::time::Duration::from_nanos(info.mtime_ns as u64),
        )
        .expect("reset mtime");
        assert!(info.open(false).is_ok(), "identity alone misses it");
        assert!(changed(&info, true).contains("contents changed"));
        file.set_modified(mtime).expect("touch");
        assert!(changed(&info, false).contains("modified"));
        file.set_len(2 * PMEM_SIZE_ALIGN).expect("extend");
        assert!(changed(&info, false).contains("size changed"));
        drop(file);
        std::fs::remove_file(&path).expect("rm");
        assert!(changed(&info, false).contains("missing"));
        image(&dir);
        let line = changed(&info, false);
        assert!(
            line.contains("replaced") || line.contains("modified"),
            "{line}"
        );
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink(dir.join("elsewhere"), &path).expect("symlink");
        assert!(changed(&info, false).contains("symbolic link"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
