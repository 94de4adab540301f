//! What the loader handed us, read from physical memory (identity mapped
//! and user-accessible): the command line and the RAM map, from either a
//! Linux zero page or a PVH hvm_start_info.

use core::ptr::read_unaligned;

use crate::abi::{BootInfo, BOOT_PROTO_LINUX64, BOOT_PROTO_PVH};

const E820_RAM: u32 = 1;
const CMDLINE_MAX: usize = 4096;
/// Our page tables map the first 4 GiB; memory above is out of reach.
pub const MAPPED_END: u64 = 1 << 32;

// Linux boot_params (Documentation/arch/x86/zero-page.rst).
const ZP_EXT_CMD_LINE_PTR: u64 = 0x0c8;
const ZP_E820_ENTRIES: u64 = 0x1e8;
const ZP_CMD_LINE_PTR: u64 = 0x228;
const ZP_E820_TABLE: u64 = 0x2d0;
const ZP_E820_MAX: usize = 128;
const E820_ENTRY_SIZE: u64 = 20;

// struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h).
const PVH_MAGIC: u32 = 0x336e_c578;
const PVH_VERSION: u64 = 4;
const PVH_CMDLINE_PADDR: u64 = 24;
const PVH_MEMMAP_PADDR: u64 = 40;
const PVH_MEMMAP_ENTRIES: u64 = 48;
const PVH_MEMMAP_ENTRY_SIZE: u64 = 24;

fn r8(addr: u64) -> u8 {
    unsafe { read_unaligned(addr as *const u8) }
}
fn r32(addr: u64) -> u32 {
    unsafe { read_unaligned(addr as *const u32) }
}
fn r64(addr: u64) -> u64 {
    unsafe { read_unaligned(addr as *const u64) }
}

/// A memory map in the loader's format: `count` entries of
/// (addr u64, size u64, type u32) every `stride` bytes from `base`.
#[derive(Clone, Copy)]
pub struct MemMap {
    base: u64,
    count: usize,
    stride: u64,
}

impl MemMap {
    fn entry(&self, i: usize) -> (u64, u64, u32) {
        let at = self.base + i as u64 * self.stride;
        (r64(at), r64(at + 8), r32(at + 16))
    }

    fn ram(self) -> impl Iterator<Item = (u64, u64)> {
        (0..self.count)
            .map(move |i| self.entry(i))
            .filter(|&(_, size, kind)| kind == E820_RAM && size > 0)
            .map(|(addr, size, _)| (addr, addr.saturating_add(size)))
    }

    pub fn ram_bytes(self) -> u64 {
        self.ram().map(|(start, end)| end - start).sum()
    }

    /// End of the RAM range holding `addr`, capped at what we map.
    pub fn ram_end_from(self, addr: u64) -> Option<u64> {
        self.ram()
            .find(|&(start, end)| start <= addr && addr < end)
            .map(|(_, end)| end.min(MAPPED_END))
    }
}

/// Bytes in MiB, rounded up: the map leaves out the EBDA and the legacy
/// hole below 1 MiB, and "127MiB" for a 128 MiB VM would mislead.
pub fn mib(bytes: u64) -> u64 {
    bytes.div_ceil(1 << 20)
}

pub struct Boot {
    pub proto: &'static str,
    pub cmdline: &'static [u8],
    pub memmap: MemMap,
}

pub fn read(info: &BootInfo) -> Result<Boot, &'static str> {
    let p = info.params;
    if p == 0 {
        return Err("the loader passed no boot parameters (RSI/EBX = 0)");
    }
    let (proto, cmdline_addr, memmap) = match info.proto {
        BOOT_PROTO_LINUX64 => {
            let cmdline =
                u64::from(r32(p + ZP_CMD_LINE_PTR)) | u64::from(r32(p + ZP_EXT_CMD_LINE_PTR)) << 32;
            let count = usize::from(r8(p + ZP_E820_ENTRIES)).min(ZP_E820_MAX);
            let map = MemMap {
                base: p + ZP_E820_TABLE,
                count,
                stride: E820_ENTRY_SIZE,
            };
            ("linux64", cmdline, map)
        }
        BOOT_PROTO_PVH => {
            if r32(p) != PVH_MAGIC {
                return Err("hvm_start_info has a bad magic");
            }
            // The memory map fields exist from version 1 on.
            let (base, count) = if r32(p + PVH_VERSION) >= 1 {
                (
                    r64(p + PVH_MEMMAP_PADDR),
                    r32(p + PVH_MEMMAP_ENTRIES) as usize,
                )
            } else {
                (0, 0)
            };
            let map = MemMap {
                base,
                count,
                stride: PVH_MEMMAP_ENTRY_SIZE,
            };
            ("pvh", r64(p + PVH_CMDLINE_PADDR), map)
        }
        _ => return Err("ring 0 passed an unknown boot protocol"),
    };
    Ok(Boot {
        proto,
        cmdline: cstr(cmdline_addr),
        memmap,
    })
}

/// The NUL-terminated string at `addr`, at most CMDLINE_MAX bytes; empty
/// for a null or unmapped pointer.
fn cstr(addr: u64) -> &'static [u8] {
    if addr == 0 || addr >= MAPPED_END - CMDLINE_MAX as u64 {
        return &[];
    }
    let len = (0..CMDLINE_MAX)
        .position(|i| r8(addr + i as u64) == 0)
        .unwrap_or(CMDLINE_MAX);
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}
