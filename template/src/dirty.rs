//! The dirty set of a restored VM, computed only when a diff snapshot asks.
//!
//! A restored VM's RAM is a `MAP_PRIVATE` mapping of its template's memory
//! file. A page the guest wrote was copied on write and is now anonymous;
//! a page it only read is still the file's page cache. So /proc/self/pagemap
//! already holds the dirty bitmap: present (or swapped) and not file-backed
//! means dirty. Nothing is tracked while the VM runs, and KVM dirty logging
//! is never turned on. docs/snapshot-format.md has the measurements.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vmfork_machine::error::{Error, Result};

const PAGE: u64 = 4096;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE_OR_SHARED_ANON: u64 = 1 << 61;

/// Dirty pages of the mapping `host_addr..host_addr+len`, as sorted,
/// coalesced (offset, length) ranges relative to `host_addr`.
pub fn dirty_ranges(host_addr: u64, len: u64) -> Result<Vec<(u64, u64)>> {
    let pagemap = File::open("/proc/self/pagemap")
        .map_err(|e| Error::Snapshot(format!("opening /proc/self/pagemap: {e}")))?;
    let pages = len / PAGE;
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    // 64 Ki entries (512 KiB) per read keeps memory flat for any RAM size.
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0u8; (CHUNK * 8) as usize];
    let mut page = 0u64;
    while page < pages {
        let n = CHUNK.min(pages - page);
        let bytes = &mut buf[..(n * 8) as usize];
        pagemap
            .read_exact_at(bytes, (host_addr / PAGE + page) * 8)
            .map_err(|e| Error::Snapshot(format!("reading /proc/self/pagemap: {e}")))?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let entry = u64::from_le_bytes(entry.try_into().unwrap_or([0; 8]));
            let dirty =
                entry & (PM_PRESENT | PM_SWAPPED) != 0 && entry & PM_FILE_OR_SHARED_ANON == 0;
            if dirty {
                let offset = (page + i as u64) * PAGE;
                match ranges.last_mut() {
                    Some((start, length)) if *start + *length == offset => *length += PAGE,
                    _ => ranges.push((offset, PAGE)),
                }
            }
        }
        page += n;
    }
    Ok(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn written_pages_of_a_private_file_mapping_are_dirty() {
        let path = std::env::temp_dir().join(format!("vmfork-dirty-{}", std::process::id()));
        let file = File::create(&path).expect("file");
        file.set_len(16 * PAGE).expect("len");
        file.write_all_at(&[7u8; 4096], 0).expect("write");
        let file = File::open(&path).expect("reopen");
        // SAFETY: a fresh private mapping of a file we hold open; unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                (16 * PAGE) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let mem = addr as *mut u8;
        // SAFETY: all offsets are inside the 16-page mapping.
        unsafe {
            let _ = std::ptr::read_volatile(mem); // read only: stays clean
            std::ptr::write_volatile(mem.add(3 * 4096), 1);
            std::ptr::write_volatile(mem.add(4 * 4096 + 10), 1);
            std::ptr::write_volatile(mem.add(9 * 4096), 1);
        }
        let ranges = dirty_ranges(addr as u64, 16 * PAGE).expect("pagemap");
        assert_eq!(ranges, vec![(3 * PAGE, 2 * PAGE), (9 * PAGE, PAGE)]);
        // SAFETY: unmapping the mapping created above.
        unsafe { libc::munmap(addr, (16 * PAGE) as usize) };
        let _ = std::fs::remove_file(path);
    }
}
