//! The boot GDT the VMM installs before the first instruction, and the
//! matching hidden segment state KVM needs in `kvm_sregs`.

use kvm_bindings::kvm_segment;

/// Selectors. 0x10/0x18 are Linux's `__BOOT_CS`/`__BOOT_DS`, which its
/// 64-bit boot protocol expects; 0x08 is a flat 32-bit code segment for the
/// PVH entry, which starts in protected mode.
pub const CODE32_SELECTOR: u16 = 0x08;
pub const CODE64_SELECTOR: u16 = 0x10;
pub const DATA_SELECTOR: u16 = 0x18;
pub const TSS_SELECTOR: u16 = 0x20;

/// Access/flags words: high nibble = G, D/B, L, AVL; low byte = P, DPL, S, type.
const CODE32_FLAGS: u16 = 0xc09b;
const CODE64_FLAGS: u16 = 0xa09b;
const DATA_FLAGS: u16 = 0xc093;
/// A busy 64-bit TSS: VMX refuses to enter a guest whose TR is not busy.
const TSS_FLAGS: u16 = 0x008b;

/// Encodes one 8-byte descriptor.
pub const fn descriptor(flags: u16, base: u32, limit: u32) -> u64 {
    let base = base as u64;
    let limit = limit as u64;
    let flags = flags as u64;
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The boot GDT, indexed by selector / 8.
pub fn boot_gdt() -> [u64; 5] {
    [
        0,
        descriptor(CODE32_FLAGS, 0, 0xfffff),
        descriptor(CODE64_FLAGS, 0, 0xfffff),
        descriptor(DATA_FLAGS, 0, 0xfffff),
        descriptor(TSS_FLAGS, 0, 0xfffff),
    ]
}

/// The hidden-part view of a descriptor, as KVM_SET_SREGS wants it.
pub fn segment(selector: u16) -> kvm_segment {
    let entry = boot_gdt()[usize::from(selector >> 3)];
    let flags = ((entry >> 40) & 0xf0ff) as u16;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = (flags >> 15) & 1 == 1;
    let base = ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000);
    kvm_segment {
        base,
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: granular as u8,
        avl: ((flags >> 12) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code64_descriptor_is_the_well_known_value() {
        assert_eq!(descriptor(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(descriptor(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(descriptor(CODE32_FLAGS, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
    }

    #[test]
    fn segments_decode_back() {
        let cs = segment(CODE64_SELECTOR);
        assert_eq!((cs.l, cs.db, cs.type_, cs.present, cs.s), (1, 0, 0xb, 1, 1));
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(CODE32_SELECTOR);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        let tss = segment(TSS_SELECTOR);
        assert_eq!((tss.s, tss.type_), (0, 0xb));
    }

    #[test]
    fn base_and_limit_round_trip() {
        let d = descriptor(DATA_FLAGS & 0x7fff, 0x1234_5678, 0xabcde);
        let base = ((d >> 16) & 0xff_ffff) | ((d >> 32) & 0xff00_0000);
        let limit = (d & 0xffff) | ((d >> 32) & 0xf_0000);
        assert_eq!((base, limit), (0x1234_5678, 0xabcde));
    }
}
