//! vCPUs: boot configuration, the run loop, and how other threads kick a
//! vCPU out of KVM_RUN.

pub mod kick;
pub mod run;
pub mod setup;
pub mod threads;

use kvm_ioctls::VcpuFd;

use crate::error::{Error, Result};
use crate::vm::Vm;

pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
    /// This vCPU's CPUID and TSC frequency are already those of the state
    /// restored next: it ran a clone of the same template before (a
    /// recycled VM shell). The restore then skips setting them, two of its
    /// dozen ioctls; it clears the flag.
    pub identity_restored: bool,
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Vcpu> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        Ok(Vcpu {
            index,
            fd,
            identity_restored: false,
        })
    }
}
