//! Boot-time vCPU configuration: CPUID, MSRs, LAPIC LINT pins, registers.

use kvm_bindings::{kvm_lapic_state, kvm_msr_entry, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use crate::boot::cpu_state::{boot_regs, boot_sregs};
use crate::boot::loader::Entry;
use crate::error::{Error, Result};

const CPUID_HYPERVISOR_BIT: u32 = 1 << 31;

/// Per-vCPU CPUID: the host's supported set with this vCPU's APIC ID, and
/// the hypervisor bit so guests know not to trust timing-based probes.
pub fn vcpu_cpuid(supported: &CpuId, index: u8, vcpu_count: u8) -> Result<CpuId> {
    let mut cpuid = supported.clone();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            0x1 => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | (u32::from(index) << 24);
                // Logical processor count in EBX[23:16] for the HTT bit.
                entry.ebx = (entry.ebx & 0xff00_ffff) | (u32::from(vcpu_count) << 16);
                entry.ecx |= CPUID_HYPERVISOR_BIT;
            }
            // Extended topology: EDX is the x2APIC ID of this CPU.
            0xb | 0x1f => entry.edx = u32::from(index),
            _ => {}
        }
    }
    Ok(cpuid)
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: without it Linux maps all RAM uncached.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSR values a freshly reset CPU would leave for a kernel that expects
/// firmware to have run: syscall MSRs cleared, fast strings on, WB memory.
pub fn boot_msrs() -> Result<Msrs> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    Msrs::from_entries(&entries).map_err(|e| Error::Vcpu {
        index: 0,
        reason: format!("building boot MSR list: {e:?}"),
    })
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(lapic: &mut kvm_lapic_state, reg: usize, mode: u32) {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&lapic.regs[reg..reg + 4]) {
        *b = *r as u8;
    }
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (r, b) in lapic.regs[reg..reg + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = b as _;
    }
}

/// Routes the legacy PIC through LINT0 (ExtINT) and NMIs through LINT1, as
/// firmware would; without it a Linux guest never sees PIC interrupts.
pub fn configure_lint(vcpu: &VcpuFd) -> Result<()> {
    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    set_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))
}

/// Full boot configuration of one vCPU. Only the BSP gets entry registers;
/// APs wait for INIT/SIPI from the guest.
pub fn configure_vcpu(vcpu: &VcpuFd, cpuid: &CpuId, index: u8, entry: Entry) -> Result<()> {
    vcpu.set_cpuid2(cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    let msrs = boot_msrs()?;
    let written = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if written != msrs.as_slice().len() {
        return Err(Error::Vcpu {
            index: index.into(),
            reason: format!(
                "KVM accepted {written} of {} boot MSRs (first refused: {:#x})",
                msrs.as_slice().len(),
                msrs.as_slice()[written].index
            ),
        });
    }
    configure_lint(vcpu)?;
    if index == 0 {
        vcpu.set_regs(&boot_regs(entry))
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        let current = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&boot_sregs(entry, &current))
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_msrs_enable_write_back_mtrrs() {
        let msrs = boot_msrs().expect("msrs");
        let mtrr = msrs
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .map(|e| e.data);
        assert_eq!(mtrr, Some(MTRR_ENABLE_WB));
    }

    #[test]
    fn lint_delivery_mode_is_patched_in_place() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT0] = 0x55u8 as _;
        lapic.regs[APIC_LVT0 + 2] = 0x01u8 as _;
        set_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(lapic.regs[APIC_LVT0] as u8, 0x55);
        assert_eq!(lapic.regs[APIC_LVT0 + 1] as u8, 0x07);
        assert_eq!(lapic.regs[APIC_LVT0 + 2] as u8, 0x01);
    }
}
