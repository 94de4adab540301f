//! `template.json`: the human-readable description of a template, written
//! last so that its presence means every other file is complete.

use std::fs::Metadata;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use vmfork_machine::boot::e820::ram_ranges;
use vmfork_machine::boot::layout::CMDLINE_MAX_SIZE;
pub use vmfork_machine::boot::loader::KernelInfo;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::machine::{MAX_MEM_SIZE, MAX_VCPUS, MIN_MEM_SIZE};

use crate::files::open_template_file;
use crate::rootfs::is_sha256_hex;
pub use crate::rootfs::RootfsInfo;

pub const MANIFEST_FILE: &str = "template.json";
pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
/// A manifest is a few hundred bytes; refuse to parse anything huge.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// The template format: the manifest's fields and the files beside it.
/// Version 5 holds state format 4 (the PCI host bridge's latch); version
/// 4 added `rootfs` (and holds state format 3, which saves the rootfs
/// window); version 3 added `base_sha256`; versions 1 and 2 were the state file's
/// (`vmfork_snapshot::FORMAT_VERSION`), whose number the manifest carried
/// until then. Bump this with any change to the manifest's fields or
/// their meaning, and with every bump of the state format.
pub const FORMAT_VERSION: u32 = 5;
// The state format this template format holds; a state format bump must
// bump FORMAT_VERSION too, and then update this line.
const _: () = assert!(vmfork_snapshot::FORMAT_VERSION == 4);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateKind {
    Full,
    Diff,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostInfo {
    pub cpu_vendor: String,
    pub cpu_model: String,
    pub virt: String,
    pub kernel_release: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryRegionInfo {
    pub guest_addr: u64,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub kind: TemplateKind,
    /// For a diff template: the template whose memory it patches, by its
    /// absolute path...
    pub base: Option<PathBuf>,
    /// ...and that template's identity when the diff was made (the hex
    /// SHA-256 of its `template.json`): a diff is refused against any
    /// other build of its base.
    #[serde(default)]
    pub base_sha256: Option<String>,
    pub vcpus: u32,
    pub mem_size: u64,
    pub memory_regions: Vec<MemoryRegionInfo>,
    pub kernel: KernelInfo,
    pub host: HostInfo,
    pub created_unix_ms: u64,
    pub state_bytes: u64,
    pub memory_bytes: u64,
    pub dirty_pages: Option<u64>,
    /// The rootfs image of a VM booted with `--rootfs`, mapped read-only
    /// into every VM restored from the template.
    #[serde(default)]
    pub rootfs: Option<RootfsInfo>,
    /// For a function template that runs a program per request (CGI
    /// conventions, docs/serve.md): the program. None for the embedded
    /// guest's built-in functions.
    #[serde(default)]
    pub exec: Option<vmfork_machine::exec::ExecEntry>,
}

impl Manifest {
    /// Reads and checks `dir/template.json`. Whatever the file holds (or
    /// whatever it is: a symlink, a FIFO, a device, a directory), the
    /// answer is a manifest vmfork could have written, or a one-line error.
    pub fn read(dir: &Path) -> Result<Manifest> {
        Self::read_identified(dir).map(|(manifest, ..)| manifest)
    }

    /// [`Manifest::read`], with the template's identity: the hex SHA-256
    /// of the manifest's bytes (which record its creation time, kernel,
    /// sizes and, for a diff, its own base's identity, so every build
    /// differs), and the manifest file's metadata.
    pub fn read_identified(dir: &Path) -> Result<(Manifest, String, Metadata)> {
        let bad = |reason: String| Error::Template {
            path: dir.to_path_buf(),
            reason,
        };
        let (file, meta) = open_template_file(dir, MANIFEST_FILE, None)?;
        if meta.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{MANIFEST_FILE} is {} bytes, too large",
                meta.len()
            )));
        }
        // Bounded again while reading: the file may grow after the check.
        let mut text = Vec::with_capacity(meta.len() as usize);
        file.take(MAX_MANIFEST_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(|e| bad(format!("reading {MANIFEST_FILE}: {e}")))?;
        if text.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{MANIFEST_FILE} grew past {MAX_MANIFEST_BYTES} bytes"
            )));
        }
        let manifest = Self::parse(dir, &text)?;
        Ok((manifest, sha256_hex(&text), meta))
    }

    /// Parses and checks the text of a manifest; `dir` only names the
    /// template in errors.
    pub fn parse(dir: &Path, text: &[u8]) -> Result<Manifest> {
        let bad = |reason: String| Error::Template {
            path: dir.to_path_buf(),
            reason,
        };
        let manifest: Manifest = serde_json::from_slice(text).map_err(|e| {
            // serde quotes field and variant names from the file: keep the
            // error one short line whatever they contain.
            bad(format!(
                "{MANIFEST_FILE} is malformed: {}",
                one_line(&e.to_string(), 200)
            ))
        })?;
        manifest.validate().map_err(bad)?;
        Ok(manifest)
    }

    /// Every field must be one vmfork could have written: what `snapshot`
    /// records of a machine that cold boot accepted.
    fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "template format version {}, this vmfork reads version {FORMAT_VERSION} (rebuild the template with this vmfork)",
                self.format_version
            ));
        }
        match (&self.kind, &self.base, &self.base_sha256, self.dirty_pages) {
            (TemplateKind::Full, None, None, None) => {}
            (TemplateKind::Diff, Some(base), Some(base_sha256), Some(pages)) => {
                if base.as_os_str().is_empty() {
                    return Err("a diff template's base is an empty path".into());
                }
                if !base.is_absolute() {
                    return Err("a diff template's base is not an absolute path".into());
                }
                if !is_sha256_hex(base_sha256) {
                    return Err("the base's digest is not 64 lowercase hex digits".into());
                }
                if pages > self.mem_size / PAGE {
                    return Err(format!(
                        "{pages} dirty pages in {} bytes of memory",
                        self.mem_size
                    ));
                }
            }
            _ => {
                return Err(
                    "a diff template needs a base, its digest and a dirty page count, and only a diff has them"
                        .into(),
                )
            }
        }
        if self.vcpus == 0 || self.vcpus > u32::from(MAX_VCPUS) {
            return Err(format!("{} vCPUs (allowed 1..={MAX_VCPUS})", self.vcpus));
        }
        if !(MIN_MEM_SIZE..=MAX_MEM_SIZE).contains(&self.mem_size)
            || !self.mem_size.is_multiple_of(PAGE)
        {
            return Err(format!(
                "memory size {} is not a multiple of 4 KiB in {MIN_MEM_SIZE}..={MAX_MEM_SIZE}",
                self.mem_size
            ));
        }
        // Cold boot lays RAM out from the size alone (below the MMIO gap,
        // then above 4 GiB), so the regions follow from mem_size.
        let expected: Vec<(u64, u64)> = ram_ranges(self.mem_size);
        let recorded: Vec<(u64, u64)> = self
            .memory_regions
            .iter()
            .map(|r| (r.guest_addr, r.size))
            .collect();
        if recorded != expected {
            // The count, not the list: a file can hold thousands.
            return Err(format!(
                "{} memory regions, not the layout of {} bytes of RAM {expected:x?}",
                recorded.len(),
                self.mem_size
            ));
        }
        // The memory file holds every region back to back.
        if self.memory_bytes != self.mem_size {
            return Err(format!(
                "memory file of {} bytes for {} bytes of RAM",
                self.memory_bytes, self.mem_size
            ));
        }
        let frame = (vmfork_snapshot::HEADER_LEN + vmfork_snapshot::CHECKSUM_LEN) as u64;
        if self.state_bytes <= frame || self.state_bytes > vmfork_snapshot::MAX_STATE_LEN + frame {
            return Err(format!("state file of {} bytes", self.state_bytes));
        }
        let k = &self.kernel;
        if k.source.is_empty() {
            return Err("no kernel source".into());
        }
        if !is_sha256_hex(&k.sha256) {
            return Err("the kernel digest is not 64 lowercase hex digits".into());
        }
        if let Some(rootfs) = &self.rootfs {
            rootfs.validate()?;
        }
        if k.cmdline.len() >= CMDLINE_MAX_SIZE || k.cmdline.contains('\0') {
            return Err(format!(
                "a kernel command line of {} bytes or with NUL, which cold boot refuses",
                k.cmdline.len()
            ));
        }
        Ok(())
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `text` on one line (control characters escaped) and at most `max`
/// bytes of output plus a `...` when cut, for error messages that quote a
/// file. The bound is on what is written: an escaped control character
/// takes up to ten bytes and a character up to four, so counting the
/// input's characters let a message grow several times past it.
fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        let before = out.len();
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        if out.len() > max {
            out.truncate(before);
            out.push_str("...");
            break;
        }
    }
    out
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
        virt: vmfork_machine::kvm_host::HostVirt::detect()
            .name()
            .to_string(),
        kernel_release: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_bounds_what_it_writes_not_what_it_reads() {
        for text in [
            "\u{7f}".repeat(300),
            "\u{1f600}".repeat(300),
            "x".repeat(300),
        ] {
            let line = one_line(&text, 200);
            assert!(line.len() <= 203, "{} bytes", line.len());
            assert!(line.ends_with("..."));
            assert!(!line.contains('\n'));
        }
        assert_eq!(one_line("a\nb", 200), "a\\nb");
    }

    fn sample(mem_size: u64) -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            kind: TemplateKind::Full,
            base: None,
            base_sha256: None,
            vcpus: 2,
            mem_size,
            memory_regions: ram_ranges(mem_size)
                .into_iter()
                .map(|(guest_addr, size)| MemoryRegionInfo { guest_addr, size })
                .collect(),
            kernel: KernelInfo {
                source: "embedded".into(),
                sha256: "0123456789abcdef".repeat(4),
                cmdline: "quiet=1".into(),
            },
            host: host_info(),
            created_unix_ms: 1,
            state_bytes: 12_000,
            memory_bytes: mem_size,
            dirty_pages: None,
            rootfs: None,
            exec: None,
        }
    }

    fn parse(m: &Manifest) -> Result<Manifest> {
        Manifest::parse(Path::new("t"), &serde_json::to_vec(m).expect("encodes"))
    }

    fn rejects(m: Manifest, needle: &str) {
        match parse(&m) {
            Err(Error::Template { reason, .. }) => {
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
            }
            other => panic!("{m:?} gave {other:?}, expected an error about {needle:?}"),
        }
    }

    #[test]
    fn what_vmfork_writes_reads_back() {
        for mem in [32 << 20, 4 << 30] {
            let m = sample(mem);
            assert_eq!(parse(&m).expect("valid"), m);
        }
        let mut diff = sample(32 << 20);
        diff.kind = TemplateKind::Diff;
        diff.base = Some("/srv/base".into());
        diff.base_sha256 = Some("cd".repeat(32));
        diff.dirty_pages = Some(10);
        assert_eq!(parse(&diff).expect("valid diff"), diff);
        let mut with_rootfs = sample(32 << 20);
        with_rootfs.rootfs = Some(RootfsInfo {
            path: "/srv/rootfs.img".into(),
            size: 64 << 20,
            dev: 2049,
            ino: 1234,
            mtime_ns: 1_700_000_000_123_456_789,
            sha256: "ef".repeat(32),
        });
        assert_eq!(parse(&with_rootfs).expect("valid rootfs"), with_rootfs);
        let json = serde_json::to_value(&with_rootfs).expect("json");
        assert_eq!(json["rootfs"]["mtime_ns"], 1_700_000_000_123_456_789i64);
        let mut relative = with_rootfs;
        if let Some(r) = relative.rootfs.as_mut() {
            r.path = "rootfs.img".into();
        }
        rejects(relative, "absolute");
    }

    #[test]
    fn inconsistent_fields_are_refused() {
        let m = || sample(32 << 20);
        rejects(
            Manifest {
                format_version: 2,
                ..m()
            },
            "format version",
        );
        rejects(
            Manifest {
                base: Some("/b".into()),
                ..m()
            },
            "diff template",
        );
        rejects(
            Manifest {
                dirty_pages: Some(1),
                ..m()
            },
            "diff template",
        );
        rejects(
            Manifest {
                base_sha256: Some("cd".repeat(32)),
                ..m()
            },
            "diff template",
        );
        rejects(
            Manifest {
                kind: TemplateKind::Diff,
                ..m()
            },
            "diff template",
        );
        let diff = |base: &str, pages| Manifest {
            kind: TemplateKind::Diff,
            base: Some(base.into()),
            base_sha256: Some("cd".repeat(32)),
            dirty_pages: Some(pages),
            ..m()
        };
        rejects(diff("", 1), "empty path");
        rejects(diff("b", 1), "absolute");
        rejects(diff("/b", (32 << 20) / PAGE + 1), "dirty pages");
        rejects(
            Manifest {
                base_sha256: None,
                ..diff("/b", 1)
            },
            "diff template",
        );
        rejects(
            Manifest {
                base_sha256: Some("CD".repeat(32)),
                ..diff("/b", 1)
            },
            "base's digest",
        );
        rejects(Manifest { vcpus: 0, ..m() }, "vCPUs");
        rejects(Manifest { vcpus: 255, ..m() }, "vCPUs");
        rejects(
            Manifest {
                mem_size: 0,
                memory_bytes: 0,
                memory_regions: vec![],
                ..m()
            },
            "memory size",
        );
        rejects(
            Manifest {
                mem_size: (32 << 20) + 1,
                ..m()
            },
            "memory size",
        );
        rejects(
            Manifest {
                mem_size: 64 << 20,
                ..m()
            },
            "memory regions",
        );
        rejects(
            Manifest {
                memory_regions: vec![],
                ..m()
            },
            "memory regions",
        );
        let split = vec![
            MemoryRegionInfo {
                guest_addr: 0,
                size: 16 << 20,
            },
            MemoryRegionInfo {
                guest_addr: 16 << 20,
                size: 16 << 20,
            },
        ];
        rejects(
            Manifest {
                memory_regions: split,
                ..m()
            },
            "memory regions",
        );
        rejects(
            Manifest {
                memory_bytes: 1,
                ..m()
            },
            "memory file",
        );
        rejects(
            Manifest {
                state_bytes: 0,
                ..m()
            },
            "state file",
        );
        rejects(
            Manifest {
                state_bytes: u64::MAX,
                ..m()
            },
            "state file",
        );
        let kernel = |source: &str, sha256: &str, cmdline: &str| Manifest {
            kernel: KernelInfo {
                source: source.into(),
                sha256: sha256.into(),
                cmdline: cmdline.into(),
            },
            ..m()
        };
        let digest = "ab".repeat(32);
        rejects(kernel("", &digest, ""), "kernel source");
        rejects(kernel("embedded", &"AB".repeat(32), ""), "digest");
        rejects(kernel("embedded", "ab", ""), "digest");
        rejects(kernel("embedded", &digest, "a\0b"), "command line");
        rejects(
            kernel("embedded", &digest, &"x".repeat(4096)),
            "command line",
        );
    }

    #[test]
    fn malformed_text_gives_one_short_line() {
        let mut json = serde_json::to_value(sample(32 << 20)).expect("value");
        json["kind"] = serde_json::Value::String(format!("a\nb{}", "c".repeat(10_000)));
        let text = serde_json::to_vec(&json).expect("text");
        let e = Manifest::parse(Path::new("t"), &text).expect_err("unknown kind");
        let message = e.to_string();
        assert!(
            message.contains("malformed") && !message.contains('\n'),
            "{message:?}"
        );
        assert!(message.len() < 400, "{} bytes", message.len());
        json["kind"] = "full".into();
        json["kernel"]["extra"] = 1.into();
        let text = serde_json::to_vec(&json).expect("text");
        assert!(
            Manifest::parse(Path::new("t"), &text).is_err(),
            "unknown nested field"
        );
    }

    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("vmfork-manifest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(MANIFEST_FILE);
        let reason = |dir: &Path| match Manifest::read(dir) {
            Err(Error::Template { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        std::os::unix::fs::symlink("/dev/zero", &path).expect("symlink");
        assert!(reason(&dir).contains("symbolic link"));
        std::fs::remove_file(&path).expect("rm");
        let fifo = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(reason(&dir).contains("not a regular file"));
        std::fs::remove_file(&path).expect("rm");
        std::fs::create_dir(&path).expect("mkdir");
        assert!(reason(&dir).contains("not a regular file"));
        std::fs::remove_dir(&path).expect("rmdir");
        let big = std::fs::File::create(&path).expect("create");
        big.set_len(MAX_MANIFEST_BYTES + 1).expect("grow");
        assert!(reason(&dir).contains("too large"));
        std::fs::remove_file(&path).expect("rm");
        assert!(reason(&dir).contains("no readable"));
        let text = serde_json::to_vec(&sample(32 << 20)).expect("json");
        std::fs::write(&path, &text).expect("write");
        let (manifest, id, _) = Manifest::read_identified(&dir).expect("valid");
        assert_eq!(manifest, sample(32 << 20));
        assert_eq!(id, sha256_hex(&text));
        assert!(is_sha256_hex(&id));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
