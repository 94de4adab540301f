//! The Linux guest's root filesystems: ext4 images with 4 KiB blocks (DAX
//! needs block size == page size), built without root or loop devices by
//! `mkfs.ext4 -d`, each with the vmfork layer (busybox, agent, `/init`:
//! see [`image`]).
//!
//! Two kinds share [`image::build_image`]:
//! - the cached busybox-only rootfs here ([`build`]), cached as
//!   `<cache>/rootfs-<key>/{rootfs.ext4,manifest.txt}` and byte-for-byte
//!   reproducible: UUID and hash seed come from the key, every timestamp
//!   is pinned, every file belongs to root;
//! - an image of a user's own tree ([`tree::build_from_dir`], behind
//!   `vmfork rootfs build DIR --out IMG`).

pub mod image;
pub mod tree;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use vmfork_progress::ProgressMode;

use crate::assets;
use crate::cache::{Cache, KeyHasher};
use crate::command::reset_log;
use crate::progress::BuildProgress;
use crate::{Error, Result, BUILDER_VERSION};
use image::{ImageSpec, InodeFix, Layer, MKFS_ARGS};

pub const KIND: &str = "rootfs";
pub const IMAGE: &str = "rootfs.ext4";
/// Image size. The VMM maps it as one read-only slot, so it must be a
/// multiple of 2 MiB (docs/boot.md); 32 MiB leaves room beside busybox.
pub const SIZE_MIB: u64 = 32;
/// Every timestamp in the image: 2000-01-01 00:00:00 UTC.
const EPOCH: u64 = 946_684_800;

pub struct RootfsOptions {
    pub cache_root: PathBuf,
    /// Must be statically linked: the image has no libc.
    pub busybox: PathBuf,
    /// No progress on stderr (errors still go there).
    pub quiet: bool,
}

impl RootfsOptions {
    pub fn new(cache_root: impl Into<PathBuf>) -> Self {
        RootfsOptions {
            cache_root: cache_root.into(),
            busybox: PathBuf::from(assets::BUSYBOX),
            quiet: false,
        }
    }
}

#[derive(Debug)]
pub struct RootfsArtifacts {
    pub key: String,
    pub image: PathBuf,
    pub from_cache: bool,
}

/// The layout of the tree and the vmfork layer, which the other fields do
/// not show: bump it when `populate` or `image::layer_script` change (not
/// `BUILDER_VERSION`, which would rebuild the kernel too).
const LAYOUT: &str = "vmfork-layer/1";

pub fn cache_key(busybox: &[u8]) -> String {
    let mut h = KeyHasher::new(KIND);
    h.field("layout", LAYOUT.as_bytes())
        .field("busybox", busybox)
        .field("init", assets::INIT_SCRIPT)
        .field("agent", assets::AGENT)
        .field("mkfs", MKFS_ARGS.join(" ").as_bytes())
        .field("size_mib", &SIZE_MIB.to_le_bytes())
        .field("epoch", &EPOCH.to_le_bytes());
    h.finish()
}

/// A stable UUID for the filesystem, derived from the key.
fn fs_uuid(key: &str) -> String {
    let d = Sha256::digest(format!("vmfork rootfs uuid {key}").as_bytes());
    let h: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Returns the cached rootfs image for the current inputs, building it first
/// if needed.
pub fn build(opts: &RootfsOptions) -> Result<RootfsArtifacts> {
    let key = cache_key(&image::read_busybox(&opts.busybox)?);
    let cache = Cache::new(&opts.cache_root);
    if let Some(dir) = cache.lookup(KIND, &key, &[IMAGE]) {
        let image = dir.join(IMAGE);
        return Ok(RootfsArtifacts {
            key,
            image,
            from_cache: true,
        });
    }

    let progress = BuildProgress::start(KIND, ProgressMode::detect(opts.quiet));
    let log = cache.log_path(KIND, &key);
    reset_log(&log)?;
    let staging = cache.staging(KIND, &key)?;
    let work = staging.work_dir();
    let tree = work.join("root");
    progress.step("laying out the root tree");
    let layer = Layer::new(&opts.busybox, &log)?;
    populate(&tree)?;
    // Every path of the tree, and its root, belongs to root and has the
    // pinned times: mkfs copies ctime and owner from the host files.
    let mut fixes = vec![InodeFix::pinned(b"/".to_vec(), Some(EPOCH))];
    tree::walk(&tree, &mut |path, _| {
        fixes.push(InodeFix::pinned(
            path.as_os_str().as_bytes().to_vec(),
            Some(EPOCH),
        ));
    })?;

    let out = staging.out_dir().join(IMAGE);
    let uuid = fs_uuid(&key);
    progress.step(&format!(
        "mkfs.ext4 and debugfs ({SIZE_MIB} MiB, {} applets)",
        layer.applets.len()
    ));
    image::build_image(&ImageSpec {
        tree: &tree,
        out: &out,
        size: SIZE_MIB << 20,
        inodes: None,
        uuid: Some(&uuid),
        epoch: Some(EPOCH),
        layer: &layer,
        fixes: &fixes,
        work: &work,
        log: &log,
    })?;

    let manifest = format!(
        "kind=rootfs\nkey={key}\nbuilder={BUILDER_VERSION}\nbusybox={}\nsize_mib={SIZE_MIB}\n\
         block_size=4096\nuuid={uuid}\napplets={}\n",
        opts.busybox.display(),
        layer.applets.len(),
    );
    let dir = staging.publish(&manifest)?;
    progress.finish(&format!("built {}", dir.display()));
    Ok(RootfsArtifacts {
        key,
        image: dir.join(IMAGE),
        from_cache: false,
    })
}

/// Lays out the busybox-only tree around the vmfork layer, which
/// [`image::build_image`] adds: `/bin` is the layer's busybox directory, so
/// a shell and scripts find every applet at the usual paths.
fn populate(tree: &Path) -> Result<()> {
    let mk = |rel: &str| -> Result<()> {
        let p = tree.join(rel);
        fs::create_dir_all(&p).map_err(Error::io(format!("create {}", p.display())))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .map_err(Error::io(format!("chmod {}", p.display())))
    };
    for dir in ["", "root", "etc", "usr"] {
        mk(dir)?;
    }
    link(".vmfork/bin", &tree.join("bin"))?;
    link("bin", &tree.join("sbin"))?;
    link("../bin", &tree.join("usr/bin"))?;
    link("../bin", &tree.join("usr/sbin"))
}

fn link(target: &str, at: &Path) -> Result<()> {
    symlink(target, at).map_err(Error::io(format!("symlink {}", at.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_follows_busybox_bytes() {
        assert_eq!(cache_key(b"busybox 1"), cache_key(b"busybox 1"));
        assert_ne!(cache_key(b"busybox 1"), cache_key(b"busybox 2"));
    }

    #[test]
    fn uuid_is_stable_and_well_formed() {
        let u = fs_uuid("0123456789abcdef");
        assert_eq!(u, fs_uuid("0123456789abcdef"));
        assert_ne!(u, fs_uuid("0123456789abcdee"));
        let lens: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12]);
    }

    #[test]
    fn size_suits_the_vmm() {
        assert_eq!((SIZE_MIB << 20) % (2 << 20), 0);
    }
}
