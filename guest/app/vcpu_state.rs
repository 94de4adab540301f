//! Test functions for what a reused VM must get back from the template
//! (docs/security.md, "Recycled VMs: what a reset restores"): page tables
//! built outside the boot tree, an MSR only ring 0 reaches, and the x87
//! and SSE control and data registers. Each reports what it finds first,
//! then changes it, so a clone that sees anything but the template's
//! values shows what an earlier clone left behind.

use core::fmt::Write;
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use crate::abi::{vmfork_pml4, SVC_SWAP_CR3, SVC_SWAP_KERNEL_GS_BASE};
use crate::io::service;

/// Paging-structure entry bits: present, writable, user, accessed, and
/// dirty (leaves). A and D are preset, as in ring0/boot.S, so the CPU (or
/// KVM for it) never writes them.
const TABLE: u64 = 0x27;
const LEAF: u64 = 0x67;

/// Where the built tables map their one page: PML4 slot 1 (512 GiB),
/// which the boot tables leave empty.
const ALT_VA: u64 = 1 << 39;

/// Values at the start of the two pages the built tables may map.
const MARK0: u64 = 0x3045_4741_505f_5450; // "PT_PAGE0"
const MARK1: u64 = 0x3145_4741_505f_5450; // "PT_PAGE1"

#[repr(C, align(4096))]
struct Page([u64; 512]);

/// The built tree (PML4, PDPT, PD, PT) and the two pages it can map. In
/// .data, not .bss, only to keep them in the image's own pages; they are
/// filled by [`build_page_tables`] before READY, so every clone starts
/// with the PT mapping [`PAGE0`].
static mut PML4: Page = Page([1; 512]);
static mut PDPT: Page = Page([1; 512]);
static mut PD: Page = Page([1; 512]);
static mut PT: Page = Page([1; 512]);
static mut PAGE0: Page = Page([MARK0; 512]);
static mut PAGE1: Page = Page([MARK1; 512]);

/// Builds the tree before READY: the boot PML4's entries (so code, stacks
/// and the IDT stay mapped under the new CR3) plus [`ALT_VA`] -> PAGE0.
/// The template then holds page tables that its CR3 does not reach.
pub fn build_page_tables() {
    // SAFETY: only this vCPU runs, before READY; the statics are identity
    // mapped (VA = PA in the low 4 GiB, ring0/boot.S), which is what makes
    // their addresses usable as physical addresses in table entries.
    unsafe {
        let boot = &*addr_of!(vmfork_pml4);
        let (pml4, pdpt, pd, pt) = (
            &mut *addr_of_mut!(PML4),
            &mut *addr_of_mut!(PDPT),
            &mut *addr_of_mut!(PD),
            &mut *addr_of_mut!(PT),
        );
        pml4.0.copy_from_slice(boot);
        pdpt.0.fill(0);
        pd.0.fill(0);
        pt.0.fill(0);
        pml4.0[1] = addr_of!(PDPT) as u64 | TABLE;
        pdpt.0[0] = addr_of!(PD) as u64 | TABLE;
        pd.0[0] = addr_of!(PT) as u64 | TABLE;
        pt.0[0] = addr_of!(PAGE0) as u64 | LEAF;
    }
}

/// Reads [`ALT_VA`] from ring 3 under the built tables: through KVM's
/// shadow of them, which is what a stale shadow would show.
fn read_through_built_tables() -> u64 {
    let boot_cr3 = service(SVC_SWAP_CR3, addr_of!(PML4) as u64);
    // SAFETY: under the built tables ALT_VA maps PAGE0 or PAGE1, readable
    // from ring 3; the boot tables come back before anything else runs.
    let value = unsafe { read_volatile(ALT_VA as *const u64) };
    service(SVC_SWAP_CR3, boot_cr3);
    value
}

fn mark_name(value: u64) -> &'static str {
    match value {
        MARK0 => "page0",
        MARK1 => "page1",
        _ => "other",
    }
}

/// `page-table-build`: which page ALT_VA maps (a fresh clone: page0), then
/// points the PT entry at PAGE1 and reads through the tables again, so
/// KVM shadows the changed entry.
pub fn page_table_build(out: &mut Cursor) {
    let saw = read_through_built_tables();
    // SAFETY: the PT entry is a u64 in this image, identity mapped and
    // writable from ring 3; only this vCPU runs.
    unsafe { write_volatile(addr_of_mut!(PT.0[0]), addr_of!(PAGE1) as u64 | LEAF) };
    let now = read_through_built_tables();
    let _ = write!(out, "saw={} now={}", mark_name(saw), mark_name(now));
}

/// `msr-write`: IA32_KERNEL_GS_BASE as found, then a value of this
/// function's (canonical, as wrmsr requires).
pub fn msr_write(out: &mut Cursor) {
    let old = service(SVC_SWAP_KERNEL_GS_BASE, 0x0000_7e57_0000_1000);
    let _ = write!(out, "kernel_gs_base={old:#x}");
}

/// `fpu-write`: the x87 control word, MXCSR and XMM15 as found, then
/// other values (rounding toward zero, all exceptions masked, a pattern).
/// XMM15 is one the compiled code here leaves alone.
pub fn fpu_write(out: &mut Cursor) {
    let mut fcw: u16 = 0;
    let mut mxcsr: u32 = 0;
    let mut xmm = [0u64; 2];
    // SAFETY: stores of the x87 control word, MXCSR and XMM15 into locals
    // that outlive the asm; no other state changes.
    unsafe {
        core::arch::asm!(
            "fnstcw word ptr [{fcw}]",
            "stmxcsr dword ptr [{mxcsr}]",
            "movdqu xmmword ptr [{xmm}], xmm15",
            fcw = in(reg) &mut fcw,
            mxcsr = in(reg) &mut mxcsr,
            xmm = in(reg) xmm.as_mut_ptr(),
            options(nostack, preserves_flags),
        );
    }
    let _ = write!(
        out,
        "fcw={fcw:#06x} mxcsr={mxcsr:#010x} xmm15={:#018x}{:016x}",
        xmm[1], xmm[0]
    );
    let new_fcw: u16 = 0x0f7f;
    let new_mxcsr: u32 = 0x7f80;
    let pattern = [0x5eed_f00d_5eed_f00du64, 0x0123_4567_89ab_cdef];
    // SAFETY: loads the control words and XMM15 from locals; XMM15 is
    // declared clobbered, and changing the rounding mode affects no code
    // here (the guest has no floating point).
    unsafe {
        core::arch::asm!(
            "fldcw word ptr [{fcw}]",
            "ldmxcsr dword ptr [{mxcsr}]",
            "movdqu xmm15, xmmword ptr [{xmm}]",
            fcw = in(reg) &new_fcw,
            mxcsr = in(reg) &new_mxcsr,
            xmm = in(reg) pattern.as_ptr(),
            out("xmm15") _,
            options(nostack, preserves_flags),
        );
    }
}

/// `fmt::Write` into a response buffer; what does not fit is dropped.
pub struct Cursor<'a> {
    pub buf: &'a mut [u8],
    pub len: usize,
}

impl Write for Cursor<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}
