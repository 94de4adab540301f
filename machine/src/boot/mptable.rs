//! Intel MultiProcessor Specification 1.4 tables, so that an SMP guest
//! without ACPI finds its CPUs, its IOAPIC and its ISA interrupt wiring.
//!
//! Linux looks for the floating pointer structure ("_MP_") in the last KiB
//! below 640 KiB, among other places (`smp_scan_config(639 * 0x400, 0x400)`
//! in arch/x86/kernel/mpparse.c), so it goes at [`EBDA_START`]. The
//! configuration table it points to may live anywhere in memory; it needs
//! 5.2 KiB for 254 vCPUs, more than the 1 KiB between the EBDA and
//! 0xa0000, so it is placed directly *below* the floating pointer, growing
//! down with the vCPU count:
//!
//! ```text
//! config_start(n) .. EBDA_START   configuration table ("PCMP"), 16-aligned
//! EBDA_START .. EBDA_START + 16   floating pointer ("_MP_")
//! ```
//!
//! Up to 143 vCPUs the table stays above 0x9f000, the last 4 KiB below
//! 640 KiB that Linux reserves by itself (`reserve_bios_regions`); for any
//! count Linux also reserves the table once it finds it. The e820 map
//! should still keep [`MPTABLE_LOWEST`]..0xa0000 out of RAM so that no
//! other guest reuses it.
//!
//! Interrupt wiring: ISA IRQ n goes to IOAPIC pin n for n in 0..=15, IRQ0
//! included. A PC chipset wires the 8254 to pin 2 and firmware says so with
//! an IRQ0 -> INTIN2 entry, but KVM's default GSI routing (which vmfork
//! keeps: it never calls KVM_SET_GSI_ROUTING) sends GSI 0, where the
//! in-kernel PIT fires, to IOAPIC pin 0 (`default_routing` in
//! arch/x86/kvm/irq_comm.c, moved to irq.c in newer kernels). Telling Linux "pin 2" would make it program a pin
//! that never fires and fall back to its timer workarounds.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::boot::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, LOW_RAM_END};
use crate::error::{Error, Result};

/// APIC IDs are 8 bits and 0xff is the broadcast ID; the IOAPIC takes the
/// ID after the last CPU, so 254 CPUs is the most this table can describe.
pub const MAX_CPUS: u8 = 254;

/// Lowest guest-physical address the MP table uses, at [`MAX_CPUS`].
pub const MPTABLE_LOWEST: u64 = EBDA_START - align16(config_len(MAX_CPUS as usize) as u64);

const MPF_SIGNATURE: &[u8; 4] = b"_MP_";
const MPC_SIGNATURE: &[u8; 4] = b"PCMP";
/// Specification revision 1.4, in both structures.
const SPEC_REV: u8 = 4;
const OEM_ID: &[u8; 8] = b"VMFORK  ";
const PRODUCT_ID: &[u8; 12] = b"PC-LITE     ";

const MPF_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const PROCESSOR_LEN: usize = 20;
/// Bus, IOAPIC, I/O interrupt and local interrupt entries are all 8 bytes.
const SHORT_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1 << 0;
const CPU_BOOTSTRAP: u8 = 1 << 1;
/// KVM's local APIC reports version 0x14 (an integrated xAPIC).
const LAPIC_VERSION: u8 = 0x14;
/// Family 6, model 0, stepping 0 in CPUID.1:EAX layout. Informational only:
/// Linux reads CPUID itself and ignores this field.
const CPU_SIGNATURE: u32 = 6 << 8;
/// CPUID.1:EDX FPU (bit 0) and APIC (bit 9), as the spec asks this field
/// to mirror.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const ISA_BUS_ID: u8 = 0;
const ISA_BUS_TYPE: &[u8; 6] = b"ISA   ";
/// KVM's in-kernel IOAPIC is version 0x11 with 24 pins.
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_USABLE: u8 = 1 << 0;
/// Legacy ISA IRQs described to the guest, each on the IOAPIC pin of the
/// same number.
const ISA_IRQS: u8 = 16;

const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus": ISA means active-high, edge.
const INT_FLAGS_CONFORM: u16 = 0;
const ALL_LAPICS: u8 = 0xff;

const fn config_len(num_cpus: usize) -> usize {
    HEADER_LEN
        + num_cpus * PROCESSOR_LEN
        + SHORT_ENTRY_LEN // ISA bus
        + SHORT_ENTRY_LEN // IOAPIC
        + ISA_IRQS as usize * SHORT_ENTRY_LEN
        + 2 * SHORT_ENTRY_LEN // LINT0, LINT1
}

const fn align16(n: u64) -> u64 {
    (n + 15) & !15
}

/// Writes the floating pointer at [`EBDA_START`] and the configuration
/// table below it for `num_cpus` vCPUs with APIC IDs 0..num_cpus, vCPU 0
/// the bootstrap processor.
pub fn setup_mptable<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<()> {
    let (config_start, config) = config_table(num_cpus)?;
    let pointer = floating_pointer(config_start)?;
    write(mem, config_start, &config)?;
    write(mem, EBDA_START, &pointer)
}

fn write<M: GuestMemory>(mem: &M, addr: u64, bytes: &[u8]) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr)).map_err(|e| {
        Error::MpTable(format!(
            "writing {} bytes at {addr:#x} (is guest RAM at least 640 KiB?): {e}",
            bytes.len()
        ))
    })
}

/// The configuration table and the address it goes at.
fn config_table(num_cpus: u8) -> Result<(u64, Vec<u8>)> {
    if num_cpus == 0 {
        return Err(Error::MpTable("no vCPUs to describe".into()));
    }
    if num_cpus > MAX_CPUS {
        return Err(Error::MpTable(format!(
            "{num_cpus} vCPUs, at most {MAX_CPUS} fit in 8-bit APIC IDs beside the IOAPIC"
        )));
    }
    let len = config_len(num_cpus as usize);
    let start = EBDA_START - align16(len as u64);
    // Holds by construction for up to MAX_CPUS; checked so that a change to
    // the layout constants fails here rather than overwriting the guest.
    if start < MPTABLE_LOWEST || EBDA_START + MPF_LEN as u64 > LOW_RAM_END {
        return Err(Error::MpTable(format!(
            "{len} bytes for {num_cpus} vCPUs do not fit below {LOW_RAM_END:#x}"
        )));
    }
    let ioapic_id = num_cpus; // the first ID after the CPUs'
    let entries = num_cpus as u16 + 2 + ISA_IRQS as u16 + 2;

    let mut t = Vec::with_capacity(len);
    t.extend_from_slice(MPC_SIGNATURE);
    t.extend_from_slice(&(len as u16).to_le_bytes());
    t.push(SPEC_REV);
    t.push(0); // checksum, set below
    t.extend_from_slice(OEM_ID);
    t.extend_from_slice(PRODUCT_ID);
    t.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    t.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    t.extend_from_slice(&entries.to_le_bytes());
    t.extend_from_slice(&(APIC_ADDR as u32).to_le_bytes());
    t.extend_from_slice(&0u16.to_le_bytes()); // no extended table
    t.push(0); // extended table checksum
    t.push(0); // reserved

    for apic_id in 0..num_cpus {
        let bsp = if apic_id == 0 { CPU_BOOTSTRAP } else { 0 };
        t.extend_from_slice(&[ENTRY_PROCESSOR, apic_id, LAPIC_VERSION, CPU_ENABLED | bsp]);
        t.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        t.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        t.extend_from_slice(&[0; 8]);
    }
    t.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    t.extend_from_slice(ISA_BUS_TYPE);
    t.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, IOAPIC_USABLE]);
    t.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    for irq in 0..ISA_IRQS {
        t.extend_from_slice(&interrupt_entry(
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            irq,
            ioapic_id,
            irq,
        ));
    }
    // The 8259 reaches every CPU through LINT0 in virtual-wire mode and NMIs
    // arrive on LINT1, matching the LVT setup the vCPUs get at boot.
    t.extend_from_slice(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_EXTINT,
        0,
        ALL_LAPICS,
        0,
    ));
    t.extend_from_slice(&interrupt_entry(
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        ALL_LAPICS,
        1,
    ));
    debug_assert_eq!(t.len(), len);
    t[7] = checksum(&t);
    Ok((start, t))
}

/// An I/O (to an IOAPIC pin) or local (to a LAPIC LINT pin) interrupt
/// assignment entry; both share one layout.
fn interrupt_entry(kind: u8, int_type: u8, source_irq: u8, dest_id: u8, dest_pin: u8) -> [u8; 8] {
    let [f0, f1] = INT_FLAGS_CONFORM.to_le_bytes();
    [
        kind, int_type, f0, f1, ISA_BUS_ID, source_irq, dest_id, dest_pin,
    ]
}

fn floating_pointer(config_start: u64) -> Result<[u8; MPF_LEN]> {
    let physptr = u32::try_from(config_start)
        .map_err(|_| Error::MpTable(format!("table address {config_start:#x} above 4 GiB")))?;
    let mut p = [0u8; MPF_LEN];
    p[0..4].copy_from_slice(MPF_SIGNATURE);
    p[4..8].copy_from_slice(&physptr.to_le_bytes());
    p[8] = 1; // length in 16-byte paragraphs
    p[9] = SPEC_REV;
    // p[11] feature byte 1 = 0: a configuration table is present (no
    // default configuration). p[12] bit 7 (IMCRP) = 0: virtual-wire mode,
    // so Linux does not poke the IMCR at ports 0x22/0x23, which pc-lite
    // does not emulate.
    p[10] = checksum(&p);
    Ok(p)
}

/// The byte that makes `bytes` (with that byte still zero) sum to 0 mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, &b| sum.wrapping_add(b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryMmap;

    use super::*;

    fn ram(size: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    struct Parsed {
        processors: Vec<(u8, u8)>, // (APIC ID, flags)
        ioapics: Vec<(u8, u8, u32)>,
        io_interrupts: Vec<[u8; 8]>,
        local_interrupts: Vec<[u8; 8]>,
        buses: Vec<Vec<u8>>,
        lapic: u32,
        range: (u64, u64),
    }

    /// Finds and checks the tables the way Linux's mpparse.c does: scan the
    /// last KiB below 640 KiB for an aligned "_MP_", verify both checksums,
    /// then walk entries by type until the table's length.
    fn parse(mem: &GuestMemoryMmap) -> Parsed {
        let mut scan = [0u8; 1024];
        mem.read_slice(&mut scan, GuestAddress(639 * 1024)).unwrap();
        let at = (0..1024)
            .step_by(16)
            .find(|&i| &scan[i..i + 4] == b"_MP_")
            .expect("no _MP_ in the last KiB below 640K");
        let mpf = &scan[at..at + 16];
        assert_eq!((mpf[8], mpf[9]), (1, 4), "length, spec rev");
        assert_eq!(sum(mpf), 0, "floating pointer checksum");
        assert_eq!(mpf[11..16], [0; 5], "feature bytes");
        let physptr = u32_at(mpf, 4) as u64;
        let mut header = [0u8; HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(physptr)).unwrap();
        assert_eq!(&header[0..4], b"PCMP");
        assert_eq!(header[6], 4, "spec rev");
        let len = u16_at(&header, 4) as usize;
        let mut t = vec![0u8; len];
        mem.read_slice(&mut t, GuestAddress(physptr)).unwrap();
        assert_eq!(sum(&t), 0, "configuration table checksum");
        let mut p = Parsed {
            processors: vec![],
            ioapics: vec![],
            io_interrupts: vec![],
            local_interrupts: vec![],
            buses: vec![],
            lapic: u32_at(&t, 36),
            range: (physptr, physptr + len as u64),
        };
        let mut off = HEADER_LEN;
        let mut count = 0;
        while off < len {
            let e = &t[off..];
            off += match e[0] {
                0 => {
                    p.processors.push((e[1], e[3]));
                    assert_eq!(e[2], LAPIC_VERSION);
                    20
                }
                1 => {
                    assert_eq!(e[1], 0);
                    p.buses.push(e[2..8].to_vec());
                    8
                }
                2 => {
                    p.ioapics.push((e[1], e[2], u32_at(e, 4)));
                    assert_eq!(e[3] & 1, 1, "IOAPIC usable");
                    8
                }
                3 => {
                    p.io_interrupts.push(e[..8].try_into().unwrap());
                    8
                }
                4 => {
                    p.local_interrupts.push(e[..8].try_into().unwrap());
                    8
                }
                other => panic!("unknown entry type {other} at offset {off}"),
            };
            count += 1;
        }
        assert_eq!(off, len, "entries overrun the table length");
        assert_eq!(count, u16_at(&t, 34) as usize, "entry count");
        p
    }

    #[test]
    fn one_cpu_table_is_valid_and_fits() {
        let mem = ram(1 << 20);
        setup_mptable(&mem, 1).unwrap();
        let p = parse(&mem);
        assert_eq!(p.processors, vec![(0, CPU_ENABLED | CPU_BOOTSTRAP)]);
        assert_eq!(p.lapic, 0xfee0_0000);
        assert_eq!(p.ioapics, vec![(1, 0x11, 0xfec0_0000)]);
        assert_eq!(p.buses, vec![b"ISA   ".to_vec()]);
        assert!(p.range.1 <= EBDA_START && p.range.0 >= MPTABLE_LOWEST);
    }

    #[test]
    fn one_processor_entry_per_cpu_with_bsp_only_on_cpu_0() {
        for n in [2u8, 4, 40, 41, 128] {
            let mem = ram(1 << 20);
            setup_mptable(&mem, n).unwrap();
            let p = parse(&mem);
            assert_eq!(p.processors.len(), n as usize);
            for (i, &(apic_id, flags)) in p.processors.iter().enumerate() {
                assert_eq!(apic_id as usize, i);
                assert_eq!(flags & CPU_ENABLED, CPU_ENABLED);
                assert_eq!(flags & CPU_BOOTSTRAP != 0, i == 0, "BSP flag on cpu {i}");
            }
            assert_eq!(p.ioapics[0].0, n, "IOAPIC takes the ID after the CPUs");
        }
    }

    #[test]
    fn isa_irqs_map_to_the_same_pin_and_lints_are_extint_and_nmi() {
        let mem = ram(1 << 20);
        setup_mptable(&mem, 3).unwrap();
        let p = parse(&mem);
        assert_eq!(p.io_interrupts.len(), 16);
        for (irq, e) in p.io_interrupts.iter().enumerate() {
            // type 3, INT, conforming flags, ISA bus, IRQ n -> IOAPIC 3 pin n
            assert_eq!(*e, [3, 0, 0, 0, 0, irq as u8, 3, irq as u8]);
        }
        assert_eq!(
            p.local_interrupts,
            vec![[4, 3, 0, 0, 0, 0, 0xff, 0], [4, 1, 0, 0, 0, 0, 0xff, 1]]
        );
    }

    #[test]
    fn largest_table_fits_below_640k() {
        let mem = ram(1 << 20);
        setup_mptable(&mem, MAX_CPUS).unwrap();
        let p = parse(&mem);
        assert_eq!(p.processors.len(), 254);
        assert_eq!(p.range.1 - p.range.0, 5284);
        assert_eq!(p.range.0, MPTABLE_LOWEST);
        const { assert!(MPTABLE_LOWEST >= 0x9e000 && EBDA_START + 16 <= LOW_RAM_END) };
        // Nothing above the floating pointer is touched.
        let mut above = [0xaau8; 1024 - 16];
        mem.read_slice(&mut above, GuestAddress(EBDA_START + 16))
            .unwrap();
        assert!(above.iter().all(|&b| b == 0));
    }

    #[test]
    fn up_to_143_cpus_stay_in_the_last_4k_below_640k() {
        assert!(config_table(143).unwrap().0 >= 0x9f000);
        assert!(config_table(144).unwrap().0 < 0x9f000);
    }

    #[test]
    fn zero_or_too_many_cpus_is_an_error() {
        let mem = ram(1 << 20);
        for n in [0u8, 255] {
            let e = setup_mptable(&mem, n).unwrap_err();
            assert!(matches!(e, Error::MpTable(_)), "{n}: {e:?}");
        }
        let mut probe = [0u8; 16];
        mem.read_slice(&mut probe, GuestAddress(EBDA_START))
            .unwrap();
        assert_eq!(probe, [0; 16], "nothing written on error");
    }

    #[test]
    fn guest_memory_without_the_ebda_is_an_error_not_a_panic() {
        let e = setup_mptable(&ram(64 << 10), 1).unwrap_err();
        assert!(matches!(e, Error::MpTable(_)), "{e:?}");
    }

    #[test]
    fn checksum_makes_bytes_sum_to_zero() {
        for data in [&b""[..], b"\x01", b"PCMP\xff\xff\x04"] {
            let mut v = data.to_vec();
            v.push(checksum(data));
            assert_eq!(sum(&v), 0);
        }
    }
}
