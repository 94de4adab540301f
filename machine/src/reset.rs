//! Resetting a finished clone's memory to the template's in place, so its
//! VM can run the next clone without KVM rebuilding its page mappings.
//!
//! A clone maps the template's sealed memfd `MAP_PRIVATE`, so every page it
//! (or KVM on its behalf) wrote is now a private anonymous page, and every
//! other page is still the memfd's. `/proc/self/pagemap` tells the two
//! apart, so the written pages can be found exactly and refilled from the
//! memfd while the mapping, and with it KVM's shadow page tables, stays.
//! On this host each guest page fault KVM handles costs ~45 us, about ten
//! of them per request (docs/serve.md).
//!
//! KVM keeps shadow page tables in sync with the guest's page tables by
//! trapping guest writes to them, and cannot see the host's. So a clone
//! that wrote any page the template uses as a page table is reset the slow
//! way instead (the whole mapping replaced, every KVM mapping dropped), as
//! is one that wrote more than [`MAX_IN_PLACE_PAGES`].

use std::collections::HashSet;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use kvm_bindings::kvm_sregs;
use vmfork_snapshot::state::{MachineState, MemoryState};

use crate::error::{Error, Result};
use crate::paging::{file_offset, PAGE, PTE_ADDR, PTE_LARGE, PTE_PRESENT};
/// Beyond this many written pages, dropping the mapping is cheaper than
/// copying them back.
pub const MAX_IN_PLACE_PAGES: usize = 2048;

/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE_OR_SHARED: u64 = 1 << 61;

/// Control-register bits that say whether the vCPU pages in 4 levels.
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
/// Bounds the walk of a hostile or corrupt page-table tree.
const MAX_TABLE_PAGES: usize = 1 << 16;

/// What an in-place reset needs to know about one template.
pub struct InPlaceReset {
    /// Memory-file offsets of every page the template's vCPUs use as a
    /// paging structure (4-level long mode), or None when the template is
    /// not in that mode and no reset is done in place.
    table_pages: Option<HashSet<u64>>,
    /// Memory-file offsets of the pages any entry into guest ring 0
    /// writes (ring0_entry.rs), or None when the template cannot tell.
    ring0_pages: Option<Vec<u64>>,
    pagemap: File,
    /// Set once the kernel refused PAGEMAP_SCAN: read entries instead.
    scan_unsupported: AtomicBool,
    /// The memfd's (device, inode): what a shell reset in place has mapped.
    memfd_id: (u64, u64),
}

/// The outcome of [`InPlaceReset::reset`].
#[derive(Debug, PartialEq, Eq)]
pub enum Reset {
    /// These many pages were copied back; the mapping stays.
    InPlace(usize),
    /// The clone wrote too much, or a page table: replace the mapping.
    Remap,
}

impl InPlaceReset {
    pub fn new(memfd: &File, state: &MachineState) -> Result<InPlaceReset> {
        let pagemap = File::open("/proc/self/pagemap")
            .map_err(|e| Error::GuestMemory(format!("opening /proc/self/pagemap: {e}")))?;
        Ok(InPlaceReset {
            memfd_id: file_id(memfd)?,
            table_pages: table_pages(memfd, &state.memory, state.vcpus.iter().map(|v| &v.sregs)),
            ring0_pages: crate::ring0_entry::watched_pages(
                memfd,
                &state.memory,
                state.vcpus.iter().map(|v| (&v.sregs, v.msrs.as_slice())),
            ),
            pagemap,
            scan_unsupported: AtomicBool::new(false),
        })
    }

    /// The identity of the memfd this reset refills from.
    pub fn memfd_id(&self) -> (u64, u64) {
        self.memfd_id
    }

    /// Whether the clone in the mapping at `addr` (laid out as the memory
    /// file) may have run guest ring 0: it wrote a page that every entry
    /// into ring 0 writes, or the template gives no such pages. A few
    /// pagemap entries, read directly.
    fn entered_ring0(&self, addr: usize) -> Result<bool> {
        let Some(pages) = &self.ring0_pages else {
            return Ok(true);
        };
        for &offset in pages {
            let mut entry = [0u8; 8];
            self.pagemap
                .read_exact_at(&mut entry, (addr as u64 + offset) / PAGE * 8)
                .map_err(|e| Error::GuestMemory(format!("reading /proc/self/pagemap: {e}")))?;
            if is_written(u64::from_ne_bytes(entry)) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Finds the pages written in `addr..addr+size` (a clone's private
    /// mapping of `memfd`, laid out as the memory file) and either copies
    /// them back from `memfd` or says the mapping must be replaced. None:
    /// the VM must be closed, because the clone may have run guest ring 0
    /// and `shadowing` (asked only then) says KVM shadows guest page
    /// tables (ring0_entry.rs). On the usual path this costs nothing more
    /// than the scan: the ring-0 pages are looked up among those written.
    pub fn reset(
        &self,
        memfd: &File,
        addr: usize,
        size: usize,
        shadowing: impl FnOnce() -> bool,
    ) -> Result<Option<Reset>> {
        let Some(tables) = &self.table_pages else {
            return self.remap_unless_ring0(addr, shadowing);
        };
        let Some(written) = self.written_pages(addr, size, MAX_IN_PLACE_PAGES)? else {
            return self.remap_unless_ring0(addr, shadowing);
        };
        let ring0 = match &self.ring0_pages {
            Some(pages) => pages.iter().any(|p| written.binary_search(p).is_ok()),
            None => true,
        };
        if ring0 && shadowing() {
            return Ok(None);
        }
        if written.iter().any(|p| tables.contains(p)) {
            return Ok(Some(Reset::Remap));
        }
        for run in runs(&written) {
            let (offset, len) = (run.0 as usize, run.1 as usize);
            // SAFETY: `addr+offset..+len` lies inside the caller's mapping
            // (offsets come from scanning exactly that range), which is
            // readable and writable, and no vCPU runs in it.
            let target = unsafe { std::slice::from_raw_parts_mut((addr + offset) as *mut u8, len) };
            memfd
                .read_exact_at(target, run.0)
                .map_err(|e| Error::GuestMemory(format!("refilling a clone's page: {e}")))?;
        }
        Ok(Some(Reset::InPlace(written.len())))
    }

    /// [`Reset::Remap`], or None (close the VM) as [`Self::reset`] decides
    /// it, for a mapping that is not reset in place.
    pub fn remap_unless_ring0(
        &self,
        addr: usize,
        shadowing: impl FnOnce() -> bool,
    ) -> Result<Option<Reset>> {
        if self.entered_ring0(addr)? && shadowing() {
            return Ok(None);
        }
        Ok(Some(Reset::Remap))
    }

    /// Offsets of the pages in the range that are no longer the file's,
    /// or None when there are more than `limit`.
    fn written_pages(&self, addr: usize, size: usize, limit: usize) -> Result<Option<Vec<u64>>> {
        if !self.scan_unsupported.load(Ordering::Relaxed) {
            match scan_written(&self.pagemap, addr, size, limit) {
                Ok(pages) => return Ok(pages),
                // Kernels before 6.7 have no PAGEMAP_SCAN; read the table.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                    self.scan_unsupported.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    return Err(Error::GuestMemory(format!(
                        "scanning /proc/self/pagemap: {e}"
                    )))
                }
            }
        }
        let written = self.read_written_pages(addr, size)?;
        Ok((written.len() <= limit).then_some(written))
    }

    /// [`Self::written_pages`] by reading one pagemap entry per page.
    /// (A plain loop over u64 entries: an iterator over byte chunks showed
    /// up at ~3 % of `serve`'s CPU.)
    fn read_written_pages(&self, addr: usize, size: usize) -> Result<Vec<u64>> {
        let pages = size / PAGE as usize;
        let mut entries = vec![0u64; pages];
        // SAFETY: any bytes are a valid u64; the view covers exactly the
        // vector's storage and is dropped before the vector is read.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(entries.as_mut_ptr().cast::<u8>(), pages * 8) };
        self.pagemap
            .read_exact_at(bytes, (addr as u64 / PAGE) * 8)
            .map_err(|e| Error::GuestMemory(format!("reading /proc/self/pagemap: {e}")))?;
        let mut written = Vec::new();
        for (i, &entry) in entries.iter().enumerate() {
            // pagemap entries are native-endian u64s.
            if is_written(entry) {
                written.push(i as u64 * PAGE);
            }
        }
        Ok(written)
    }
}

/// PAGEMAP_SCAN (linux/fs.h, Linux 6.7), and the page categories it
/// matches on.
pub use vmfork_isolation::ioctls::PAGEMAP_SCAN;
const _: () = assert!(PAGEMAP_SCAN >> 16 & 0x3fff == std::mem::size_of::<PmScanArg>() as u64);
const PAGE_IS_FILE: u64 = 1 << 2;
const PAGE_IS_PRESENT: u64 = 1 << 3;
const PAGE_IS_SWAPPED: u64 = 1 << 4;

/// `struct pm_scan_arg`.
#[repr(C)]
#[derive(Default)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

/// `struct page_region`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

/// The written pages of `addr..addr+size` as the kernel reports them in
/// runs, skipping unpopulated page tables whole: what [`is_written`]
/// decides per pagemap entry (present and not the file's, or swapped),
/// without reading an entry for every page. None past `limit` pages.
fn scan_written(
    pagemap: &File,
    addr: usize,
    size: usize,
    limit: usize,
) -> std::io::Result<Option<Vec<u64>>> {
    let mut regions = [PageRegion::default(); 64];
    let mut written = Vec::new();
    let end = (addr + size) as u64;
    let mut start = addr as u64;
    while start < end {
        let mut arg = PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            start,
            end,
            vec: regions.as_mut_ptr() as u64,
            vec_len: regions.len() as u64,
            // One page past the limit tells "too many" from "exactly".
            max_pages: (limit + 1 - written.len()) as u64,
            category_inverted: PAGE_IS_FILE,
            category_mask: PAGE_IS_FILE,
            category_anyof_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            return_mask: PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
            ..Default::default()
        };
        // SAFETY: `arg` is a valid pm_scan_arg whose `vec` points to
        // `regions`, writable for `vec_len` entries, both alive across the
        // call; the kernel only reads the scanned range's page tables.
        let found = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, &mut arg) };
        if found < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for r in &regions[..(found as usize).min(regions.len())] {
            let mut page = r.start;
            while page < r.end {
                written.push(page - addr as u64);
                page += PAGE;
            }
        }
        if written.len() > limit {
            return Ok(None);
        }
        if arg.walk_end <= start {
            break;
        }
        start = arg.walk_end;
    }
    Ok(Some(written))
}

/// A file's (device, inode), which tells whether a mapping is of it.
pub fn file_id(file: &File) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = file
        .metadata()
        .map_err(|e| Error::GuestMemory(format!("fstat of template memory: {e}")))?;
    Ok((meta.dev(), meta.ino()))
}

/// A page of a private file mapping that the file no longer backs: copied
/// on write (or the zero page, which copying back turns into a private
/// page holding the same zeros).
fn is_written(entry: u64) -> bool {
    entry & PM_SWAPPED != 0 || (entry & PM_PRESENT != 0 && entry & PM_FILE_OR_SHARED == 0)
}

/// Sorted page offsets merged into (offset, length) runs.
fn runs(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &p in pages {
        match out.last_mut() {
            Some((start, len)) if *start + *len == p => *len += PAGE,
            _ => out.push((p, PAGE)),
        }
    }
    out
}

/// Every paging-structure page reachable from each vCPU's CR3, as memory-
/// file offsets; None unless every vCPU is in 4-level long mode with
/// paging on (or has paging off, using no tables).
fn table_pages<'a>(
    memfd: &File,
    layout: &MemoryState,
    sregs: impl Iterator<Item = &'a kvm_sregs>,
) -> Option<HashSet<u64>> {
    let mut tables = HashSet::new();
    for s in sregs {
        if s.cr0 & CR0_PG == 0 {
            continue;
        }
        if s.cr4 & CR4_PAE == 0 || s.efer & EFER_LMA == 0 || s.cr4 & CR4_LA57 != 0 {
            return None;
        }
        // (table's guest-physical address, its level: 4 = PML4 .. 1 = PT)
        let mut pending = vec![(s.cr3 & PTE_ADDR, 4u8)];
        while let Some((gpa, level)) = pending.pop() {
            let offset = file_offset(layout, gpa)?;
            if !tables.insert(offset) {
                continue;
            }
            if tables.len() > MAX_TABLE_PAGES {
                return None;
            }
            if level == 1 {
                continue;
            }
            let mut page = [0u8; PAGE as usize];
            memfd.read_exact_at(&mut page, offset).ok()?;
            for e in page.chunks_exact(8) {
                let entry = u64::from_le_bytes([e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7]]);
                // A large page ends the walk (PS is reserved in a PML4E).
                let large = level < 4 && entry & PTE_LARGE != 0;
                if entry & PTE_PRESENT != 0 && !large {
                    pending.push((entry & PTE_ADDR, level - 1));
                }
            }
        }
    }
    Some(tables)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmfork_snapshot::state::MemoryRegion;

    #[test]
    fn written_means_private_and_present_or_swapped() {
        assert!(is_written(PM_PRESENT));
        assert!(is_written(PM_SWAPPED));
        assert!(!is_written(PM_PRESENT | PM_FILE_OR_SHARED));
        assert!(!is_written(0));
    }

    fn long_mode(cr3: u64) -> kvm_sregs {
        kvm_sregs {
            cr0: CR0_PG | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
            ..Default::default()
        }
    }

    #[test]
    fn table_walk_finds_every_paging_structure_and_stops_at_large_pages() {
        // Guest RAM at 1 MiB (file offset 0): PML4 at +0x1000 -> PDPT at
        // +0x2000, whose entry 0 maps 1 GiB directly and entry 1 points to
        // a PD at +0x3000; the PD maps 2 MiB at entry 0 and points to a PT
        // at +0x4000 from entry 1. The PT's entries are leaves.
        let base = 0x10_0000u64;
        let mut image = vec![0u8; 0x8000];
        let mut put = |table: u64, index: usize, value: u64| {
            let at = table as usize + index * 8;
            image[at..at + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(0x1000, 0, (base + 0x2000) | PTE_PRESENT);
        put(0x2000, 0, PTE_LARGE | PTE_PRESENT);
        put(0x2000, 1, (base + 0x3000) | PTE_PRESENT);
        put(0x3000, 0, PTE_LARGE | PTE_PRESENT);
        put(0x3000, 1, (base + 0x4000) | PTE_PRESENT);
        put(0x3000, 2, (base + 0x7000) & !PTE_PRESENT);
        put(0x4000, 0, (base + 0x6000) | PTE_PRESENT);
        let path = std::env::temp_dir().join(format!("vmfork-reset-test-{}", std::process::id()));
        std::fs::write(&path, &image).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let layout = MemoryState {
            mem_size: image.len() as u64,
            regions: vec![MemoryRegion {
                guest_addr: base,
                size: image.len() as u64,
                file_offset: 0,
            }],
            diff: false,
            dirty_ranges: Vec::new(),
        };
        let sregs = [long_mode(base + 0x1000)];
        let mut found: Vec<u64> = table_pages(&file, &layout, sregs.iter())
            .unwrap()
            .into_iter()
            .collect();
        found.sort_unstable();
        assert_eq!(found, vec![0x1000, 0x2000, 0x3000, 0x4000]);

        // Paging off uses no tables; 32-bit or 5-level paging is not walked.
        let off = kvm_sregs::default();
        assert_eq!(
            table_pages(&file, &layout, [off].iter()).map(|t| t.len()),
            Some(0)
        );
        let mut la57 = long_mode(base + 0x1000);
        la57.cr4 |= CR4_LA57;
        assert!(table_pages(&file, &layout, [la57].iter()).is_none());
        // A CR3 outside guest RAM cannot be checked either.
        assert!(table_pages(&file, &layout, [long_mode(0x10_0000_0000)].iter()).is_none());
    }

    #[test]
    fn the_kernel_scan_finds_what_the_pagemap_entries_say() {
        const PAGES: usize = 1024;
        let file = tempfile_with(PAGES * PAGE as usize);
        // SAFETY: a fresh private mapping of the file, unmapped below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGES * PAGE as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let base = at as usize;
        let wrote = [0usize, 1, 2, 7, 300, 301, 1023];
        for p in wrote {
            // SAFETY: inside the writable mapping made above.
            unsafe { std::ptr::write_volatile((base + p * PAGE as usize) as *mut u8, 1) };
        }
        // Only read: still the file's page.
        // SAFETY: as above.
        let _ = unsafe { std::ptr::read_volatile((base + 500 * PAGE as usize) as *const u8) };
        let reset = InPlaceReset {
            table_pages: None,
            ring0_pages: None,
            pagemap: File::open("/proc/self/pagemap").unwrap(),
            scan_unsupported: AtomicBool::new(false),
            memfd_id: (0, 0),
        };
        let size = PAGES * PAGE as usize;
        let expected: Vec<u64> = wrote.iter().map(|&p| p as u64 * PAGE).collect();
        assert_eq!(reset.read_written_pages(base, size).unwrap(), expected);
        match scan_written(&reset.pagemap, base, size, 100) {
            Ok(found) => {
                assert_eq!(found, Some(expected.clone()));
                assert_eq!(
                    scan_written(&reset.pagemap, base, size, wrote.len()).unwrap(),
                    Some(expected)
                );
                assert_eq!(
                    scan_written(&reset.pagemap, base, size, wrote.len() - 1).unwrap(),
                    None
                );
            }
            Err(e) => assert!(matches!(
                e.raw_os_error(),
                Some(libc::ENOTTY | libc::EINVAL)
            )),
        }
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(at, size) };
    }

    #[test]
    fn a_written_ring0_page_closes_the_vm_only_under_shadow_paging() {
        const PAGES: usize = 16;
        let size = PAGES * PAGE as usize;
        let file = tempfile_with(size);
        // SAFETY: a fresh private mapping of the file, unmapped below.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let base = at as usize;
        let write = |page: usize| {
            // SAFETY: inside the writable mapping made above.
            unsafe { std::ptr::write_volatile((base + page * PAGE as usize) as *mut u8, 1) };
        };
        let reset = InPlaceReset {
            table_pages: Some(HashSet::new()),
            ring0_pages: Some(vec![5 * PAGE]),
            pagemap: File::open("/proc/self/pagemap").unwrap(),
            scan_unsupported: AtomicBool::new(false),
            memfd_id: (0, 0),
        };
        // Ring 3 only: refilled, and KVM's statistics never asked for.
        write(2);
        let verdict = reset.reset(&file, base, size, || panic!("asked")).unwrap();
        assert_eq!(verdict, Some(Reset::InPlace(1)));
        // SAFETY: inside the mapping; the refill put the file's byte back.
        assert_eq!(unsafe { *((base + 2 * PAGE as usize) as *const u8) }, 0x5a);
        // A ring-0 stack page written: closed under shadow paging only.
        write(5);
        assert_eq!(reset.reset(&file, base, size, || true).unwrap(), None);
        assert_eq!(reset.remap_unless_ring0(base, || true).unwrap(), None);
        // (A refilled page stays a private copy, so page 2 counts again.)
        assert_eq!(
            reset.reset(&file, base, size, || false).unwrap(),
            Some(Reset::InPlace(2))
        );
        assert_eq!(
            reset.remap_unless_ring0(base, || false).unwrap(),
            Some(Reset::Remap)
        );
        // SAFETY: unmapping the mapping made above, no longer used.
        unsafe { libc::munmap(at, size) };
    }

    fn tempfile_with(len: usize) -> File {
        let path =
            std::env::temp_dir().join(format!("vmfork-scan-test-{}-{len}", std::process::id()));
        std::fs::write(&path, vec![0x5a; len]).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        file
    }

    #[test]
    fn runs_merge_adjacent_pages_only() {
        assert_eq!(
            runs(&[0, 4096, 8192, 20480, 24576, 40960]),
            vec![(0, 12288), (20480, 8192), (40960, 4096)]
        );
        assert!(runs(&[]).is_empty());
    }
}
