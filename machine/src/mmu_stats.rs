//! KVM's own count of what its shadow MMU did in one VM, read from the
//! VM's binary statistics (KVM_GET_STATS_FD, Documentation/virt/kvm/api.rst
//! "KVM_GET_STATS_FD"). A VM whose `mmu_cache_miss` is above zero has had
//! KVM build shadow pages for it: KVM shadows the guest's own page tables
//! (PVM; VMX/SVM without EPT/NPT), and a reset must then care about
//! tables the guest built (shell.rs, ring0_entry.rs). With two-dimensional
//! paging and the TDP MMU it stays zero.
//!
//! `mmu_pte_write` and `mmu_unsync` would tell whether the guest wrote a
//! shadowed table, but this host's PVM counts neither: a clone that
//! rewrote a table KVM shadowed left both at zero (measured 2026-12-05),
//! so nothing here relies on them.

use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use kvm_ioctls::VmFd;

use crate::error::{Error, Result};

/// _IO(KVMIO, 0xce).
const KVM_GET_STATS_FD: u64 = 0xae_ce;
/// `struct kvm_stats_header` is six u32s; a descriptor is 16 bytes plus
/// the name.
const HEADER_LEN: usize = 24;
const DESC_LEN: usize = 16;
/// Bounds what a descriptor table may claim (KVM has ~20 VM statistics).
const MAX_DESCRIPTORS: usize = 4096;
const MAX_NAME: usize = 256;

/// The shadow-MMU counters that matter to a reset, as one reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MmuCounters {
    pub cache_miss: u64,
    pub pte_write: u64,
    pub unsync: u64,
}

/// Where each counter sits in the data block; the same for every VM of a
/// kernel, so found once per process.
#[derive(Debug, Clone, Copy)]
struct Layout {
    data_offset: u64,
    cache_miss: u64,
    pte_write: u64,
    unsync: u64,
    /// Bytes of data to read: up to the furthest of the three.
    len: usize,
}

/// This VM's counters now, or None when the kernel has no statistics fd
/// or not these counters.
pub fn read(vm: &VmFd) -> Option<MmuCounters> {
    let file = stats_fd(vm).ok()?;
    static LAYOUT: OnceLock<Option<Layout>> = OnceLock::new();
    let layout = (*LAYOUT.get_or_init(|| layout(&file).ok().flatten()))?;
    let mut data = vec![0u8; layout.len];
    file.read_exact_at(&mut data, layout.data_offset).ok()?;
    let at = |offset: u64| -> Option<u64> {
        let o = usize::try_from(offset).ok()?;
        Some(u64::from_ne_bytes(data.get(o..o + 8)?.try_into().ok()?))
    };
    Some(MmuCounters {
        cache_miss: at(layout.cache_miss)?,
        pte_write: at(layout.pte_write)?,
        unsync: at(layout.unsync)?,
    })
}

fn stats_fd(vm: &impl std::os::fd::AsRawFd) -> Result<File> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or
    // -1; the fd, when valid, is owned by the File made from it.
    let fd = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    if fd < 0 {
        return Err(Error::kvm("KVM_GET_STATS_FD")(kvm_ioctls::Error::last()));
    }
    // SAFETY: a fresh fd from the kernel, owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Reads the header and descriptors: where the three counters are.
fn layout(file: &File) -> std::io::Result<Option<Layout>> {
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)?;
    let field = |i: usize| u32_at(&header, i * 4).unwrap_or(0) as usize;
    let (name_size, count, desc_offset, data_offset) = (field(1), field(2), field(4), field(5));
    if count > MAX_DESCRIPTORS || name_size > MAX_NAME {
        return Ok(None);
    }
    let desc_len = DESC_LEN + name_size;
    let mut descs = vec![0u8; desc_len * count];
    file.read_exact_at(&mut descs, desc_offset as u64)?;
    Ok(find(&descs, desc_len, data_offset as u64))
}

/// The three counters' offsets in a descriptor table of `desc_len`-byte
/// entries: u32 flags, i16 exponent, u16 size, u32 offset, u32 bucket
/// size, then the NUL-padded name.
fn find(descs: &[u8], desc_len: usize, data_offset: u64) -> Option<Layout> {
    let (mut cache_miss, mut pte_write, mut unsync) = (None, None, None);
    for d in descs.chunks_exact(desc_len) {
        let offset = u64::from(u32_at(d, 8)?);
        let name = &d[DESC_LEN..];
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        match name {
            b"mmu_cache_miss" => cache_miss = Some(offset),
            b"mmu_pte_write" => pte_write = Some(offset),
            b"mmu_unsync" => unsync = Some(offset),
            _ => {}
        }
    }
    let (cache_miss, pte_write, unsync) = (cache_miss?, pte_write?, unsync?);
    let len = (cache_miss.max(pte_write).max(unsync) + 8) as usize;
    Some(Layout {
        data_offset,
        cache_miss,
        pte_write,
        unsync,
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(name: &str, offset: u32, name_size: usize) -> Vec<u8> {
        let mut d = vec![0u8; DESC_LEN + name_size];
        d[8..12].copy_from_slice(&offset.to_ne_bytes());
        d[DESC_LEN..DESC_LEN + name.len()].copy_from_slice(name.as_bytes());
        d
    }

    #[test]
    fn finds_the_three_counters_among_others_or_none() {
        let mut table = Vec::new();
        for (i, name) in [
            "remote_tlb_flush",
            "mmu_pte_write",
            "mmu_cache_miss",
            "mmu_unsync",
        ]
        .iter()
        .enumerate()
        {
            table.extend(desc(name, i as u32 * 8, 48));
        }
        let l = find(&table, DESC_LEN + 48, 100).unwrap();
        assert_eq!((l.pte_write, l.cache_miss, l.unsync), (8, 16, 24));
        assert_eq!((l.data_offset, l.len), (100, 32));
        assert!(find(&table[..3 * (DESC_LEN + 48)], DESC_LEN + 48, 0).is_none());
    }

    #[test]
    fn a_vm_has_them_when_the_host_has_kvm() {
        let Ok(host) = crate::kvm_host::KvmHost::get() else {
            return;
        };
        let vm = host.kvm.create_vm().unwrap();
        // A fresh VM has shadowed nothing.
        if let Some(c) = read(&vm) {
            assert_eq!(c, MmuCounters::default());
        }
    }
}
