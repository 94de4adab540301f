//! Per-process facts about the host's KVM, fetched once and cached:
//! `/dev/kvm` itself, the supported CPUID and the MSR index list. QEMU was
//! measured making 5922 duplicate KVM_GET_SUPPORTED_CPUID calls; we make one.

use std::sync::OnceLock;

use kvm_bindings::{CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

/// What kind of hardware virtualisation backs /dev/kvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostVirt {
    Vmx,
    Svm,
    /// Ant Group's Pagetable-based VM: guest ring 0 is emulated.
    Pvm,
    Unknown,
}

impl HostVirt {
    /// Detected once per process and cached: a jailed VMM can no longer
    /// see /sys, so the jail detects before it pivots.
    pub fn detect() -> HostVirt {
        static DETECTED: std::sync::OnceLock<HostVirt> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(HostVirt::probe)
    }

    fn probe() -> HostVirt {
        if std::path::Path::new("/sys/module/kvm_pvm").exists() {
            return HostVirt::Pvm;
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .unwrap_or_default();
        if flags.split_whitespace().any(|f| f == "vmx") {
            HostVirt::Vmx
        } else if flags.split_whitespace().any(|f| f == "svm") {
            HostVirt::Svm
        } else {
            HostVirt::Unknown
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HostVirt::Vmx => "vmx",
            HostVirt::Svm => "svm",
            HostVirt::Pvm => "pvm",
            HostVirt::Unknown => "unknown",
        }
    }
}

pub struct KvmHost {
    pub kvm: Kvm,
    pub virt: HostVirt,
    supported_cpuid: OnceLock<CpuId>,
    msr_index_list: OnceLock<Vec<u32>>,
}

static HOST: OnceLock<KvmHost> = OnceLock::new();

/// Capabilities pc-lite cannot run without.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

impl KvmHost {
    /// Opens /dev/kvm on first use and checks it can run a pc-lite VM.
    pub fn get() -> Result<&'static KvmHost> {
        if let Some(host) = HOST.get() {
            return Ok(host);
        }
        let kvm = Kvm::new().map_err(|e| Error::KvmUnavailable(e.into()))?;
        let api = kvm.get_api_version();
        if api != 12 {
            return Err(Error::HostUnsupported(format!(
                "KVM API version {api}, vmfork needs 12"
            )));
        }
        for (cap, name) in REQUIRED_CAPS {
            if !kvm.check_extension(*cap) {
                return Err(Error::HostUnsupported(format!("KVM lacks {name}")));
            }
        }
        let host = KvmHost {
            kvm,
            virt: HostVirt::detect(),
            supported_cpuid: OnceLock::new(),
            msr_index_list: OnceLock::new(),
        };
        Ok(HOST.get_or_init(|| host))
    }

    pub fn supported_cpuid(&self) -> Result<&CpuId> {
        if let Some(c) = self.supported_cpuid.get() {
            return Ok(c);
        }
        let cpuid = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        Ok(self.supported_cpuid.get_or_init(|| cpuid))
    }

    pub fn msr_index_list(&self) -> Result<&[u32]> {
        if let Some(l) = self.msr_index_list.get() {
            return Ok(l);
        }
        let list = self
            .kvm
            .get_msr_index_list()
            .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        Ok(self.msr_index_list.get_or_init(|| list))
    }

    pub fn max_vcpus(&self) -> usize {
        self.kvm.get_max_vcpus()
    }

    pub fn has_readonly_mem(&self) -> bool {
        self.kvm.check_extension(Cap::ReadonlyMem)
    }
}
