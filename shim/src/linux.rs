//! Linux images: containerd has already unpacked the layers into the
//! container's root filesystem (whiteouts and opaque directories applied
//! by its unpacker) and the shim has mounted it, so the tree the shim sees
//! is the image as the container must see it. It becomes an ext4 DAX image
//! (`vmfork rootfs build`) and a Linux template (`vmfork template build
//! --kernel --rootfs`), both cached by the SHA-256 of the tree.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{io, Error, Result};
use crate::vmfork;

/// Guest memory of a Linux template. The container's memory limit is not
/// applied (it would have to be part of the cache key); 256 MiB holds a
/// small distro's userland with room for a program.
const LINUX_MEM: &str = "256M";

/// A cold boot to the agent takes ~5 s with hardware virtualization; the
/// rest is for slow nested hosts.
const BUILD_TIMEOUT: &str = "300";

/// The guest kernel: `$VMFORK_SHIM_KERNEL`, else `STATE/vmlinux`.
pub fn kernel(state: &Path) -> Result<PathBuf> {
    let path = std::env::var_os("VMFORK_SHIM_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| state.join("vmlinux"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::NoKernel(path))
    }
}

/// The hex SHA-256 of the tree under `root`: every entry's path, type,
/// mode, owner and (for files) contents, symlink target or device number,
/// in name order. Contents count, not only sizes and times: two images
/// that differ anywhere never share a template, so one image can never
/// start another's files.
pub fn tree_digest(root: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    hash_dir(root, Path::new(""), &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

fn hash_dir(root: &Path, rel: &Path, hasher: &mut Sha256) -> Result<()> {
    let dir = root.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io("reading the container's rootfs at", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(io("reading the container's rootfs at", &dir))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let rel = rel.join(&name);
        let path = root.join(&rel);
        let meta = std::fs::symlink_metadata(&path).map_err(io("inspecting", &path))?;
        // One record per entry; every variable-length field is preceded
        // by its length, so no two trees hash the same bytes.
        let path_bytes = rel.as_os_str().as_bytes();
        hasher.update((path_bytes.len() as u64).to_le_bytes());
        hasher.update(path_bytes);
        for field in [meta.mode() as u64, meta.uid() as u64, meta.gid() as u64] {
            hasher.update(field.to_le_bytes());
        }
        let kind = meta.file_type();
        if kind.is_dir() {
            hash_dir(root, &rel, hasher)?;
            // Ends the directory's entries.
            hasher.update(u64::MAX.to_le_bytes());
        } else if kind.is_symlink() {
            let target = std::fs::read_link(&path).map_err(io("reading the link", &path))?;
            let target = target.as_os_str().as_bytes();
            hasher.update((target.len() as u64).to_le_bytes());
            hasher.update(target);
        } else if kind.is_file() {
            hasher.update(meta.len().to_le_bytes());
            hash_file(&path, meta.len(), hasher)?;
        } else {
            // Devices, FIFOs, sockets: what mkfs copies is their mode and
            // device number.
            hasher.update(meta.rdev().to_le_bytes());
        }
    }
    Ok(())
}

fn hash_file(path: &Path, len: u64, hasher: &mut Sha256) -> Result<()> {
    let file = std::fs::File::open(path).map_err(io("reading", path))?;
    // Exactly the length recorded above, even if the file grows meanwhile.
    let mut limited = file.take(len);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = limited.read(&mut buf).map_err(io("reading", path))?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the template of the tree under `root`, whose key is `key`, into
/// `out`. The rootfs image is published first, at `STATE/rootfs/KEY.ext4`:
/// a template records its image's path and identity, so the image must be
/// in its final place before the template is built.
pub fn build(state: &Path, root: &Path, key: &str, work: &Path, out: &Path) -> Result<()> {
    let kernel = kernel(state)?;
    let images = state.join("rootfs");
    std::fs::create_dir_all(&images).map_err(io("creating", &images))?;
    let image = images.join(format!("{key}.ext4"));
    if !image.is_file() {
        let built = work.join("rootfs.ext4");
        vmfork::build(
            Command::new(vmfork::bin())
                .args(["rootfs", "build", "--quiet"])
                .arg(root)
                .arg("--out")
                .arg(&built),
            || format!("vmfork rootfs build {}", root.display()),
        )?;
        // A link, not a rename: it never replaces an image a concurrent
        // build of the same tree published first, which a template may
        // already have recorded by identity. Theirs is as good as ours.
        match std::fs::hard_link(&built, &image) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("publishing the rootfs image", &image)(e)),
        }
    }
    vmfork::build(
        Command::new(vmfork::bin())
            .args(["template", "build", "--quiet", "--mem", LINUX_MEM])
            .args(["--timeout", BUILD_TIMEOUT])
            .arg("--kernel")
            .arg(&kernel)
            .arg("--rootfs")
            .arg(&image)
            .arg("--out")
            .arg(out),
        || {
            format!(
                "vmfork template build --kernel {} --rootfs {}",
                kernel.display(),
                image.display()
            )
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vmfork-shim-tree-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).expect("mkdir");
        std::fs::write(dir.join("etc/hostname"), b"a\n").expect("write");
        std::os::unix::fs::symlink("/etc/hostname", dir.join("name")).expect("symlink");
        dir
    }

    #[test]
    fn the_digest_follows_contents_names_links_and_modes() {
        let a = tree("a");
        let b = tree("b");
        let same = tree_digest(&a).expect("digest");
        assert_eq!(same, tree_digest(&b).expect("digest"), "same trees");
        // Same size, different contents.
        std::fs::write(b.join("etc/hostname"), b"b\n").expect("write");
        assert_ne!(same, tree_digest(&b).expect("digest"));
        std::fs::write(b.join("etc/hostname"), b"a\n").expect("write");
        assert_eq!(same, tree_digest(&b).expect("digest"));
        // A link's target.
        std::fs::remove_file(b.join("name")).expect("rm");
        std::os::unix::fs::symlink("/etc/other", b.join("name")).expect("symlink");
        assert_ne!(same, tree_digest(&b).expect("digest"));
        std::fs::remove_file(b.join("name")).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", b.join("name")).expect("symlink");
        // A mode.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            b.join("etc/hostname"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
        assert_ne!(same, tree_digest(&b).expect("digest"));
        std::fs::set_permissions(
            b.join("etc/hostname"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod");
        let restored = tree_digest(&b).expect("digest");
        // A file moved into a directory of the same name is another tree.
        std::fs::rename(b.join("etc/hostname"), b.join("etchostname")).expect("mv");
        assert_ne!(restored, tree_digest(&b).expect("digest"));
        for d in [a, b] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn a_missing_kernel_is_a_clear_error() {
        let state =
            std::env::temp_dir().join(format!("vmfork-shim-nokernel-{}", std::process::id()));
        // (VMFORK_SHIM_KERNEL is not set by the test harness.)
        if std::env::var_os("VMFORK_SHIM_KERNEL").is_none() {
            let e = kernel(&state).expect_err("no kernel");
            assert!(e.to_string().contains("VMFORK_SHIM_KERNEL"), "{e}");
        }
    }
}
