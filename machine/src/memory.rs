//! Guest RAM and the read-only persistent-memory window for the rootfs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::boot::e820::ram_ranges;
use crate::error::{Error, Result};

/// A VM's guest RAM and what must outlive its mapping. Field order is drop
/// order: the mapping goes first.
pub struct GuestRam {
    pub mem: GuestMemoryMmap,
    pub guard: RamGuard,
}

/// What keeps guest RAM's backing alive beside its mapping.
#[derive(Default)]
pub struct RamGuard {
    /// A VM shell's reserved address range, which the mapping only views.
    pub reserved: Option<ReservedRam>,
    /// A userfaultfd handler serving the mapping's faults (vmfork-clone).
    pub server: Option<MemoryGuard>,
}

/// Anything that has to be dropped after guest memory.
pub type MemoryGuard = Box<dyn std::any::Any + Send + Sync>;

impl GuestRam {
    /// RAM that owns its own mapping and needs nothing else kept alive.
    pub fn owned(mem: GuestMemoryMmap) -> GuestRam {
        GuestRam {
            mem,
            guard: RamGuard::default(),
        }
    }
}

/// Anonymous, private guest RAM. vm-memory's default bitmap type is `()`,
/// so no dirty-page bitmap exists.
///
/// The RAM is advised for transparent huge pages (this host's THP mode is
/// `madvise`, as on many distributions): guest first touches then fault in
/// 2 MiB at a time instead of 4 KiB, which matters on a host where every
/// first-touch fault costs microseconds (see BENCHMARKS.md).
pub fn anonymous_ram(mem_size: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_size)
        .into_iter()
        .map(|(start, size)| (GuestAddress(start), size as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges)
        .map_err(|e| Error::GuestMemory(format!("mapping {} MiB of RAM: {e}", mem_size >> 20)))?;
    for region in mem.iter() {
        // SAFETY: advising a range that is exactly one live mapping owned by
        // `mem`; MADV_HUGEPAGE changes no contents, and failure is harmless.
        unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            );
        }
    }
    Ok(mem)
}

/// Guest RAM as a private, copy-on-write mapping of `file` (a template's
/// memory file or its sealed memfd), region by region per `regions`.
pub fn map_file_private(
    file: &std::sync::Arc<File>,
    regions: &[vmfork_snapshot::state::MemoryRegion],
) -> Result<GuestMemoryMmap> {
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::{FileOffset, GuestRegionMmap};
    let mut mapped = Vec::with_capacity(regions.len());
    for r in regions {
        let mapping = MmapRegionBuilder::<()>::new(r.size as usize)
            .with_file_offset(FileOffset::from_arc(file.clone(), r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| Error::GuestMemory(format!("mapping guest memory: {e}")))?;
        mapped.push(
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr))
                .ok_or_else(|| Error::GuestMemory("memory region overflows".into()))?,
        );
    }
    GuestMemoryMmap::from_regions(mapped)
        .map_err(|e| Error::GuestMemory(format!("guest memory layout: {e}")))
}

/// A rootfs image mapped `PROT_READ`, `MAP_SHARED`: every VM reading the
/// same image shares the host page cache, and no guest can change it (the
/// KVM slot is also read-only, so guest writes exit as MMIO and are refused).
/// A process maps an image once and every VM's slot points at that mapping.
pub struct PmemImage {
    host_addr: *mut libc::c_void,
    pub size: u64,
    /// The canonical path it was opened at.
    pub path: PathBuf,
    /// What the file was when opened, from fstat on the open descriptor.
    pub identity: ImageIdentity,
    /// Hex SHA-256 of the contents, once someone computed or vouched for it.
    sha256: OnceLock<String>,
    file: File,
}

// SAFETY: the mapping is read-only and lives as long as the struct; sharing
// a read-only pointer across threads cannot race.
unsafe impl Send for PmemImage {}
// SAFETY: as above, nothing mutates through the pointer.
unsafe impl Sync for PmemImage {}

/// Linux maps persistent memory in 2 MiB subsections.
pub const PMEM_SIZE_ALIGN: u64 = vmfork_snapshot::state::PMEM_UNIT;

/// What tells one version of an image file from another without reading
/// it: a file replaced by rename has another inode, one rewritten in place
/// another mtime (unless someone set it back: only a digest catches that).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageIdentity {
    pub size: u64,
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i64,
}

impl ImageIdentity {
    pub fn of(meta: &std::fs::Metadata) -> ImageIdentity {
        ImageIdentity {
            size: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
        }
    }

    /// What differs in `now` from `self` (the recorded identity), in words,
    /// or None when nothing does.
    pub fn changed(&self, now: &ImageIdentity) -> Option<String> {
        if now.size != self.size {
            Some(format!(
                "its size changed from {} to {} bytes",
                self.size, now.size
            ))
        } else if (now.dev, now.ino) != (self.dev, self.ino) {
            Some(format!(
                "it was replaced (device {} inode {}, recorded device {} inode {})",
                now.dev, now.ino, self.dev, self.ino
            ))
        } else if now.mtime_ns != self.mtime_ns {
            Some(format!(
                "it was modified (mtime {} ns, recorded {} ns)",
                now.mtime_ns, self.mtime_ns
            ))
        } else {
            None
        }
    }
}

impl PmemImage {
    /// Opens and maps the image at `path` as cold boot takes it: any path
    /// to a regular file whose size is a non-zero multiple of 2 MiB.
    pub fn open(path: &Path) -> Result<PmemImage> {
        let err = |source| Error::Image {
            what: "rootfs",
            path: path.to_path_buf(),
            source,
        };
        let canonical = path.canonicalize().map_err(err)?;
        Self::open_canonical(&canonical, None)
    }

    /// Opens and maps the image a template recorded at `path` (canonical),
    /// refusing it unless fstat on the open descriptor still gives
    /// `expected`: [`Error::RootfsChanged`] names what differs.
    pub fn open_recorded(path: &Path, expected: &ImageIdentity) -> Result<PmemImage> {
        Self::open_canonical(path, Some(expected))
    }

    fn open_canonical(path: &Path, expected: Option<&ImageIdentity>) -> Result<PmemImage> {
        let err = |source: std::io::Error| match expected {
            Some(_) => Error::RootfsChanged {
                path: path.to_path_buf(),
                what: match source.raw_os_error() {
                    Some(libc::ENOENT) => "it is missing".into(),
                    Some(libc::ELOOP) => "it is now a symbolic link".into(),
                    _ => format!("it cannot be opened ({source})"),
                },
            },
            None => Error::Image {
                what: "rootfs",
                path: path.to_path_buf(),
                source,
            },
        };
        // The path is canonical, so O_NOFOLLOW only refuses a symlink put
        // in its place since; O_NONBLOCK keeps a FIFO there from blocking
        // the open, and changes nothing for a regular file.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(err)?;
        let meta = file.metadata().map_err(err)?;
        let identity = ImageIdentity::of(&meta);
        let size = meta.len();
        if !meta.is_file() || size == 0 || size % PMEM_SIZE_ALIGN != 0 {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "a rootfs image must be a regular file whose size is a non-zero multiple of 2 MiB (it is {size} bytes)"
                ),
            )));
        }
        if let Some(what) = expected.and_then(|e| e.changed(&identity)) {
            return Err(Error::RootfsChanged {
                path: path.to_path_buf(),
                what,
            });
        }
        crate::boot::rootfs_check::check_ext4(&file).map_err(err)?;
        // SAFETY: mapping a file we hold open, read-only, at a kernel-chosen
        // address; the result is checked before use and unmapped in Drop.
        let host_addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if host_addr == libc::MAP_FAILED {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(PmemImage {
            host_addr,
            size,
            path: path.to_path_buf(),
            identity,
            sha256: OnceLock::new(),
            file,
        })
    }

    pub fn host_addr(&self) -> u64 {
        self.host_addr as u64
    }

    /// The hex SHA-256 of the contents: computed by reading the file the
    /// first time it is asked for, unless [`PmemImage::vouch_sha256`] gave
    /// it already.
    pub fn sha256(&self) -> Result<&str> {
        if let Some(known) = self.sha256.get() {
            return Ok(known);
        }
        let digest = self.compute_sha256()?;
        Ok(self.sha256.get_or_init(|| digest))
    }

    /// Hashes the file's contents now, through the open descriptor (not
    /// the mapping: a file truncated meanwhile is then a read error, not a
    /// SIGBUS).
    pub fn compute_sha256(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        use std::os::unix::fs::FileExt;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0u64;
        while offset < self.size {
            let want = buf.len().min((self.size - offset) as usize);
            let n = self
                .file
                .read_at(&mut buf[..want], offset)
                .map_err(|source| Error::Image {
                    what: "rootfs",
                    path: self.path.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(Error::RootfsChanged {
                    path: self.path.clone(),
                    what: format!(
                        "it ends at {offset} bytes, before its size of {}",
                        self.size
                    ),
                });
            }
            hasher.update(&buf[..n]);
            offset += n as u64;
        }
        Ok(hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    /// Records a digest known from elsewhere (a template's manifest) so
    /// that nothing hashes the image again for it.
    pub fn vouch_sha256(&self, sha256: String) {
        let _ = self.sha256.set(sha256);
    }
}

impl Drop for PmemImage {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `open`; every VM
        // that used it is gone (each holds an Arc of it in its Machine,
        // dropped after the VM).
        unsafe {
            libc::munmap(self.host_addr, self.size as usize);
        }
    }
}

/// An address range owned by a shell (and later by its clone), unmapped
/// when dropped.
pub struct ReservedRam {
    pub(crate) addr: *mut libc::c_void,
    pub(crate) size: usize,
}

// SAFETY: the range is only an address reservation plus mappings owned by
// this value; moving ownership between threads is fine.
unsafe impl Send for ReservedRam {}
// SAFETY: shared references expose nothing that could race.
unsafe impl Sync for ReservedRam {}

impl ReservedRam {
    /// Replaces whatever is mapped in the range with an inaccessible
    /// reservation again, freeing the pages.
    pub(crate) fn unmap_contents(&self) -> Result<()> {
        // SAFETY: MAP_FIXED over exactly the range this value owns; no vCPU
        // runs in it (the VM using it is stopped).
        let mapped = unsafe {
            libc::mmap(
                self.addr,
                self.size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(Error::GuestMemory(format!(
                "resetting a VM shell's memory: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

impl Drop for ReservedRam {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range reserved in `reserve`; the VM
        // using it is dropped first (field order in Machine).
        unsafe {
            libc::munmap(self.addr, self.size);
        }
    }
}
