//! vCPUs: boot configuration, the run loop, and how other threads kick a
//! vCPU out of KVM_RUN.

pub mod kick;
pub mod run;
pub mod setup;

use kvm_ioctls::VcpuFd;

use crate::error::{Error, Result};
use crate::vm::Vm;

pub struct Vcpu {
    pub index: u8,
    pub fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &Vm, index: u8) -> Result<Vcpu> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(index))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        Ok(Vcpu { index, fd })
    }
}
