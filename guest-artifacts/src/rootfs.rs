//! The Linux guest's root filesystem: busybox-static plus our `/init` in an
//! ext4 image with 4 KiB blocks (DAX needs block size == page size), built
//! without root or loop devices by `mkfs.ext4 -d`. Cached as
//! `<cache>/rootfs-<key>/{rootfs.ext4,manifest.txt}`.
//!
//! The image is byte-for-byte reproducible: UUID and hash seed come from the
//! key, every timestamp is pinned, every file belongs to root.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use vmfork_progress::ProgressMode;

use crate::assets;
use crate::cache::{Cache, KeyHasher};
use crate::command::{reset_log, run_captured, run_logged};
use crate::progress::BuildProgress;
use crate::{Error, Result, BUILDER_VERSION};

pub const KIND: &str = "rootfs";
pub const IMAGE: &str = "rootfs.ext4";
/// Image size. The VMM maps it as one read-only slot, so it must be a
/// multiple of 2 MiB (docs/boot.md); 32 MiB leaves room beside busybox.
pub const SIZE_MIB: u64 = 32;
/// Every timestamp in the image: 2000-01-01 00:00:00 UTC.
const EPOCH: u64 = 946_684_800;
/// The mkfs options the key covers; `-b 4096` is what makes DAX possible
/// (1 KiB blocks give "unsupported blocksize for DAX").
const MKFS_ARGS: &[&str] = &["-q", "-F", "-b", "4096", "-L", "vmfork-root"];

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

/// Reads busybox and checks that it is a static ELF.
fn read_busybox(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingBusybox(path.to_path_buf()),
        _ => Error::io(format!("read {}", path.display()))(e),
    })?;
    if elf_has_interpreter(&bytes) != Some(false) {
        return Err(Error::BusyboxNotStatic(path.to_path_buf()));
    }
    Ok(bytes)
}

/// `Some(true)` if the ELF64 has a PT_INTERP (is dynamically linked),
/// `Some(false)` if not, `None` if it is not a well-formed little-endian ELF64.
fn elf_has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let phoff = usize::try_from(u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?)).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    let mut interp = false;
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let phdr = elf.get(at..at.checked_add(phentsize)?)?;
        let p_type = u32::from_le_bytes(phdr.get(..4)?.try_into().ok()?);
        interp |= p_type == PT_INTERP;
    }
    Some(interp)
}

pub fn cache_key(busybox: &[u8]) -> String {
    let mut h = KeyHasher::new(KIND);
    h.field("busybox", busybox)
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
    let busybox = read_busybox(&opts.busybox)?;
    let key = cache_key(&busybox);
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
    let tree = staging.work_dir().join("root");
    progress.step("laying out the root tree");
    let paths = populate(&tree, &busybox, &log)?;

    let image = staging.out_dir().join(IMAGE);
    let uuid = fs_uuid(&key);
    progress.step(&format!(
        "mkfs.ext4 ({SIZE_MIB} MiB, {} files)",
        paths.len()
    ));
    run_logged(
        Command::new("mkfs.ext4")
            .args(MKFS_ARGS)
            .arg("-U")
            .arg(&uuid)
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0"))
            .arg("-d")
            .arg(&tree)
            .arg(&image)
            .arg(format!("{SIZE_MIB}M"))
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string()),
        "mkfs.ext4",
        &log,
    )?;
    progress.step("pinning timestamps and owners (debugfs)");
    pin_inodes(&image, &paths, staging.work_dir().as_path(), &log)?;

    let manifest = format!(
        "kind=rootfs\nkey={key}\nbuilder={BUILDER_VERSION}\nbusybox={}\nsize_mib={SIZE_MIB}\n\
         block_size=4096\nuuid={uuid}\nfiles={}\n",
        opts.busybox.display(),
        paths.len(),
    );
    let dir = staging.publish(&manifest)?;
    progress.finish(&format!("built {}", dir.display()));
    Ok(RootfsArtifacts {
        key,
        image: dir.join(IMAGE),
        from_cache: false,
    })
}

/// Lays out the root tree and returns every path in it (relative, "/"-led).
fn populate(tree: &Path, busybox: &[u8], log: &Path) -> Result<Vec<String>> {
    let mk = |rel: &str, mode: u32| -> Result<()> {
        let p = tree.join(rel);
        fs::create_dir_all(&p).map_err(Error::io(format!("create {}", p.display())))?;
        chmod(&p, mode)
    };
    mk("", 0o755)?;
    for dir in ["bin", "dev", "proc", "sys", "root", "etc", "usr", "run"] {
        mk(dir, 0o755)?;
    }
    // Mounted over by a tmpfs in /init; sticky like any /tmp.
    mk("tmp", 0o1777)?;

    let bin = tree.join("bin");
    write_file(&bin.join("busybox"), busybox, 0o755)?;
    write_file(&tree.join("init"), assets::INIT_SCRIPT, 0o755)?;
    write_file(&bin.join("vmfork-agent"), assets::AGENT, 0o755)?;
    // Scripts that hard-code /sbin or /usr/bin paths find busybox there too.
    link("bin", &tree.join("sbin"))?;
    link("../bin", &tree.join("usr/bin"))?;
    link("../bin", &tree.join("usr/sbin"))?;

    // One symlink per applet, so /init and a shell can call them by name.
    let list = run_captured(
        Command::new(bin.join("busybox")).arg("--list"),
        "busybox --list",
        log,
    )?;
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        let ok = !applet.is_empty() && applet != "busybox" && !applet.contains('/');
        if ok && !applet.starts_with('.') {
            link("busybox", &bin.join(applet))?;
        }
    }

    let mut paths = Vec::new();
    walk(tree, "", &mut paths)?;
    paths.sort();
    Ok(paths)
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(Error::io(format!("read {}", dir.display())))?;
        let name = format!("{rel}/{}", entry.file_name().to_string_lossy());
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            walk(&entry.path(), &name, out)?;
        }
        out.push(name);
    }
    Ok(())
}

/// mkfs.ext4 copies ctime (which nothing on the host can set), atime and
/// owner from the host files. Rewrite them all with debugfs so the image
/// depends only on the inputs.
fn pin_inodes(image: &Path, paths: &[String], work: &Path, log: &Path) -> Result<()> {
    let mut script = String::new();
    for p in std::iter::once("/").chain(paths.iter().map(String::as_str)) {
        for (field, value) in [
            ("atime", format!("@{EPOCH}")),
            ("mtime", format!("@{EPOCH}")),
            ("ctime", format!("@{EPOCH}")),
            ("uid", "0".to_owned()),
            ("gid", "0".to_owned()),
        ] {
            // Quoted: busybox has an applet named "[".
            script.push_str(&format!("sif \"{p}\" {field} {value}\n"));
        }
    }
    let cmds = work.join("debugfs.cmds");
    fs::write(&cmds, script).map_err(Error::io(format!("write {}", cmds.display())))?;
    // debugfs exits 0 even when a command fails; its complaints go to
    // stderr, so anything there beyond the version banner is an error.
    let out = run_captured(
        Command::new("debugfs")
            .arg("-w")
            .arg("-f")
            .arg(&cmds)
            .arg(image)
            .env("E2FSPROGS_FAKE_TIME", EPOCH.to_string()),
        "debugfs (pinning timestamps)",
        log,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaint = stderr
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("debugfs "));
    if let Some(first) = complaint {
        let what = format!("debugfs on {}", image.display());
        return Err(Error::io(what)(std::io::Error::other(first.to_owned())));
    }
    Ok(())
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    fs::write(path, contents).map_err(Error::io(format!("write {}", path.display())))?;
    chmod(path, mode)
}

fn chmod(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(Error::io(format!("chmod {}", path.display())))
}

fn link(target: &str, at: &Path) -> Result<()> {
    symlink(target, at).map_err(Error::io(format!("symlink {}", at.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TestDir;

    fn elf_with_phdrs(types: &[u32]) -> Vec<u8> {
        let mut elf = vec![0u8; 64 + 56 * types.len()];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&(types.len() as u16).to_le_bytes());
        for (i, t) in types.iter().enumerate() {
            elf[64 + 56 * i..68 + 56 * i].copy_from_slice(&t.to_le_bytes());
        }
        elf
    }

    #[test]
    fn elf_interpreter_detection() {
        assert_eq!(
            elf_has_interpreter(&elf_with_phdrs(&[1, 1, 4])),
            Some(false)
        );
        assert_eq!(elf_has_interpreter(&elf_with_phdrs(&[6, 3, 1])), Some(true));
        assert_eq!(elf_has_interpreter(b"#!/bin/sh\n"), None);
        // Program headers pointing past the end: malformed, not "static".
        let mut truncated = elf_with_phdrs(&[1]);
        truncated.truncate(80);
        assert_eq!(elf_has_interpreter(&truncated), None);
    }

    #[test]
    fn dynamic_or_missing_busybox_is_rejected() {
        let dir = TestDir::new("busybox");
        let dynamic = dir.path().join("busybox-dyn");
        fs::write(&dynamic, elf_with_phdrs(&[6, 3, 1])).unwrap();
        assert!(matches!(
            read_busybox(&dynamic),
            Err(Error::BusyboxNotStatic(_))
        ));
        let script = dir.path().join("busybox-script");
        fs::write(&script, b"#!/bin/sh\n").unwrap();
        assert!(matches!(
            read_busybox(&script),
            Err(Error::BusyboxNotStatic(_))
        ));
        let missing = dir.path().join("nope");
        let err = read_busybox(&missing).unwrap_err();
        assert!(matches!(err, Error::MissingBusybox(_)));
        assert!(err.to_string().contains("busybox-static"));
        let fine = dir.path().join("busybox-static");
        fs::write(&fine, elf_with_phdrs(&[1])).unwrap();
        assert!(read_busybox(&fine).is_ok());
    }

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
