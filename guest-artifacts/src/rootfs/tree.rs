//! An image of a user's own directory tree (`vmfork rootfs build DIR --out
//! IMG`): the tree as it is plus the vmfork layer ([`super::image`]).
//!
//! The tree is only read: mkfs copies it and debugfs adds the layer inside
//! the image. The image is written next to IMG under a temporary name and
//! renamed into place when complete, so IMG is never half-written.
//!
//! Owners: a user who is not root cannot create files owned by root, so a
//! tree unpacked without root (`tar x`, `docker export | tar x`) has every
//! file owned by that user. In the image, files owned by the user who runs
//! the build are given to root (uid and gid separately); other owners are
//! kept. Run as root, nothing changes.

use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use vmfork_progress::ProgressMode;

use super::image::{
    self, ImageSpec, InodeFix, Layer, BLOCK_SIZE, MOUNT_POINTS, RESERVED, SIZE_ALIGN,
};
use crate::command::require_tools;
use crate::progress::BuildProgress;
use crate::{assets, Error, Result};

pub struct TreeOptions {
    pub dir: PathBuf,
    pub out: PathBuf,
    /// Bytes; a multiple of 2 MiB. None: what the tree needs plus headroom.
    pub size: Option<u64>,
    /// Replace OUT if it exists.
    pub force: bool,
    /// Must be statically linked.
    pub busybox: PathBuf,
    pub quiet: bool,
}

impl TreeOptions {
    pub fn new(dir: impl Into<PathBuf>, out: impl Into<PathBuf>) -> Self {
        TreeOptions {
            dir: dir.into(),
            out: out.into(),
            size: None,
            force: false,
            busybox: PathBuf::from(assets::BUSYBOX),
            quiet: false,
        }
    }
}

/// What was built.
#[derive(Debug)]
pub struct TreeImage {
    pub out: PathBuf,
    pub size: u64,
    /// Entries copied from the tree (files, directories, links, ...).
    pub entries: u64,
    /// Paths owned by the user who built it, given to root.
    pub owners_mapped: u64,
}

/// What a tree holds, as mkfs will need it.
#[derive(Debug, Default, PartialEq)]
pub struct Usage {
    pub blocks: u64,
    pub inodes: u64,
    /// Directory entries: 8 bytes + the name, 4-aligned, each.
    pub dirent_bytes: u64,
}

impl Usage {
    /// Blocks and inodes for one entry.
    pub fn add(&mut self, name_len: usize, meta: &Metadata) {
        let blocks = |bytes: u64| bytes.div_ceil(BLOCK_SIZE);
        self.inodes += 1;
        let ft = meta.file_type();
        self.blocks += if ft.is_file() {
            // Plus an extent block per 32 MiB, generously.
            blocks(meta.len()) + meta.len() / (32 << 20)
        } else if ft.is_dir() {
            // A block of its own; its entries are counted in dirent_bytes,
            // so a directory's partly filled last block is this one.
            1
        } else if ft.is_symlink() {
            // Targets under 60 bytes live in the inode.
            u64::from(meta.len() >= 60)
        } else {
            0
        };
        self.dirent_bytes += (8 + name_len as u64).div_ceil(4) * 4;
    }
}

/// The smallest image (bytes, a multiple of 2 MiB) that holds `usage`:
/// data blocks, 256-byte inodes, and about 2% + 1 MiB of ext4 metadata
/// (bitmaps, group descriptors, blocks reserved for growth).
pub fn min_size(usage: &Usage) -> u64 {
    let blocks = usage.blocks + usage.dirent_bytes.div_ceil(BLOCK_SIZE);
    let raw = blocks * BLOCK_SIZE + inode_count(usage) * 256;
    round_up(raw + raw / 50 + (1 << 20), SIZE_ALIGN)
}

/// The default size: the minimum plus an eighth and 4 MiB.
pub fn default_size(usage: &Usage) -> u64 {
    let min = min_size(usage);
    round_up(min + min / 8 + (4 << 20), SIZE_ALIGN)
}

/// Inodes to ask mkfs for: ext4 reserves the first 11, and a little spare.
fn inode_count(usage: &Usage) -> u64 {
    usage.inodes + usage.inodes / 16 + 64
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

/// Calls `each` with every path under `root` ("/"-led, relative to it) and
/// its metadata, without following symlinks.
pub fn walk(root: &Path, each: &mut dyn FnMut(&Path, &Metadata)) -> Result<()> {
    walk_in(root, Path::new("/"), each)
}

fn walk_in(dir: &Path, rel: &Path, each: &mut dyn FnMut(&Path, &Metadata)) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("read {}", dir.display())))?;
        let path = entry.path();
        let meta =
            fs::symlink_metadata(&path).map_err(Error::io(format!("stat {}", path.display())))?;
        let name = rel.join(entry.file_name());
        each(&name, &meta);
        if meta.is_dir() {
            walk_in(&path, &name, each)?;
        }
    }
    Ok(())
}

/// The checks that need no tool: DIR, OUT, and the paths the layer owns.
fn check(opts: &TreeOptions) -> Result<()> {
    let dir = &opts.dir;
    match fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::TreeMissing(dir.clone()))
        }
        Err(e) => return Err(Error::io(format!("stat {}", dir.display()))(e)),
        Ok(m) if !m.is_dir() => return Err(Error::TreeNotDirectory(dir.clone())),
        Ok(_) => {}
    }
    let parent = match opts.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        let why = format!("{} is not a directory", parent.display());
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, why);
        return Err(Error::io(format!("write {}", opts.out.display()))(e));
    }
    if let Ok(m) = fs::symlink_metadata(&opts.out) {
        if m.is_dir() {
            return Err(Error::OutputIsDirectory(opts.out.clone()));
        }
        if !opts.force {
            return Err(Error::OutputExists(opts.out.clone()));
        }
    }
    for name in RESERVED {
        if fs::symlink_metadata(dir.join(name)).is_ok() {
            return Err(Error::TreeConflict {
                path: dir.join(name),
                why: "vmfork puts its init there; rename or remove it".into(),
            });
        }
    }
    for (name, _) in MOUNT_POINTS {
        let Ok(m) = fs::symlink_metadata(dir.join(name)) else {
            continue;
        };
        if !m.is_dir() && !m.file_type().is_symlink() {
            return Err(Error::TreeConflict {
                path: dir.join(name),
                why: "init mounts a filesystem there, so it must be a directory".into(),
            });
        }
    }
    if let Some(size) = opts.size {
        if size == 0 || size % SIZE_ALIGN != 0 {
            return Err(Error::BadImageSize(size));
        }
    }
    Ok(())
}

/// Builds OUT from DIR. Errors are one line; the tree is only read.
pub fn build_from_dir(opts: &TreeOptions) -> Result<TreeImage> {
    check(opts)?;
    // Everything that can be refused is refused before any progress line,
    // so an error stays one line.
    require_tools(&["mkfs.ext4", "debugfs"])?;
    let work = WorkDir::new()?;
    let log = work.0.join("build.log");
    let layer = Layer::new(&opts.busybox, &log)?;

    // SAFETY: geteuid and getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let mut usage = Usage::default();
    let (blocks, inodes) = layer.footprint();
    usage.blocks += blocks;
    usage.inodes += inodes + 1;
    let mut fixes = Vec::new();
    let mut owner_fix = |path: &Path, meta: &Metadata| {
        let mut fields = Vec::new();
        if uid != 0 && meta.uid() == uid {
            fields.push(("uid", "0".to_owned()));
        }
        if uid != 0 && meta.gid() == gid {
            fields.push(("gid", "0".to_owned()));
        }
        let path = path.as_os_str().as_bytes().to_vec();
        if !fields.is_empty() && image::scriptable(&path) {
            fixes.push(InodeFix { path, fields });
        }
    };
    let root_meta =
        fs::metadata(&opts.dir).map_err(Error::io(format!("stat {}", opts.dir.display())))?;
    owner_fix(Path::new("/"), &root_meta);
    let mut entries = 0u64;
    walk(&opts.dir, &mut |path, meta| {
        entries += 1;
        let name_len = path.file_name().map_or(0, |n| n.len());
        usage.add(name_len, meta);
        owner_fix(path, meta);
    })?;

    let needed = min_size(&usage);
    let size = match opts.size {
        Some(size) if size < needed => return Err(Error::ImageTooSmall { size, needed }),
        Some(size) => size,
        None => default_size(&usage),
    };

    let progress = BuildProgress::start("rootfs", ProgressMode::detect(opts.quiet));
    let tmp = temp_beside(&opts.out)?;
    progress.step(&format!(
        "mkfs.ext4 and debugfs ({} MiB, {entries} entries)",
        size >> 20
    ));
    let built = image::build_image(&ImageSpec {
        tree: &opts.dir,
        out: &tmp,
        size,
        inodes: Some(inode_count(&usage)),
        uuid: None,
        epoch: None,
        layer: &layer,
        fixes: &fixes,
        work: &work.0,
        log: &log,
    })
    .and_then(|()| {
        fs::rename(&tmp, &opts.out).map_err(Error::io(format!(
            "rename {} to {}",
            tmp.display(),
            opts.out.display()
        )))
    });
    if let Err(e) = built {
        let _ = fs::remove_file(&tmp);
        return Err(keep_log(e, &opts.out));
    }
    progress.finish(&format!("built {}", opts.out.display()));
    Ok(TreeImage {
        out: opts.out.clone(),
        size,
        entries,
        owners_mapped: fixes.len() as u64,
    })
}

/// A failed tool's log lives in the work directory, which goes away:
/// keep it as `OUT.log` and point the error there.
fn keep_log(e: Error, out: &Path) -> Error {
    let Error::CommandFailed { step, status, log } = e else {
        return e;
    };
    let mut kept = out.as_os_str().to_owned();
    kept.push(".log");
    let kept = PathBuf::from(kept);
    match fs::copy(&log, &kept) {
        Ok(_) => Error::CommandFailed {
            step,
            status,
            log: kept,
        },
        Err(_) => Error::CommandFailed { step, status, log },
    }
}

/// `.NAME.tmp-PID-NANOS` in OUT's directory, so the final rename stays on
/// one filesystem.
fn temp_beside(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::OutputIsDirectory(out.to_path_buf()))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".tmp-{}-{}", std::process::id(), nanos()));
    Ok(out.with_file_name(tmp))
}

fn nanos() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A scratch directory under the system temp directory, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<WorkDir> {
        let dir =
            std::env::temp_dir().join(format!("vmfork-rootfs-{}-{}", std::process::id(), nanos()));
        fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    fn sample_tree(root: &Path) {
        fs::create_dir_all(root.join("etc/conf.d")).unwrap();
        fs::write(root.join("etc/hostname"), b"guest\n").unwrap();
        std::os::unix::fs::symlink("etc/hostname", root.join("name")).unwrap();
    }

    fn listing(root: &Path) -> Vec<(PathBuf, u64, i64)> {
        let mut out = Vec::new();
        walk(root, &mut |p, m| {
            out.push((p.to_path_buf(), m.len(), m.mtime()))
        })
        .unwrap();
        out.sort();
        out
    }

    #[test]
    fn sizes_are_2_mib_multiples_and_grow_with_the_tree() {
        let small = Usage {
            blocks: 10,
            inodes: 10,
            dirent_bytes: 100,
        };
        let big = Usage {
            blocks: 100_000,
            inodes: 5_000,
            dirent_bytes: 100_000,
        };
        for u in [&small, &big] {
            assert_eq!(min_size(u) % SIZE_ALIGN, 0);
            assert_eq!(default_size(u) % SIZE_ALIGN, 0);
            assert!(default_size(u) >= min_size(u) + (4 << 20));
            assert!(min_size(u) >= u.blocks * BLOCK_SIZE + u.inodes * 256);
        }
        assert!(min_size(&big) > min_size(&small));
    }

    #[test]
    fn bad_inputs_are_refused_before_any_work() {
        let dir = TestDir::new("tree-check");
        let tree = dir.path().join("tree");
        sample_tree(&tree);
        let out = dir.path().join("img");
        let opts = |d: &Path, o: &Path| TreeOptions::new(d, o);

        let e = check(&opts(&dir.path().join("nope"), &out)).unwrap_err();
        assert!(matches!(e, Error::TreeMissing(_)), "{e}");
        let e = check(&opts(&tree.join("etc/hostname"), &out)).unwrap_err();
        assert!(matches!(e, Error::TreeNotDirectory(_)), "{e}");

        fs::write(&out, b"x").unwrap();
        let e = check(&opts(&tree, &out)).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        let mut forced = opts(&tree, &out);
        forced.force = true;
        assert!(check(&forced).is_ok());
        let e = check(&opts(&tree, dir.path())).unwrap_err();
        assert!(matches!(e, Error::OutputIsDirectory(_)), "{e}");
        let e = check(&opts(&tree, &dir.path().join("no/such/img"))).unwrap_err();
        assert!(e.to_string().contains("is not a directory"), "{e}");

        let mut odd = opts(&tree, &dir.path().join("img2"));
        odd.size = Some(3 << 20);
        assert!(matches!(check(&odd), Err(Error::BadImageSize(_))));

        fs::write(tree.join("init"), b"#!/bin/sh\n").unwrap();
        let e = check(&opts(&tree, &dir.path().join("img2"))).unwrap_err();
        assert!(e.to_string().contains("init"), "{e}");
        fs::remove_file(tree.join("init")).unwrap();
        fs::write(tree.join("proc"), b"").unwrap();
        let e = check(&opts(&tree, &dir.path().join("img2"))).unwrap_err();
        assert!(e.to_string().contains("must be a directory"), "{e}");
    }

    #[test]
    fn builds_an_image_and_leaves_the_tree_alone() {
        if require_tools(&["mkfs.ext4", "debugfs"]).is_err() || !Path::new(assets::BUSYBOX).exists()
        {
            eprintln!("skipped: needs mkfs.ext4, debugfs and busybox-static");
            return;
        }
        let dir = TestDir::new("tree-build");
        let tree = dir.path().join("tree");
        sample_tree(&tree);
        let before = listing(&tree);
        let out = dir.path().join("root.ext4");
        let mut opts = TreeOptions::new(&tree, &out);
        opts.quiet = true;
        let built = build_from_dir(&opts).unwrap();
        assert_eq!(built.entries, 4);
        assert_eq!(built.size % SIZE_ALIGN, 0);
        assert_eq!(fs::metadata(&out).unwrap().len(), built.size);
        assert_eq!(listing(&tree), before, "the tree was modified");
        // Nothing left beside the image.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        // A size below what the tree needs is refused with the need.
        let mut tight = TreeOptions::new(&tree, dir.path().join("tight.ext4"));
        tight.size = Some(SIZE_ALIGN);
        tight.quiet = true;
        match build_from_dir(&tight) {
            Err(Error::ImageTooSmall { needed, .. }) => assert!(needed > SIZE_ALIGN),
            other => panic!("{other:?}"),
        }
        // The minimum it names is enough.
        let mut exact = TreeOptions::new(&tree, dir.path().join("exact.ext4"));
        let mut usage = Usage::default();
        walk(&tree, &mut |p, m| {
            usage.add(p.file_name().map_or(0, |n| n.len()), m)
        })
        .unwrap();
        let layer = Layer::new(Path::new(assets::BUSYBOX), &dir.path().join("log")).unwrap();
        let (b, i) = layer.footprint();
        usage.blocks += b;
        usage.inodes += i + 1;
        exact.size = Some(min_size(&usage));
        exact.quiet = true;
        build_from_dir(&exact).unwrap();
    }
}
