//! What the Wasm guest asks of the CPU and the loader beyond the default
//! guest's modules: the initrd, a stack switch, CPUID and RDRAND.

use core::arch::asm;
use core::arch::x86_64::{__cpuid, CpuidResult};
use core::ptr::read_unaligned;

use crate::abi::{BootInfo, BOOT_PROTO_LINUX64};
use crate::boot::MAPPED_END;
use crate::job::Job;

// Linux boot_params (Documentation/arch/x86/zero-page.rst).
const ZP_EXT_RAMDISK_IMAGE: u64 = 0x0c0;
const ZP_EXT_RAMDISK_SIZE: u64 = 0x0c4;
const ZP_RAMDISK_IMAGE: u64 = 0x218;
const ZP_RAMDISK_SIZE: u64 = 0x21c;

fn zp32(zero_page: u64, offset: u64) -> u64 {
    // SAFETY: boot::read accepted the zero page, which is identity-mapped
    // RAM the VMM wrote below the image; nothing writes it after boot.
    u64::from(unsafe { read_unaligned((zero_page + offset) as *const u32) })
}

/// (address, size) of the initrd the VMM loaded, when there is one and it
/// lies within the memory the guest maps. Only the 64-bit Linux entry
/// records one (vmfork refuses --initrd with PVH).
pub fn initrd(info: &BootInfo) -> Option<(u64, u64)> {
    if info.proto != BOOT_PROTO_LINUX64 || info.params == 0 {
        return None;
    }
    let p = info.params;
    let addr = zp32(p, ZP_RAMDISK_IMAGE) | zp32(p, ZP_EXT_RAMDISK_IMAGE) << 32;
    let size = zp32(p, ZP_RAMDISK_SIZE) | zp32(p, ZP_EXT_RAMDISK_SIZE) << 32;
    let end = addr.checked_add(size)?;
    (addr != 0 && size != 0 && end <= MAPPED_END && addr >= info.image_end).then_some((addr, size))
}

/// Holds the call [`call_on_stack`] makes, on the old stack (which is
/// never returned to, so it stays valid).
type Call = Option<(fn(Job) -> !, Job)>;

extern "C" fn trampoline(call: *mut Call) -> ! {
    // SAFETY: `call` points into call_on_stack's frame, which lives on
    // since that function never returns; only this function reads it.
    let taken = unsafe { (*call).take() };
    match taken {
        Some((f, job)) => f(job),
        None => unreachable!("call_on_stack's call is taken once"),
    }
}

/// Calls `f(job)` with the stack pointer at `top` (16-byte aligned).
pub fn call_on_stack(top: u64, f: fn(Job) -> !, job: Job) -> ! {
    let mut call: Call = Some((f, job));
    // SAFETY: `top` is the end of memory heap::init set aside for this
    // stack alone; the trampoline never returns, so no frame of the old
    // stack is popped into. RBP = 0 ends frame-pointer walks there.
    unsafe {
        asm!(
            "mov rsp, {top}",
            "xor ebp, ebp",
            "call {trampoline}",
            top = in(reg) top,
            trampoline = sym trampoline,
            in("rdi") &raw mut call,
            options(noreturn),
        )
    }
}

pub fn cpuid(leaf: u32) -> CpuidResult {
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86-64 CPU and only reads.
    unsafe {
        __cpuid(leaf)
    }
}

/// TSC ticks per second as the CPU describes itself: leaf 0x15 (crystal
/// ratio), else leaf 0x16's base frequency. Under KVM these are the host
/// CPU's values passed through, when present at all (on the PVM host they
/// are not), so clock.rs prefers the hypervisor's leaf and the PIT.
pub fn cpu_leaf_tsc_hz() -> Option<u64> {
    let max = cpuid(0).eax;
    if max >= 0x15 {
        let l = cpuid(0x15);
        if l.eax != 0 && l.ebx != 0 && l.ecx != 0 {
            return Some(u64::from(l.ecx) * u64::from(l.ebx) / u64::from(l.eax));
        }
    }
    if max >= 0x16 {
        let mhz = cpuid(0x16).eax & 0xffff;
        if mhz != 0 {
            return Some(u64::from(mhz) * 1_000_000);
        }
    }
    None
}

/// Whether RDRAND exists (CPUID.1:ECX bit 30).
pub fn has_rdrand() -> bool {
    cpuid(1).ecx & (1 << 30) != 0
}

/// One RDRAND draw, retried a few times as Intel advises; None if the
/// generator keeps failing.
pub fn rdrand() -> Option<u64> {
    for _ in 0..10 {
        let value: u64;
        let ok: u8;
        // SAFETY: RDRAND only writes the named registers; callers check
        // has_rdrand first.
        unsafe {
            asm!("rdrand {v}", "setc {ok}", v = out(reg) value, ok = out(reg_byte) ok,
                 options(nomem, nostack))
        };
        if ok != 0 {
            return Some(value);
        }
    }
    None
}
