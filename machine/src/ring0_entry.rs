//! Telling, after a clone ran, whether its guest entered ring 0, from the
//! pages it wrote: a clone whose template is parked in ring 3 can only get
//! to ring 0 through an interrupt, exception or call gate (SYSCALL and
//! SYSENTER are checked off from the template's EFER and SYSENTER_CS),
//! and each pushes a frame onto a stack the TSS names (RSP0-2, IST1-7).
//! So if none of those stack pages nor the TSS page was written, ring 0
//! never ran. `/proc/self/pagemap` reports a written page even when the
//! bytes written equal the old ones.
//!
//! What for: with shadow paging (PVM), only ring 0 can load a CR3, write
//! an MSR or a debug register, or build page tables outside the
//! template's tree that KVM then shadows; a host-side refill of such a
//! table would leave KVM's shadow of it stale (docs/security.md,
//! "Recycled VMs: what a reset restores").

use std::fs::File;
use std::os::unix::fs::FileExt;

use kvm_bindings::{kvm_msr_entry, kvm_sregs};
use vmfork_snapshot::state::MemoryState;

use crate::paging::{file_offset, PAGE, PTE_ADDR, PTE_LARGE, PTE_PRESENT};

/// The first 104 bytes of a 64-bit TSS: RSP0-2 at 4, IST1-7 at 36.
const TSS_LEN: u64 = 104;
const TSS_RSP0: u64 = 4;
const TSS_IST1: u64 = 36;
/// The largest frame an interrupt pushes in 64-bit mode (SS, RSP,
/// RFLAGS, CS, RIP, error code), below RSP aligned down to 16.
const FRAME: u64 = 48;
const EFER_SCE: u64 = 1;
const MSR_SYSENTER_CS: u32 = 0x174;

/// Memory-file offsets of the pages a ring-0 entry writes first, or None
/// when the template allows one that may write none of them (a vCPU
/// parked outside ring 3, SYSCALL enabled, a SYSENTER target set) or
/// its TSS cannot be read.
pub fn watched_pages<'a>(
    memfd: &File,
    layout: &MemoryState,
    vcpus: impl Iterator<Item = (&'a kvm_sregs, &'a [kvm_msr_entry])>,
) -> Option<Vec<u64>> {
    let mut pages = Vec::new();
    for (s, msrs) in vcpus {
        let sysenter = msrs
            .iter()
            .any(|m| m.index == MSR_SYSENTER_CS && m.data != 0);
        if s.cs.selector & 3 != 3 || s.efer & EFER_SCE != 0 || sysenter {
            return None;
        }
        let tss = s.tr.base;
        let mut add = |va: u64| -> Option<()> {
            let offset = translate(memfd, layout, s, va)? & !(PAGE - 1);
            if !pages.contains(&offset) {
                pages.push(offset);
            }
            Some(())
        };
        add(tss)?;
        add(tss + TSS_LEN - 1)?;
        // The TSS may cross a page: read it field by field.
        for field in (0..3)
            .map(|i| TSS_RSP0 + 8 * i)
            .chain((0..7).map(|i| TSS_IST1 + 8 * i))
        {
            let at = translate(memfd, layout, s, tss + field)?;
            let mut bytes = [0u8; 8];
            memfd.read_exact_at(&mut bytes, at).ok()?;
            let top = u64::from_le_bytes(bytes) & !15;
            if top == 0 {
                // Unused: a delivery through it faults in ring 0's
                // stack switch and ends the VM.
                continue;
            }
            add(top.wrapping_sub(FRAME))?;
            add(top.wrapping_sub(1))?;
        }
    }
    Some(pages)
}

/// The memory-file offset of linear address `va` under the vCPU's page
/// tables (4-level long mode, or paging off), or None.
fn translate(memfd: &File, layout: &MemoryState, s: &kvm_sregs, va: u64) -> Option<u64> {
    const CR0_PG: u64 = 1 << 31;
    if s.cr0 & CR0_PG == 0 {
        return file_offset(layout, va);
    }
    let mut table = s.cr3 & PTE_ADDR;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (va >> shift) & 511;
        let mut bytes = [0u8; 8];
        memfd
            .read_exact_at(&mut bytes, file_offset(layout, table + index * 8)?)
            .ok()?;
        let entry = u64::from_le_bytes(bytes);
        if entry & PTE_PRESENT == 0 {
            return None;
        }
        let base = entry & PTE_ADDR;
        if level == 1 || (level < 4 && entry & PTE_LARGE != 0) {
            let size_mask = (1u64 << shift) - 1;
            return file_offset(layout, (base & !size_mask) | (va & size_mask));
        }
        table = base;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmfork_snapshot::state::MemoryRegion;

    #[test]
    fn watches_the_tss_and_the_pages_below_each_stack_top() {
        // Identity-mapped 2 MiB at guest 0 via PML4 0x1000 -> PDPT 0x2000
        // -> PD 0x3000 (one large page); TSS at 0x5000 with RSP0 = 0x8000
        // and IST1 = 0xa010 (not page aligned), the rest unused.
        let mut image = vec![0u8; 0x20_0000];
        let mut put = |at: u64, value: u64| {
            image[at as usize..at as usize + 8].copy_from_slice(&value.to_le_bytes());
        };
        put(0x1000, 0x2000 | PTE_PRESENT);
        put(0x2000, 0x3000 | PTE_PRESENT);
        put(0x3000, PTE_LARGE | PTE_PRESENT);
        put(0x5000 + TSS_RSP0, 0x8000);
        put(0x5000 + TSS_IST1, 0xa010);
        let path = std::env::temp_dir().join(format!("vmfork-ring0-test-{}", std::process::id()));
        std::fs::write(&path, &image).unwrap();
        let file = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let layout = MemoryState {
            mem_size: image.len() as u64,
            regions: vec![MemoryRegion {
                guest_addr: 0,
                size: image.len() as u64,
                file_offset: 0,
            }],
            diff: false,
            dirty_ranges: Vec::new(),
        };
        let mut s = kvm_sregs {
            cr0: 1 << 31 | 1,
            cr3: 0x1000,
            cr4: 1 << 5,
            efer: 1 << 10 | 1 << 8,
            ..Default::default()
        };
        s.cs.selector = 0x2b;
        s.tr.base = 0x5000;
        let msrs: Vec<kvm_msr_entry> = Vec::new();
        let mut pages = watched_pages(&file, &layout, [(&s, msrs.as_slice())].into_iter()).unwrap();
        pages.sort_unstable();
        assert_eq!(pages, vec![0x5000, 0x7000, 0x9000, 0xa000]);

        // Parked in ring 0, or with SYSCALL or SYSENTER usable: unknown.
        let mut ring0 = s;
        ring0.cs.selector = 0x10;
        assert!(watched_pages(&file, &layout, [(&ring0, msrs.as_slice())].into_iter()).is_none());
        let mut sce = s;
        sce.efer |= EFER_SCE;
        assert!(watched_pages(&file, &layout, [(&sce, msrs.as_slice())].into_iter()).is_none());
        let sysenter = [kvm_msr_entry {
            index: MSR_SYSENTER_CS,
            data: 0x10,
            ..Default::default()
        }];
        assert!(watched_pages(&file, &layout, [(&s, &sysenter[..])].into_iter()).is_none());
    }
}
