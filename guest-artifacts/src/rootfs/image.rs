//! One ext4 image from one directory tree, plus what vmfork's Linux guest
//! needs: the step the cached busybox rootfs and `vmfork rootfs build DIR`
//! share.
//!
//! `mkfs.ext4 -d TREE` copies the tree as it is (the tree is only read),
//! then one `debugfs -w` pass adds the vmfork layer and fixes inodes:
//!
//! - `/.vmfork/bin/busybox` (static) and a symlink per applet beside it,
//!   so `/init` runs the same whatever the tree holds, or lacks;
//! - `/.vmfork/bin/vmfork-agent`, the guest agent;
//! - `/.vmfork/init`, and `/init` pointing at it (the boot command line
//!   says `init=/init`);
//! - the mount points `/dev /proc /sys /tmp /run`, where the tree lacks them.
//!
//! Adding files inside the image rather than to the tree means the tree is
//! never written, never copied, and a `/bin` that is a symlink (usrmerge)
//! is never followed: everything vmfork adds lives in its own directory.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::assets;
use crate::command::{run_captured, run_logged};
use crate::{Error, Result};

/// ext4 block size. DAX needs it to equal the page size (1 KiB blocks
/// give "unsupported blocksize for DAX").
pub const BLOCK_SIZE: u64 = 4096;
/// The VMM maps the image as one read-only slot, so its size must be a
/// multiple of 2 MiB (docs/boot.md).
pub const SIZE_ALIGN: u64 = 2 << 20;
/// The mkfs options every image gets. No journal: the root is mounted
/// read-only, so a journal would only take space.
pub const MKFS_ARGS: &[&str] = &[
    "-q",
    "-F",
    "-b",
    "4096",
    "-O",
    "^has_journal",
    "-m",
    "0",
    "-L",
    "vmfork-root",
];
/// vmfork's own directory in every image.
pub const VMFORK_DIR: &str = "/.vmfork";
/// What `/init` needs to mount on; made when the tree lacks them.
pub const MOUNT_POINTS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    // Mounted over by a tmpfs in /init; sticky like any /tmp.
    ("tmp", 0o1777),
    ("run", 0o755),
];
/// Paths the layer owns: a tree that has one cannot get the layer.
pub const RESERVED: &[&str] = &[".vmfork", "init"];

/// The files of the vmfork layer.
pub struct Layer {
    /// busybox-static's bytes (checked to be a static ELF).
    pub busybox: Vec<u8>,
    /// Its applets, each a symlink beside it in `/.vmfork/bin`.
    pub applets: Vec<String>,
}

impl Layer {
    /// Reads busybox at `path`, checks that it is static and asks it for
    /// its applets.
    pub fn new(busybox: &Path, log: &Path) -> Result<Layer> {
        let bytes = read_busybox(busybox)?;
        let list = run_captured(Command::new(busybox).arg("--list"), "busybox --list", log)?;
        let applets = String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(str::trim)
            .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
            .filter(|a| !a.starts_with('.') && !a.contains('"'))
            .map(str::to_owned)
            .collect();
        Ok(Layer {
            busybox: bytes,
            applets,
        })
    }

    /// Data blocks and inodes the layer adds, for sizing an image.
    pub fn footprint(&self) -> (u64, u64) {
        let blocks = |len: usize| (len as u64).div_ceil(BLOCK_SIZE);
        let files = blocks(self.busybox.len())
            + blocks(assets::AGENT.len())
            + blocks(assets::INIT_SCRIPT.len());
        let bin_dir = blocks(self.applets.len() * 24) + 1;
        let dirs = 2 + MOUNT_POINTS.len() as u64;
        let inodes = self.applets.len() as u64 + 4 + dirs;
        (files + bin_dir + dirs, inodes)
    }
}

/// Everything one image build needs.
pub struct ImageSpec<'a> {
    /// Copied into the image as it is; only read.
    pub tree: &'a Path,
    pub out: &'a Path,
    /// Bytes, a multiple of [`SIZE_ALIGN`].
    pub size: u64,
    /// `-N`: inodes to make (else mkfs's default ratio).
    pub inodes: Option<u64>,
    /// Filesystem UUID and directory hash seed (else random).
    pub uuid: Option<&'a str>,
    /// Pins every timestamp the build sets (superblock, layer inodes).
    pub epoch: Option<u64>,
    pub layer: &'a Layer,
    /// Inode fields to set on tree paths after the copy.
    pub fixes: &'a [InodeFix],
    /// Scratch space for the layer's files and the debugfs script.
    pub work: &'a Path,
    pub log: &'a Path,
}

/// Fields (`sif` names: uid, gid, mtime, mode ...) to set on one path.
pub struct InodeFix {
    /// Absolute in the image, as bytes ("/usr/bin/x").
    pub path: Vec<u8>,
    pub fields: Vec<(&'static str, String)>,
}

impl InodeFix {
    /// Owner root and, with an epoch, every timestamp pinned to it.
    pub fn pinned(path: Vec<u8>, epoch: Option<u64>) -> InodeFix {
        let mut fields = vec![("uid", "0".to_owned()), ("gid", "0".to_owned())];
        if let Some(t) = epoch {
            for f in ["atime", "mtime", "ctime"] {
                fields.push((f, format!("@{t}")));
            }
        }
        InodeFix { path, fields }
    }
}

/// A path debugfs can name in a script: it reads double-quoted words, one
/// command a line, so a path with a quote or a line break cannot be given.
pub fn scriptable(path: &[u8]) -> bool {
    !path.iter().any(|&b| b == b'"' || b == b'\n' || b == b'\r')
}

/// Builds the image: mkfs of the tree, then the layer and the fixes.
pub fn build_image(spec: &ImageSpec) -> Result<()> {
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(MKFS_ARGS);
    match spec.uuid {
        Some(uuid) => mkfs
            .arg("-U")
            .arg(uuid)
            .arg("-E")
            .arg(format!("hash_seed={uuid},root_owner=0:0")),
        None => mkfs.arg("-E").arg("root_owner=0:0"),
    };
    if let Some(n) = spec.inodes {
        mkfs.arg("-N").arg(n.to_string());
    }
    mkfs.arg("-d")
        .arg(spec.tree)
        .arg(spec.out)
        .arg(format!("{}k", spec.size / 1024));
    if let Some(t) = spec.epoch {
        mkfs.env("E2FSPROGS_FAKE_TIME", t.to_string());
    }
    run_logged(&mut mkfs, "mkfs.ext4", spec.log)?;
    let script = layer_script(spec)?;
    run_debugfs(spec, &script)
}

/// The debugfs commands that add the layer and apply the fixes.
fn layer_script(spec: &ImageSpec) -> Result<Vec<u8>> {
    let files = spec.work.join("layer");
    fs::create_dir_all(&files).map_err(Error::io(format!("create {}", files.display())))?;
    let staged = |name: &str, bytes: &[u8]| -> Result<Vec<u8>> {
        let p = files.join(name);
        fs::write(&p, bytes).map_err(Error::io(format!("write {}", p.display())))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .map_err(Error::io(format!("chmod {}", p.display())))?;
        let bytes = p.as_os_str().as_bytes().to_vec();
        if scriptable(&bytes) {
            Ok(bytes)
        } else {
            Err(Error::io(format!("stage {}", p.display()))(
                std::io::Error::other("a quote or line break in the path"),
            ))
        }
    };
    let busybox = staged("busybox", &spec.layer.busybox)?;
    let agent = staged("vmfork-agent", assets::AGENT)?;
    let init = staged("init", assets::INIT_SCRIPT)?;

    let mut s = Script::default();
    let mut added: Vec<Vec<u8>> = vec![b"/init".to_vec()];
    s.cmd(&[b"cd", b"/"]);
    for (name, mode) in MOUNT_POINTS {
        // A symlink counts: mount follows it in the guest.
        if fs::symlink_metadata(spec.tree.join(name)).is_err() {
            s.cmd(&[b"mkdir", name.as_bytes()]);
            s.cmd(&[
                b"sif",
                name.as_bytes(),
                b"mode",
                format!("0{:o}", 0o40000 | mode).as_bytes(),
            ]);
            added.push(format!("/{name}").into_bytes());
        }
    }
    s.cmd(&[b"symlink", b"init", b".vmfork/init"]);
    s.cmd(&[b"mkdir", b".vmfork"]);
    s.cmd(&[b"cd", b".vmfork"]);
    s.cmd(&[b"write", &init, b"init"]);
    s.cmd(&[b"mkdir", b"bin"]);
    s.cmd(&[b"cd", b"bin"]);
    s.cmd(&[b"write", &busybox, b"busybox"]);
    s.cmd(&[b"write", &agent, b"vmfork-agent"]);
    for dir in ["", "/init", "/bin", "/bin/busybox", "/bin/vmfork-agent"] {
        added.push(format!("{VMFORK_DIR}{dir}").into_bytes());
    }
    for applet in &spec.layer.applets {
        s.cmd(&[b"symlink", applet.as_bytes(), b"busybox"]);
        added.push(format!("{VMFORK_DIR}/bin/{applet}").into_bytes());
    }
    for path in added {
        let fix = InodeFix::pinned(path, spec.epoch);
        s.fix(&fix);
    }
    for fix in spec.fixes.iter().filter(|f| scriptable(&f.path)) {
        s.fix(fix);
    }
    Ok(s.0)
}

/// A debugfs command file: one command a line, every word quoted.
#[derive(Default)]
struct Script(Vec<u8>);

impl Script {
    fn cmd(&mut self, words: &[&[u8]]) {
        for (i, w) in words.iter().enumerate() {
            if i > 0 {
                self.0.push(b' ');
            }
            // Quoted: busybox has an applet named "[".
            self.0.push(b'"');
            self.0.extend_from_slice(w);
            self.0.push(b'"');
        }
        self.0.push(b'\n');
    }

    fn fix(&mut self, fix: &InodeFix) {
        for (field, value) in &fix.fields {
            self.cmd(&[b"sif", &fix.path, field.as_bytes(), value.as_bytes()]);
        }
    }
}

/// debugfs exits 0 even when a command fails; its complaints go to
/// stderr, so anything there beyond the version banner is an error.
fn run_debugfs(spec: &ImageSpec, script: &[u8]) -> Result<()> {
    let cmds = spec.work.join("debugfs.cmds");
    fs::write(&cmds, script).map_err(Error::io(format!("write {}", cmds.display())))?;
    let mut debugfs = Command::new("debugfs");
    debugfs.arg("-w").arg("-f").arg(&cmds).arg(spec.out);
    if let Some(t) = spec.epoch {
        debugfs.env("E2FSPROGS_FAKE_TIME", t.to_string());
    }
    let out = run_captured(&mut debugfs, "debugfs (adding the vmfork layer)", spec.log)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaint = stderr
        .lines()
        .find(|l| !l.trim().is_empty() && !l.starts_with("debugfs "));
    match complaint {
        Some(first) => Err(Error::io(format!("debugfs on {}", spec.out.display()))(
            std::io::Error::other(first.to_owned()),
        )),
        None => Ok(()),
    }
}

/// Reads busybox and checks that it is a static ELF.
pub fn read_busybox(path: &Path) -> Result<Vec<u8>> {
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
    fn script_words_are_quoted_and_unscriptable_paths_are_told() {
        let mut s = Script::default();
        s.cmd(&[b"symlink", b"[", b"busybox"]);
        s.fix(&InodeFix::pinned(b"/a b".to_vec(), Some(7)));
        let text = String::from_utf8(s.0).unwrap();
        assert!(
            text.starts_with("\"symlink\" \"[\" \"busybox\"\n"),
            "{text}"
        );
        assert!(
            text.contains("\"sif\" \"/a b\" \"mtime\" \"@7\"\n"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 6);
        assert!(scriptable(b"/usr/bin/x y"));
        assert!(!scriptable(b"/a\"b") && !scriptable(b"/a\nb"));
    }
}
