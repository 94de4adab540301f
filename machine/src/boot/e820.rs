//! The guest's physical memory map, shared by every boot protocol: Linux
//! reads it from the zero page, PVH kernels from the start_info memmap, and
//! our guest from either.

use super::layout::{
    CLONE_INFO_START, E820_PMEM, E820_RAM, E820_RESERVED, HIMEM_START, LOW_RAM_END, MMIO_GAP_END,
    MMIO_GAP_START,
};
use super::mptable::MPTABLE_LOWEST;

/// Low RAM ends at the page holding the lowest byte the MP table can use
/// (it grows down from the EBDA with the vCPU count).
const LOW_RAM_TOP: u64 = MPTABLE_LOWEST & !0xfff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// Guest RAM as (start, size) ranges: one range below the 32-bit MMIO gap
/// and, for guests larger than the gap start, the remainder above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// First guest-physical address past all RAM.
pub fn ram_end(mem_size: u64) -> u64 {
    ram_ranges(mem_size)
        .last()
        .map_or(0, |&(start, size)| start + size)
}

/// The e820 map for `mem_size` bytes of RAM plus an optional persistent
/// memory range `(addr, size)`. The MP table area up to the EBDA's end and
/// the legacy VGA/BIOS hole are left out of RAM so no kernel allocates over
/// them.
pub fn memory_map(mem_size: u64, pmem: Option<(u64, u64)>) -> Vec<E820Entry> {
    // The clone-info page is the VMM's, written on every restore.
    let clone_info_end = CLONE_INFO_START + 4096;
    let mut map = vec![
        E820Entry {
            addr: 0,
            size: CLONE_INFO_START,
            kind: E820_RAM,
        },
        E820Entry {
            addr: CLONE_INFO_START,
            size: 4096,
            kind: E820_RESERVED,
        },
        E820Entry {
            addr: clone_info_end,
            size: LOW_RAM_TOP - clone_info_end,
            kind: E820_RAM,
        },
        E820Entry {
            addr: LOW_RAM_TOP,
            size: LOW_RAM_END - LOW_RAM_TOP,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        // Below 1 MiB only the part before the EBDA is RAM (listed above).
        let low = start.max(HIMEM_START);
        let end = start + size;
        if end > low {
            map.push(E820Entry {
                addr: low,
                size: end - low,
                kind: E820_RAM,
            });
        }
    }
    if let Some((addr, size)) = pmem {
        map.push(E820Entry {
            addr,
            size,
            kind: E820_PMEM,
        });
    }
    map
}

/// Marks `start..end` reserved, splitting the RAM entries it covers, so the
/// guest's kernel never allocates it. For a Linux guest the VMM reserves
/// the function mailbox this way (docs/linux-guest.md): its agent reaches
/// it through `/dev/mem`, which refuses RAM the kernel owns. The default
/// guest reserves the mailbox itself when it has a function.
pub fn reserve(map: &mut Vec<E820Entry>, start: u64, end: u64) {
    let mut out = Vec::with_capacity(map.len() + 2);
    for e in map.drain(..) {
        let e_end = e.addr + e.size;
        if e.kind != E820_RAM || e_end <= start || e.addr >= end {
            out.push(e);
            continue;
        }
        if e.addr < start {
            out.push(E820Entry {
                size: start - e.addr,
                ..e
            });
        }
        let (lo, hi) = (e.addr.max(start), e_end.min(end));
        out.push(E820Entry {
            addr: lo,
            size: hi - lo,
            kind: E820_RESERVED,
        });
        if e_end > end {
            out.push(E820Entry {
                addr: end,
                size: e_end - end,
                kind: E820_RAM,
            });
        }
    }
    *map = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn small_guest_has_low_and_high_ram_and_reserved_ebda() {
        let map = memory_map(128 * MIB, None);
        assert_eq!(map.len(), 5);
        assert_eq!(
            map[0],
            E820Entry {
                addr: 0,
                size: CLONE_INFO_START,
                kind: E820_RAM
            }
        );
        assert_eq!(map[1].kind, E820_RESERVED);
        assert_eq!(map[2].addr + map[2].size, LOW_RAM_TOP);
        assert_eq!(map[3].kind, E820_RESERVED);
        assert_eq!(
            map[4],
            E820Entry {
                addr: HIMEM_START,
                size: 128 * MIB - HIMEM_START,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let map = memory_map(4 * GIB, None);
        let ram: Vec<_> = map.iter().filter(|e| e.kind == E820_RAM).collect();
        assert_eq!(ram.len(), 4);
        assert_eq!(ram[2].addr + ram[2].size, MMIO_GAP_START);
        assert_eq!(ram[3].addr, MMIO_GAP_END);
        assert_eq!(ram[3].size, GIB);
        assert_eq!(ram_end(4 * GIB), 5 * GIB);
    }

    #[test]
    fn a_reserved_range_splits_ram() {
        let mut map = memory_map(128 * MIB, None);
        let ram_before: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        reserve(&mut map, 4 * MIB, 8 * MIB);
        let ram_after: u64 = map
            .iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram_before - ram_after, 4 * MIB);
        assert!(map.contains(&E820Entry {
            addr: 4 * MIB,
            size: 4 * MIB,
            kind: E820_RESERVED
        }));
        assert!(map.contains(&E820Entry {
            addr: HIMEM_START,
            size: 3 * MIB,
            kind: E820_RAM
        }));
        assert!(map.contains(&E820Entry {
            addr: 8 * MIB,
            size: 120 * MIB,
            kind: E820_RAM
        }));
    }

    #[test]
    fn pmem_is_listed_with_type_12() {
        let map = memory_map(256 * MIB, Some((GIB, 32 * MIB)));
        let last = map.last().copied();
        assert_eq!(
            last,
            Some(E820Entry {
                addr: GIB,
                size: 32 * MIB,
                kind: 12
            })
        );
    }

    #[test]
    fn no_entries_overlap() {
        for mem in [2 * MIB, 128 * MIB, 3 * GIB, 3 * GIB + 1, 6 * GIB] {
            let mut map = memory_map(mem, Some((8 * GIB, MIB)));
            map.sort_by_key(|e| e.addr);
            for pair in map.windows(2) {
                assert!(
                    pair[0].addr + pair[0].size <= pair[1].addr,
                    "{mem}: {pair:?}"
                );
            }
        }
    }
}
