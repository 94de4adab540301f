//! Identity page tables for kernels entered directly in 64-bit mode. Long
//! mode cannot run without paging, so the VMM provides the first mapping;
//! kernels replace it with their own.

#[cfg(test)]
use super::layout::PML4_START;
use super::layout::{PDPT_START, PD_COUNT, PD_START};

const PRESENT_WRITABLE: u64 = 0x3;
const PAGE_SIZE_2M: u64 = 0x80;

/// How much the tables map: PD_COUNT page directories of 512 × 2 MiB.
pub const IDENTITY_MAPPED_BYTES: u64 = PD_COUNT * 512 * (2 << 20);

/// The PML4, PDPT and page directories as one contiguous image to be
/// written at `PML4_START`, identity-mapping the first 4 GiB with 2 MiB pages.
pub fn identity_tables() -> Vec<u8> {
    let table_entries = 512usize;
    let mut entries = vec![0u64; table_entries * (2 + PD_COUNT as usize)];
    entries[0] = PDPT_START | PRESENT_WRITABLE;
    for pd in 0..PD_COUNT {
        entries[table_entries + pd as usize] = (PD_START + pd * 0x1000) | PRESENT_WRITABLE;
        for i in 0..512u64 {
            let index = table_entries * (2 + pd as usize) + i as usize;
            entries[index] = ((pd * 512 + i) << 21) | PRESENT_WRITABLE | PAGE_SIZE_2M;
        }
    }
    entries.iter().flat_map(|e| e.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(image: &[u8], addr: u64) -> u64 {
        let off = (addr - PML4_START) as usize;
        u64::from_le_bytes(image[off..off + 8].try_into().expect("8 bytes"))
    }

    /// Walks the tables like the MMU would.
    fn translate(image: &[u8], va: u64) -> Option<u64> {
        let pml4e = entry(image, PML4_START + ((va >> 39) & 511) * 8);
        if pml4e & 1 == 0 {
            return None;
        }
        let pdpte = entry(image, (pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & 1 == 0 {
            return None;
        }
        let pde = entry(image, (pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & 1 == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !0x1f_ffff) + (va & 0x1f_ffff))
    }

    #[test]
    fn tables_are_contiguous_and_fit_before_the_cmdline() {
        let image = identity_tables();
        assert_eq!(
            image.len() as u64,
            PD_START + PD_COUNT * 0x1000 - PML4_START
        );
        assert!(PML4_START + image.len() as u64 <= super::super::layout::CMDLINE_START);
    }

    #[test]
    fn first_4gib_is_identity_mapped() {
        let image = identity_tables();
        for va in [
            0u64,
            0x1000,
            0x10_0000,
            0x3fff_ffff,
            0xfee0_0000,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&image, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&image, IDENTITY_MAPPED_BYTES), None);
    }
}
