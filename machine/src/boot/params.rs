//! Boot parameters the VMM hands the kernel: the Linux zero page
//! (`boot_params`) and the PVH `hvm_start_info`.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::e820::E820Entry;
use super::layout::{CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START, ZERO_PAGE_START};
use crate::error::{Error, Result};

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;

/// Builds the zero page. `header` is the bzImage's own setup header when
/// there is one; for ELF kernels we synthesise the fields Linux checks.
pub fn zero_page(
    header: Option<setup_header>,
    cmdline_len: usize,
    map: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<boot_params> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if map.len() > params.e820_table.len() {
        return Err(Error::GuestMemory(format!(
            "{} e820 entries exceed the zero page's {}",
            map.len(),
            params.e820_table.len()
        )));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    Ok(params)
}

pub fn write_zero_page(mem: &GuestMemoryMmap, params: &boot_params) -> Result<()> {
    let boot = BootParams::new(params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams(&boot, mem)
        .map_err(|e| Error::GuestMemory(format!("writing zero page: {e}")))
}

pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    map: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    if initrd.is_some() {
        // hvm_modlist support is small but untested here; refuse rather than
        // hand a kernel a half-described module.
        return Err(Error::InvalidArgument(
            "--initrd with --boot-protocol pvh is not supported; use the 64-bit entry".into(),
        ));
    }
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    let entries: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut boot = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    boot.set_sections(&entries, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams(&boot, mem)
        .map_err(|e| Error::GuestMemory(format!("writing PVH start info: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::e820::memory_map;

    #[test]
    fn zero_page_for_elf_has_magic_cmdline_and_e820() {
        let map = memory_map(128 << 20, None);
        let p = zero_page(None, 42, &map, Some((0x700_0000, 0x1000))).expect("zero page");
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 42);
        assert_eq!({ p.hdr.ramdisk_image }, 0x700_0000);
        assert_eq!(usize::from(p.e820_entries), map.len());
        let count = usize::from(p.e820_entries);
        assert!(p.e820_table[..count]
            .iter()
            .any(|e| e.addr == 0x10_0000 && e.r#type == 1));
    }

    #[test]
    fn zero_page_keeps_the_bzimage_header() {
        let header = setup_header {
            version: 0x20f,
            ..Default::default()
        };
        let p = zero_page(Some(header), 1, &memory_map(64 << 20, None), None).expect("zero page");
        assert_eq!({ p.hdr.version }, 0x20f);
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
    }

    #[test]
    fn too_many_e820_entries_is_an_error() {
        let map = vec![
            E820Entry {
                addr: 0,
                size: 1,
                kind: 1
            };
            200
        ];
        assert!(zero_page(None, 1, &map, None).is_err());
    }
}
