//! Saving and restoring one vCPU.
//!
//! Restore order is not arbitrary; each rule comes from how KVM applies the
//! state (see docs/snapshot-format.md):
//! 1. CPUID first: KVM validates MSRs and XSAVE features against it.
//! 2. TSC frequency, before anything derives time from it.
//! 3. MP state.
//! 4. REGS before VCPU_EVENTS: setting RFLAGS/RIP can clear a pending
//!    interrupt shadow or exception that the events then re-establish.
//! 5. SREGS before LAPIC: SREGS writes the APIC base MSR, which resets the
//!    LAPIC mode; LAPIC state written earlier would be lost.
//! 6. XSAVE, XCRS, DEBUGREGS.
//! 7. LAPIC before MSRs: the TSC-deadline MSR is only accepted once the
//!    LAPIC timer is in TSC-deadline mode, so the other order drops it.
//! 8. MSRs, then ONE_REG registers (the CET SSP is an MSR internally).
//! 9. VCPU_EVENTS last.

use std::sync::OnceLock;

use kvm_bindings::{kvm_msr_entry, kvm_xsave, CpuId, Msrs, Xsave};
use kvm_ioctls::{Cap, VcpuFd};
use vmfork_snapshot::state::VcpuState;
use vmfork_snapshot::Persist;

use crate::error::{Error, Result};
use crate::kvm_host::{HostVirt, KvmHost};
use crate::vcpu::Vcpu;

/// KVM_REG_X86 | KVM_X86_REG_TYPE_KVM << 32 | size u64 | KVM_REG_GUEST_SSP.
const KVM_REG_GUEST_SSP_ID: u64 = 0x2030_0003_0000_0000;
const CPUID_7_ECX_CET_SS: u32 = 1 << 7;
/// PVM's virtual MSR range, in the public virt-pvm spec. Probed, never
/// assumed: this host's private kvm_pvm exposes none of them.
const PVM_VIRTUAL_MSRS: std::ops::RangeInclusive<u32> = 0x4b56_4df0..=0x4b56_4dff;

fn vcpu_err(index: u8, reason: String) -> Error {
    Error::Vcpu {
        index: usize::from(index),
        reason,
    }
}

/// The MSRs worth saving: every index KVM lists that KVM_GET_MSRS can
/// actually read on this host, plus any PVM virtual MSRs that answer. An
/// MSR the host refuses to read could not be restored either, so it is
/// dropped here once per process rather than failing every snapshot.
fn saveable_msrs(vcpu: &VcpuFd) -> Result<&'static [u32]> {
    static LIST: OnceLock<Vec<u32>> = OnceLock::new();
    if let Some(list) = LIST.get() {
        return Ok(list);
    }
    let host = KvmHost::get()?;
    let mut candidates: Vec<u32> = host.msr_index_list()?.to_vec();
    if host.virt == HostVirt::Pvm {
        candidates.extend(PVM_VIRTUAL_MSRS);
    }
    let readable = candidates
        .into_iter()
        .filter(|&index| read_msrs(vcpu, &[index]).is_ok_and(|v| v.len() == 1))
        .collect();
    Ok(LIST.get_or_init(|| readable))
}

/// The MSRs KVM lists on this host (KVM_GET_MSR_INDEX_LIST: every MSR
/// whose state userspace must carry across a save and restore) that
/// `saved` lacks, because KVM would not read them back when the template
/// was saved ([`saveable_msrs`]). Restoring into a vCPU that already ran a
/// clone leaves these as that clone left them, so such a vCPU must not be
/// reused (docs/security.md, "Recycled VMs: what a reset restores").
pub fn msrs_not_restored(saved: &[kvm_msr_entry]) -> Result<Vec<u32>> {
    let listed = KvmHost::get()?.msr_index_list()?;
    Ok(listed
        .iter()
        .copied()
        .filter(|index| !saved.iter().any(|e| e.index == *index))
        .collect())
}

fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let entries: Vec<kvm_msr_entry> = indices
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs =
        Msrs::from_entries(&entries).map_err(|e| Error::GuestMemory(format!("MSR list: {e:?}")))?;
    let read = vcpu
        .get_msrs(&mut msrs)
        .map_err(Error::kvm("KVM_GET_MSRS"))?;
    Ok(msrs.as_slice()[..read].to_vec())
}

fn xsave2_size() -> Option<usize> {
    let host = KvmHost::get().ok()?;
    let size = host.kvm.check_extension_int(Cap::Xsave2);
    (size >= 4096).then_some(size as usize)
}

fn save_xsave(vcpu: &VcpuFd) -> Result<Vec<u8>> {
    let words: Vec<u32> = match xsave2_size() {
        Some(size) => {
            let extra_words = (size - 4096) / 4;
            let mut xsave = Xsave::new(extra_words)
                .map_err(|e| Error::GuestMemory(format!("xsave2 buffer: {e:?}")))?;
            // SAFETY: the buffer was sized from KVM_CAP_XSAVE2, as the ioctl
            // requires.
            unsafe { vcpu.get_xsave2(&mut xsave) }.map_err(Error::kvm("KVM_GET_XSAVE2"))?;
            let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
            words.extend_from_slice(xsave.as_slice());
            words
        }
        None => vcpu
            .get_xsave()
            .map_err(Error::kvm("KVM_GET_XSAVE"))?
            .region
            .to_vec(),
    };
    Ok(words.iter().flat_map(|w| w.to_le_bytes()).collect())
}

fn restore_xsave(vcpu: &VcpuFd, bytes: &[u8]) -> Result<()> {
    let words: Vec<u32> = bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (region, extra) = words.split_at(words.len().min(1024));
    match xsave2_size() {
        Some(size) => {
            let extra_words = (size - 4096) / 4;
            if extra.len() > extra_words {
                return Err(Error::HostUnsupported(format!(
                    "the snapshot's XSAVE area is {} bytes, this host's is {size}",
                    bytes.len()
                )));
            }
            let mut xsave = Xsave::new(extra_words)
                .map_err(|e| Error::GuestMemory(format!("xsave2 buffer: {e:?}")))?;
            // SAFETY: writing plain integers into the wrapper's own storage.
            unsafe {
                xsave.as_mut_fam_struct().xsave.region[..region.len()].copy_from_slice(region);
                xsave.as_mut_slice()[..extra.len()].copy_from_slice(extra);
            }
            // SAFETY: the buffer was sized from KVM_CAP_XSAVE2.
            unsafe { vcpu.set_xsave2(&xsave) }.map_err(Error::kvm("KVM_SET_XSAVE2"))
        }
        None => {
            if !extra.is_empty() {
                return Err(Error::HostUnsupported(
                    "the snapshot has an XSAVE2 area larger than this host's".into(),
                ));
            }
            let mut xsave = kvm_xsave::default();
            xsave.region[..region.len()].copy_from_slice(region);
            // SAFETY: a plain 4 KiB kvm_xsave, what KVM_SET_XSAVE expects.
            unsafe { vcpu.set_xsave(&xsave) }.map_err(Error::kvm("KVM_SET_XSAVE"))
        }
    }
}

fn cet_exposed(cpuid: &[kvm_bindings::kvm_cpuid_entry2]) -> bool {
    cpuid
        .iter()
        .any(|e| e.function == 7 && e.index == 0 && e.ecx & CPUID_7_ECX_CET_SS != 0)
}

/// CPUID, then the TSC frequency: what the vCPU is, rather than its
/// state (rules 1 and 2 of the restore order above).
fn restore_identity(fd: &VcpuFd, s: &VcpuState) -> Result<()> {
    let cpuid = CpuId::from_entries(&s.cpuid)
        .map_err(|e| vcpu_err(s.index, format!("CPUID from snapshot: {e:?}")))?;
    fd.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    if let Some(khz) = s.tsc_khz {
        // Without KVM_CAP_TSC_CONTROL the frequency cannot be set; a
        // mismatch then means the guest's clock runs at a different rate.
        if fd.get_tsc_khz().ok() != Some(khz) {
            fd.set_tsc_khz(khz).map_err(|e| {
                Error::HostUnsupported(format!(
                    "the snapshot's TSC runs at {khz} kHz and this host cannot match it: {e}"
                ))
            })?;
        }
    }
    Ok(())
}

pub struct VcpuRestore {
    /// A freshly created (or pooled) vCPU to load the state into.
    pub vcpu: Vcpu,
    /// RAX instead of the saved one: the command a guest parked in its
    /// ready-port `in` resumes with (template/src/restore.rs).
    pub resume_rax: Option<u64>,
}

impl Persist for Vcpu {
    type State = VcpuState;
    type RestoreArgs<'a> = VcpuRestore;
    type Error = Error;

    /// The vCPU must be out of KVM_RUN with any pending I/O completed
    /// (see `Vcpu::complete_pending_io`).
    fn save(&self) -> Result<VcpuState> {
        let fd = &self.fd;
        let cpuid = fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let mut one_regs = Vec::new();
        if cet_exposed(&cpuid) {
            let mut ssp = [0u8; 8];
            fd.get_one_reg(KVM_REG_GUEST_SSP_ID, &mut ssp)
                .map_err(Error::kvm("KVM_GET_ONE_REG (guest SSP)"))?;
            one_regs.push((KVM_REG_GUEST_SSP_ID, ssp.to_vec()));
        }
        Ok(VcpuState {
            index: self.index,
            tsc_khz: fd.get_tsc_khz().ok(),
            mp_state: fd.get_mp_state().map_err(Error::kvm("KVM_GET_MP_STATE"))?,
            regs: fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?,
            sregs: fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?,
            xsave: save_xsave(fd)?,
            xcrs: fd.get_xcrs().map_err(Error::kvm("KVM_GET_XCRS"))?,
            debugregs: fd
                .get_debug_regs()
                .map_err(Error::kvm("KVM_GET_DEBUGREGS"))?,
            lapic: fd.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?,
            msrs: read_msrs(fd, saveable_msrs(fd)?)?,
            vcpu_events: fd
                .get_vcpu_events()
                .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?,
            cpuid,
            one_regs,
        })
    }

    fn restore(args: VcpuRestore, s: &VcpuState) -> Result<Vcpu> {
        let VcpuRestore {
            mut vcpu,
            resume_rax,
        } = args;
        let skip_identity = std::mem::take(&mut vcpu.identity_restored);
        let fd = &vcpu.fd;
        if !skip_identity {
            restore_identity(fd, s)?;
        }
        fd.set_mp_state(s.mp_state)
            .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
        let regs = match resume_rax {
            Some(rax) => kvm_bindings::kvm_regs { rax, ..s.regs },
            None => s.regs,
        };
        fd.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
        fd.set_sregs(&sregs_for_host(&s.sregs)?)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        restore_xsave(fd, &s.xsave)?;
        fd.set_xcrs(&s.xcrs).map_err(Error::kvm("KVM_SET_XCRS"))?;
        fd.set_debug_regs(&s.debugregs)
            .map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
        fd.set_lapic(&s.lapic)
            .map_err(Error::kvm("KVM_SET_LAPIC"))?;
        let msrs = Msrs::from_entries(&s.msrs)
            .map_err(|e| vcpu_err(s.index, format!("MSRs from snapshot: {e:?}")))?;
        let written = fd.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
        if written != s.msrs.len() {
            return Err(vcpu_err(
                s.index,
                format!(
                    "KVM refused MSR {:#x} ({written} of {} restored)",
                    s.msrs[written].index,
                    s.msrs.len()
                ),
            ));
        }
        for (id, bytes) in &s.one_regs {
            fd.set_one_reg(*id, bytes)
                .map_err(Error::kvm("KVM_SET_ONE_REG"))?;
        }
        fd.set_vcpu_events(&s.vcpu_events)
            .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(vcpu)
    }
}

/// Task-register types: an available and a busy 64-bit TSS.
const TSS_AVAILABLE: u8 = 9;
const TSS_BUSY: u8 = 11;

/// The saved special registers as this host's KVM should get them back.
/// On SVM, KVM_GET_SREGS reports TR as busy (type 11) although the VMCB
/// holds it as available (type 9), which is how AMD CPUs store it; a
/// restore writes the VMCB's own value back. The difference matters to
/// QEMU's emulated SVM (the test rig): it checks the ring-3 I/O permission
/// bitmap only through a type-9 TR and raised #GP on every port access of
/// a restored Linux guest's agent (measured 2026-12-05).
fn sregs_for_host(saved: &kvm_bindings::kvm_sregs) -> Result<kvm_bindings::kvm_sregs> {
    let mut sregs = *saved;
    if crate::kvm_host::KvmHost::get()?.virt == crate::kvm_host::HostVirt::Svm
        && sregs.tr.type_ == TSS_BUSY
    {
        sregs.tr.type_ = TSS_AVAILABLE;
    }
    Ok(sregs)
}
