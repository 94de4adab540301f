//! The plain-data state of a whole VM, as saved in a template's `state`
//! file. Every field is checked by [`MachineState::validate`] after decoding:
//! the checksum proves the file is what was written, validation proves it
//! is something vmfork could have written.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
};
use serde::{Deserialize, Serialize};

/// Limits a decoded state must respect. They are far above anything vmfork
/// writes and far below anything that could exhaust memory.
pub const MAX_VCPUS: usize = 254;
pub const MAX_CPUID_ENTRIES: usize = 256;
pub const MAX_MSRS: usize = 1024;
pub const MAX_ONE_REGS: usize = 64;
pub const MAX_ONE_REG_BYTES: usize = 256;
/// KVM_GET_XSAVE2 can return more than 4 KiB with AMX; cap generously.
pub const MAX_XSAVE_BYTES: usize = 64 * 1024;
pub const MAX_MEMORY_REGIONS: usize = 8;
pub const MAX_SERIAL_FIFO: usize = 64;
/// Each range encodes in up to ~20 bytes; this keeps a diff's state far
/// below the format's 64 MiB payload cap.
pub const MAX_DIRTY_RANGES: usize = 1 << 21;

// No PartialEq: kvm_irqchip (a C union) has none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MachineState {
    pub vm: VmState,
    #[serde(deserialize_with = "bounded::<_, _, MAX_VCPUS>")]
    pub vcpus: Vec<VcpuState>,
    pub devices: DeviceState,
    pub memory: MemoryState,
    /// The read-only persistent-memory window of a VM booted with a
    /// rootfs image; the image's bytes are not part of the state (the
    /// template's manifest names the file and its identity).
    pub pmem: Option<PmemState>,
}

/// Where a rootfs image sits in the guest: its KVM slot, guest physical
/// address and size. The slot number is recorded so a restore can prove
/// it rebuilt the same slot table the guest was saved with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PmemState {
    pub guest_addr: u64,
    pub size: u64,
    pub slot: u32,
}

/// Linux maps persistent memory in 2 MiB subsections, so vmfork only
/// accepts images (and windows) of whole 2 MiB units.
pub const PMEM_UNIT: u64 = 2 << 20;

/// Per-VM kernel state: the irqchip, PIT and kvmclock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// One vCPU, in the fields KVM exposes. Restore order is documented in
/// docs/snapshot-format.md and enforced in machine/src/persist/vcpu.rs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuState {
    pub index: u8,
    #[serde(deserialize_with = "bounded::<_, _, MAX_CPUID_ENTRIES>")]
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub tsc_khz: Option<u32>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// KVM_GET_XSAVE2 (or KVM_GET_XSAVE) region, as little-endian bytes;
    /// it also carries the legacy FPU/SSE state, so KVM_GET_FPU is not saved.
    #[serde(deserialize_with = "bounded::<_, _, MAX_XSAVE_BYTES>")]
    pub xsave: Vec<u8>,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    #[serde(deserialize_with = "bounded::<_, _, MAX_MSRS>")]
    pub msrs: Vec<kvm_msr_entry>,
    pub vcpu_events: kvm_vcpu_events,
    /// ONE_REG registers not reachable otherwise (the CET shadow-stack
    /// pointer when CET is exposed): (KVM register id, bytes).
    #[serde(deserialize_with = "bounded::<_, _, MAX_ONE_REGS>")]
    pub one_regs: Vec<(u64, Vec<u8>)>,
}

/// The 8250's registers (vm-superio's SerialState, which has no serde).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    #[serde(deserialize_with = "bounded::<_, _, MAX_SERIAL_FIFO>")]
    pub in_buffer: Vec<u8>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyPortState {
    /// The guest had signalled ready before the snapshot.
    pub ready: bool,
    /// Acknowledgements received before the snapshot.
    pub acks: u64,
    /// The guest was parked in its `in` (so its first instruction after a
    /// restore consumes `RESUMED`). When false, the snapshot caught it
    /// between commands, and the restore queues `RESUMED` for its next `in`.
    pub parked: bool,
}

/// The PCI host bridge's address latch (configuration mechanism #1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciHostState {
    pub config_address: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub serial: SerialState,
    pub ready_port: ReadyPortState,
    pub pci_host: PciHostState,
}

/// Guest RAM layout and where its bytes are. RAM region `i` occupies
/// `memory` file offsets `file_offset..file_offset+size`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryState {
    pub mem_size: u64,
    #[serde(deserialize_with = "bounded::<_, _, MAX_MEMORY_REGIONS>")]
    pub regions: Vec<MemoryRegion>,
    /// For a diff snapshot: the file-offset ranges (start, length) present in
    /// this snapshot's `memory` file; every other page comes from the base.
    /// Empty with `diff == false`.
    pub diff: bool,
    #[serde(deserialize_with = "bounded::<_, _, MAX_DIRTY_RANGES>")]
    pub dirty_ranges: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRegion {
    pub guest_addr: u64,
    pub size: u64,
    pub file_offset: u64,
}

/// Decodes a sequence of at most `MAX` elements, refusing a longer one by
/// its declared length, before anything is allocated or decoded for it:
/// a small element can decode from one byte and take tens in memory, so
/// checking counts only after decoding would let a 64 MiB state allocate
/// gigabytes first. [`MachineState::validate`] checks the rest.
fn bounded<'de, D, T, const MAX: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const MAX: usize>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const MAX: usize> serde::de::Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "at most {MAX} elements")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let declared = seq.size_hint().unwrap_or(0);
            if declared > MAX {
                return Err(serde::de::Error::invalid_length(declared, &self));
            }
            let mut out = Vec::with_capacity(declared);
            while let Some(element) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::invalid_length(MAX + 1, &self));
                }
                out.push(element);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(Bounded::<T, MAX>(std::marker::PhantomData))
}

/// Why a decoded state is unacceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid snapshot state: {0}")]
pub struct InvalidState(pub String);

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), InvalidState> {
    if ok {
        Ok(())
    } else {
        Err(InvalidState(what()))
    }
}

const PAGE: u64 = 4096;

impl MachineState {
    /// Checks every length and every cross-field invariant a restore relies
    /// on, so that restore code can index without panicking.
    pub fn validate(&self) -> Result<(), InvalidState> {
        check(
            !self.vcpus.is_empty() && self.vcpus.len() <= MAX_VCPUS,
            || format!("{} vCPUs (allowed 1..={MAX_VCPUS})", self.vcpus.len()),
        )?;
        for (i, v) in self.vcpus.iter().enumerate() {
            check(usize::from(v.index) == i, || {
                format!("vCPU {i} records index {}", v.index)
            })?;
            check(v.cpuid.len() <= MAX_CPUID_ENTRIES, || {
                format!("vCPU {i}: {} CPUID entries", v.cpuid.len())
            })?;
            check(v.msrs.len() <= MAX_MSRS, || {
                format!("vCPU {i}: {} MSRs", v.msrs.len())
            })?;
            check(
                v.xsave.len() <= MAX_XSAVE_BYTES && v.xsave.len() % 4 == 0 && v.xsave.len() >= 4096,
                || format!("vCPU {i}: xsave region of {} bytes", v.xsave.len()),
            )?;
            check(v.one_regs.len() <= MAX_ONE_REGS, || {
                format!("vCPU {i}: {} ONE_REG entries", v.one_regs.len())
            })?;
            for (id, bytes) in &v.one_regs {
                check(
                    !bytes.is_empty() && bytes.len() <= MAX_ONE_REG_BYTES,
                    || format!("vCPU {i}: ONE_REG {id:#x} of {} bytes", bytes.len()),
                )?;
            }
        }
        check(
            self.devices.serial.in_buffer.len() <= MAX_SERIAL_FIFO,
            || {
                format!(
                    "serial FIFO of {} bytes",
                    self.devices.serial.in_buffer.len()
                )
            },
        )?;
        self.memory.validate()?;
        if let Some(p) = &self.pmem {
            p.validate(&self.memory)?;
        }
        Ok(())
    }
}

impl PmemState {
    /// The window must be whole 2 MiB units above every RAM region, in the
    /// slot right after RAM's (the order cold boot and restore register
    /// them in).
    pub fn validate(&self, memory: &MemoryState) -> Result<(), InvalidState> {
        check(
            self.size > 0
                && self.size.is_multiple_of(PMEM_UNIT)
                && self.guest_addr.is_multiple_of(PMEM_UNIT),
            || format!("pmem window {self:?} is not in whole 2 MiB units"),
        )?;
        check(self.guest_addr.checked_add(self.size).is_some(), || {
            format!("pmem window {self:?} overflows")
        })?;
        let ram_end = memory
            .regions
            .iter()
            .map(|r| r.guest_addr.saturating_add(r.size))
            .max()
            .unwrap_or(0);
        check(self.guest_addr >= ram_end, || {
            format!("pmem window {self:?} overlaps RAM (which ends at {ram_end:#x})")
        })?;
        check(self.slot as usize == memory.regions.len(), || {
            format!(
                "pmem window in KVM slot {}, expected {} (after the RAM slots)",
                self.slot,
                memory.regions.len()
            )
        })
    }
}

impl MemoryState {
    /// Size of the `memory` file this layout needs.
    pub fn file_size(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.file_offset + r.size)
            .max()
            .unwrap_or(0)
    }

    pub fn validate(&self) -> Result<(), InvalidState> {
        let m = self;
        check(
            !m.regions.is_empty() && m.regions.len() <= MAX_MEMORY_REGIONS,
            || format!("{} memory regions", m.regions.len()),
        )?;
        let mut total = 0u64;
        let mut next_offset = 0u64;
        for r in &m.regions {
            check(
                r.size > 0 && r.size % PAGE == 0 && r.guest_addr % PAGE == 0,
                || format!("memory region {r:?} is not page aligned"),
            )?;
            check(r.guest_addr.checked_add(r.size).is_some(), || {
                format!("memory region {r:?} overflows")
            })?;
            check(r.file_offset == next_offset, || {
                format!("memory region {r:?} is not contiguous in the memory file")
            })?;
            next_offset = r.file_offset + r.size;
            total = total.saturating_add(r.size);
        }
        check(total == m.mem_size, || {
            format!(
                "regions total {total} bytes, memory size says {}",
                m.mem_size
            )
        })?;
        check(m.diff || m.dirty_ranges.is_empty(), || {
            "dirty ranges in a full snapshot".into()
        })?;
        check(m.dirty_ranges.len() <= MAX_DIRTY_RANGES, || {
            format!("{} dirty ranges", m.dirty_ranges.len())
        })?;
        let mut prev_end = 0u64;
        for &(start, len) in &m.dirty_ranges {
            let end = start.checked_add(len);
            check(
                len > 0
                    && start % PAGE == 0
                    && len % PAGE == 0
                    && start >= prev_end
                    && end.is_some_and(|e| e <= m.mem_size),
                || format!("dirty range ({start:#x}, {len:#x}) is invalid"),
            )?;
            prev_end = start + len;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Serialize, Deserialize)]
    struct Four {
        #[serde(deserialize_with = "bounded::<_, _, 4>")]
        ranges: Vec<(u64, u64)>,
    }

    #[test]
    fn a_count_past_its_bound_is_refused_before_allocation() {
        let four = Four {
            ranges: vec![(1, 2); 4],
        };
        let bytes = postcard::to_allocvec(&four).expect("encode");
        assert_eq!(
            postcard::from_bytes::<Four>(&bytes)
                .expect("4 fit")
                .ranges
                .len(),
            4
        );
        let five = postcard::to_allocvec(&Four {
            ranges: vec![(1, 2); 5],
        })
        .expect("encode");
        assert!(postcard::from_bytes::<Four>(&five).is_err());
        // A declared count of 2^62 with no elements behind it is refused
        // by the count alone.
        let huge = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        assert!(postcard::from_bytes::<Four>(&huge).is_err());
    }

    fn memory() -> MemoryState {
        MemoryState {
            mem_size: 8 * PAGE,
            regions: vec![MemoryRegion {
                guest_addr: 0,
                size: 8 * PAGE,
                file_offset: 0,
            }],
            diff: false,
            dirty_ranges: vec![],
        }
    }

    #[test]
    fn memory_layout_checks() {
        assert!(memory().validate().is_ok());
        let mut m = memory();
        m.mem_size += 1;
        assert!(m.validate().is_err());
        let mut m = memory();
        m.dirty_ranges = vec![(0, PAGE)];
        assert!(m.validate().is_err(), "dirty ranges need diff");
        m.diff = true;
        assert!(m.validate().is_ok());
        m.dirty_ranges = vec![(PAGE, PAGE), (0, PAGE)];
        assert!(m.validate().is_err(), "ranges must be sorted");
        m.dirty_ranges = vec![(7 * PAGE, 2 * PAGE)];
        assert!(m.validate().is_err(), "range past the end");
        m.dirty_ranges = vec![(u64::MAX - PAGE + 1, PAGE)];
        assert!(m.validate().is_err(), "overflow");
        let mut m = memory();
        m.regions[0].file_offset = PAGE;
        assert!(m.validate().is_err());
        assert_eq!(memory().file_size(), 8 * PAGE);
    }

    #[test]
    fn pmem_window_checks() {
        let ok = PmemState {
            guest_addr: 1 << 30,
            size: 2 * PMEM_UNIT,
            slot: 1,
        };
        assert!(ok.validate(&memory()).is_ok());
        let bad = [
            PmemState { size: 0, ..ok },
            PmemState {
                size: PMEM_UNIT + PAGE,
                ..ok
            },
            PmemState {
                guest_addr: (1 << 30) + PAGE,
                ..ok
            },
            PmemState {
                guest_addr: 0,
                ..ok
            },
            PmemState {
                guest_addr: u64::MAX - PMEM_UNIT + 1,
                ..ok
            },
            PmemState { slot: 0, ..ok },
            PmemState { slot: 7, ..ok },
        ];
        for p in bad {
            assert!(p.validate(&memory()).is_err(), "{p:?} accepted");
        }
    }
}
