//! Register state for the first instruction of each boot protocol.

use kvm_bindings::{kvm_regs, kvm_sregs};

use super::gdt::{self, CODE32_SELECTOR, CODE64_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use super::loader::Entry;

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;

pub fn boot_regs(entry: Entry) -> kvm_regs {
    match entry {
        Entry::Linux64 { rip } => kvm_regs {
            rip,
            rflags: RFLAGS_RESERVED,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
        Entry::Pvh { rip } => kvm_regs {
            rip,
            rflags: RFLAGS_RESERVED,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
    }
}

/// Fills in segments, descriptor tables and control registers, keeping the
/// fields KVM initialised (APIC base, interrupt bitmap) from `current`.
pub fn boot_sregs(entry: Entry, current: &kvm_sregs) -> kvm_sregs {
    let mut sregs = *current;
    let code_selector = match entry {
        Entry::Linux64 { .. } => CODE64_SELECTOR,
        Entry::Pvh { .. } => CODE32_SELECTOR,
    };
    let data = gdt::segment(DATA_SELECTOR);
    sregs.cs = gdt::segment(code_selector);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(TSS_SELECTOR);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt::boot_gdt().len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    match entry {
        Entry::Linux64 { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        Entry::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    sregs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_entry_has_paging_and_zero_page() {
        let e = Entry::Linux64 { rip: 0x10_0000 };
        let r = boot_regs(e);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x10_0000, ZERO_PAGE_START, 2));
        let s = boot_sregs(e, &kvm_sregs::default());
        assert_eq!(s.cs.l, 1);
        assert_eq!(s.cr3, PML4_START);
        assert!(s.cr0 & CR0_PG != 0 && s.efer & EFER_LMA != 0);
    }

    #[test]
    fn pvh_entry_is_protected_mode_without_paging() {
        let e = Entry::Pvh { rip: 0x10_0040 };
        let r = boot_regs(e);
        assert_eq!(r.rbx, PVH_INFO_START);
        let s = boot_sregs(e, &kvm_sregs::default());
        assert_eq!((s.cs.l, s.cs.db, s.cs.selector), (0, 1, CODE32_SELECTOR));
        assert_eq!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.efer, 0);
    }
}
