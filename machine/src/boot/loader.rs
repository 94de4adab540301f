//! Kernel and initrd loading: ELF (64-bit direct or PVH entry) and bzImage,
//! through linux-loader.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, ReadVolatile};

use super::layout::{HIMEM_START, MMIO_GAP_START};
use crate::error::{Error, Result};

/// The kernel a machine was booted from, as a template's manifest records
/// it (its digest decides whether clones may resume into a request).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelInfo {
    /// "embedded" or the path it was booted from.
    pub source: String,
    pub sha256: String,
    pub cmdline: String,
}

/// Where a kernel image comes from: a file, or bytes embedded in vmfork.
pub enum KernelSource {
    File(PathBuf),
    Embedded(&'static [u8]),
}

/// How `describe` (and so a template manifest) names the embedded guest.
pub const EMBEDDED_KERNEL: &str = "embedded";

impl KernelSource {
    pub fn describe(&self) -> String {
        match self {
            KernelSource::File(p) => p.display().to_string(),
            KernelSource::Embedded(_) => EMBEDDED_KERNEL.to_string(),
        }
    }

    /// Hex SHA-256 of the image, recorded in templates.
    pub fn sha256(&self) -> Result<String> {
        use sha2::{Digest, Sha256};
        let digest = match self {
            KernelSource::Embedded(bytes) => Sha256::digest(bytes),
            KernelSource::File(path) => {
                let bytes = std::fs::read(path).map_err(|source| Error::KernelUnreadable {
                    path: path.clone(),
                    source,
                })?;
                Sha256::digest(&bytes)
            }
        };
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Which boot protocol to enter an ELF kernel with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootProtocol {
    /// 64-bit direct entry for ELF, the 64-bit bzImage entry for bzImage.
    #[default]
    Linux64,
    /// PVH (32-bit protected mode, hvm_start_info); ELF with a PVH note only.
    Pvh,
}

/// How the first vCPU enters the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Long mode at `rip`, RSI = zero page.
    Linux64 { rip: u64 },
    /// 32-bit protected mode at `rip`, EBX = hvm_start_info.
    Pvh { rip: u64 },
}

pub struct LoadedKernel {
    pub entry: Entry,
    /// Present for bzImage: copied into the zero page.
    pub setup_header: Option<setup_header>,
    pub kernel_end: u64,
    pub is_bzimage: bool,
    /// A Linux kernel (any bzImage, or an ELF with "Linux" notes), whose
    /// agent reaches the mailbox through /dev/mem: the e820 map reserves
    /// the mailbox for it.
    pub is_linux: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Elf,
    BzImage,
}

/// Detects ELF vs bzImage from the first bytes, so a wrong file gets a
/// clear "neither ELF nor bzImage" instead of a loader's internal error.
fn sniff(header: &[u8]) -> Option<Format> {
    if header.len() >= 4 && &header[..4] == b"\x7fELF" {
        return Some(Format::Elf);
    }
    // bzImage: "HdrS" at 0x202 in the real-mode setup header.
    if header.len() >= 0x206 && &header[0x202..0x206] == b"HdrS" {
        return Some(Format::BzImage);
    }
    None
}

pub fn load_kernel(
    mem: &GuestMemoryMmap,
    source: &KernelSource,
    protocol: BootProtocol,
) -> Result<LoadedKernel> {
    match source {
        KernelSource::Embedded(bytes) => load_from(
            mem,
            &mut std::io::Cursor::new(*bytes),
            "embedded guest".as_ref(),
            protocol,
        ),
        KernelSource::File(path) => {
            let unreadable = |source| Error::KernelUnreadable {
                path: path.clone(),
                source,
            };
            let mut file = File::open(path).map_err(unreadable)?;
            if file.metadata().map_err(unreadable)?.is_dir() {
                return Err(unreadable(std::io::Error::from_raw_os_error(libc::EISDIR)));
            }
            load_from(mem, &mut file, path, protocol)
        }
    }
}

fn load_from<F: Read + ReadVolatile + Seek>(
    mem: &GuestMemoryMmap,
    image: &mut F,
    path: &Path,
    protocol: BootProtocol,
) -> Result<LoadedKernel> {
    let mut header = vec![0u8; 0x206];
    let n = read_up_to(image, &mut header).map_err(|source| Error::KernelUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    header.truncate(n);
    let format = sniff(&header).ok_or_else(|| Error::KernelFormat {
        path: path.to_path_buf(),
    })?;
    let load_err =
        |e: linux_loader::loader::Error| Error::KernelLoad(format!("{}: {e}", path.display()));
    let ram_top = mem.last_addr().0 + 1;
    let (needed_end, is_linux) = match format {
        Format::Elf => elf_facts(image).map(|f| (f.load_end, f.linux_note)),
        // A bzImage's protected-mode part goes at 1 MiB and needs at least
        // its own size there (more once decompressed, which the kernel checks).
        Format::BzImage => image
            .seek(SeekFrom::End(0))
            .map(|size| (HIMEM_START + size, true)),
    }
    .map_err(|source| Error::KernelUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    if needed_end > ram_top {
        return Err(Error::MemoryTooSmall(format!(
            "{} needs guest RAM up to {needed_end:#x}, but RAM ends at {ram_top:#x}; raise --mem",
            path.display()
        )));
    }
    match format {
        Format::Elf => {
            let result =
                Elf::load(mem, None, image, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
            let entry = match (protocol, result.pvh_boot_cap) {
                (BootProtocol::Pvh, PvhBootCapability::PvhEntryPresent(addr)) => {
                    Entry::Pvh { rip: addr.0 }
                }
                (BootProtocol::Pvh, _) => {
                    return Err(Error::KernelLoad(format!(
                        "{}: --boot-protocol pvh needs an ELF with a PVH (XEN_ELFNOTE_PHYS32_ENTRY) note",
                        path.display()
                    )))
                }
                (BootProtocol::Linux64, _) => Entry::Linux64 {
                    rip: elf_entry(image).map_err(|source| Error::KernelUnreadable {
                        path: path.to_path_buf(),
                        source,
                    })?,
                },
            };
            Ok(LoadedKernel {
                entry,
                setup_header: None,
                kernel_end: result.kernel_end,
                is_bzimage: false,
                is_linux,
            })
        }
        Format::BzImage => {
            if protocol == BootProtocol::Pvh {
                return Err(Error::KernelLoad(format!(
                    "{}: a bzImage has no PVH entry; boot the vmlinux ELF for PVH",
                    path.display()
                )));
            }
            let result = BzImage::load(mem, None, image, Some(GuestAddress(HIMEM_START)))
                .map_err(load_err)?;
            // The 64-bit entry of a bzImage sits 0x200 past its protected-mode start.
            Ok(LoadedKernel {
                entry: Entry::Linux64 {
                    rip: result.kernel_load.0 + 0x200,
                },
                setup_header: result.setup_header,
                kernel_end: result.kernel_end,
                is_bzimage: true,
                is_linux,
            })
        }
    }
}

fn read_up_to<R: Read + Seek>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    r.seek(SeekFrom::Start(0))?;
    read_up_to_at_current(r, buf)
}

/// What an ELF kernel's program headers say before it is loaded.
#[derive(Debug, Default, PartialEq, Eq)]
struct ElfFacts {
    /// The highest physical address any PT_LOAD segment occupies, so that a
    /// kernel too large for RAM is reported as such.
    load_end: u64,
    /// A PT_NOTE segment holds a note owned by "Linux" (every vmlinux has
    /// some: build salt, LTO info).
    linux_note: bool,
}

/// Reads [`ElfFacts`]. A malformed header yields zeros here and is left to
/// the loader to reject.
fn elf_facts<R: Read + Seek>(r: &mut R) -> std::io::Result<ElfFacts> {
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    let mut facts = ElfFacts::default();
    let mut ehdr = [0u8; 64];
    r.seek(SeekFrom::Start(0))?;
    if read_up_to(r, &mut ehdr)? < 64 {
        return Ok(facts);
    }
    let phoff = u64::from_le_bytes(ehdr[0x20..0x28].try_into().unwrap_or_default());
    let phentsize = u64::from(u16::from_le_bytes([ehdr[0x36], ehdr[0x37]]));
    let phnum = u64::from(u16::from_le_bytes([ehdr[0x38], ehdr[0x39]]));
    if phentsize < 56 {
        return Ok(facts);
    }
    let mut notes = Vec::new();
    for i in 0..phnum {
        let mut ph = [0u8; 56];
        r.seek(SeekFrom::Start(phoff.saturating_add(i * phentsize)))?;
        if read_up_to_at_current(r, &mut ph)? < 56 {
            return Ok(ElfFacts::default());
        }
        let kind = u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]);
        let word = |at: usize| u64::from_le_bytes(ph[at..at + 8].try_into().unwrap_or_default());
        match kind {
            PT_LOAD => facts.load_end = facts.load_end.max(word(0x18).saturating_add(word(0x28))),
            PT_NOTE => notes.push((word(0x08), word(0x20))),
            _ => {}
        }
    }
    for (offset, size) in notes {
        // Notes are small; a huge one is not a kernel's and is skipped.
        let mut bytes = vec![0u8; size.min(64 << 10) as usize];
        r.seek(SeekFrom::Start(offset))?;
        let n = read_up_to_at_current(r, &mut bytes)?;
        facts.linux_note |= has_note_owner(&bytes[..n], b"Linux");
    }
    Ok(facts)
}

/// Whether an ELF note segment holds a note owned by `owner`.
fn has_note_owner(mut notes: &[u8], owner: &[u8]) -> bool {
    let align4 = |n: usize| n.div_ceil(4) * 4;
    while notes.len() >= 12 {
        let word = |at: usize| {
            u32::from_le_bytes([notes[at], notes[at + 1], notes[at + 2], notes[at + 3]]) as usize
        };
        let (namesz, descsz) = (word(0), word(4));
        let name = notes.get(12..12 + namesz);
        if name.is_some_and(|n| n.strip_suffix(b"\0") == Some(owner)) {
            return true;
        }
        let next = 12usize
            .saturating_add(align4(namesz))
            .saturating_add(align4(descsz));
        match notes.get(next..) {
            Some(rest) => notes = rest,
            None => return false,
        }
    }
    false
}

fn read_up_to_at_current<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// linux-loader does not return `e_entry`, so read it from the ELF header.
fn elf_entry<R: Read + Seek>(r: &mut R) -> std::io::Result<u64> {
    let mut entry = [0u8; 8];
    r.seek(SeekFrom::Start(0x18))?;
    r.read_exact(&mut entry)?;
    Ok(u64::from_le_bytes(entry))
}

/// Places the initrd page-aligned at the top of low RAM, below the kernel's
/// `initrd_addr_max` when it states one.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_size: u64,
    kernel_end: u64,
    addr_max: Option<u64>,
) -> Result<(u64, u64)> {
    let image_err = |source| Error::Image {
        what: "initrd",
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(image_err)?;
    let size = bytes.len() as u64;
    let top = mem_size
        .min(MMIO_GAP_START)
        .min(addr_max.map_or(u64::MAX, |m| m + 1));
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end)
        .ok_or_else(|| {
            Error::MemoryTooSmall(format!(
                "initrd {} ({} KiB) does not fit between the kernel end {:#x} and {:#x}",
                path.display(),
                size >> 10,
                kernel_end,
                top
            ))
        })?;
    mem.write_slice(&bytes, GuestAddress(addr))
        .map_err(|e| Error::GuestMemory(format!("writing initrd: {e}")))?;
    Ok((addr, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(owner: &[u8], desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&(owner.len() as u32 + 1).to_le_bytes());
        n.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        n.extend_from_slice(&1u32.to_le_bytes());
        n.extend_from_slice(owner);
        n.push(0);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend_from_slice(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn linux_notes_are_found_and_others_are_not() {
        let mut notes = note(b"Xen", &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(!has_note_owner(&notes, b"Linux"));
        notes.extend(note(b"Linux", &[0]));
        assert!(has_note_owner(&notes, b"Linux"));
        // A name size past the end, or garbage, is no note.
        assert!(!has_note_owner(&[0xff; 40], b"Linux"));
        assert!(!has_note_owner(&notes[..20], b"Linux"));
    }

    #[test]
    fn the_embedded_guest_is_not_linux() {
        let facts = elf_facts(&mut std::io::Cursor::new(crate::EMBEDDED_GUEST)).expect("facts");
        assert!(!facts.linux_note);
        assert!(facts.load_end > HIMEM_START);
    }

    #[test]
    fn sniff_recognises_formats() {
        assert_eq!(sniff(b"\x7fELF\x02\x01"), Some(Format::Elf));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(sniff(&bz), Some(Format::BzImage));
        assert_eq!(sniff(b"#!/bin/sh\n"), None);
        assert_eq!(sniff(&[]), None);
    }
}
