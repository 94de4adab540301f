//! The KVM floor: the cheapest possible "VM start" on this host: create a
//! VM, add one memory slot, create a vCPU, set its registers, run to the
//! first HLT. Every start latency vmfork reports is compared against this,
//! measured in the same run.

use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::VcpuExit;

use crate::error::{Error, Result};
use crate::kvm_host::KvmHost;

const FLOOR_MEM_SIZE: usize = 0x10000;
const HLT_ADDR: u64 = 0x1000;
const HLT: u8 = 0xf4;

/// One floor measurement. Teardown (closing the VM) happens after the
/// clock stops, as in the reference Python tool.
pub fn measure_once(host: &KvmHost, mem: &mut [u8]) -> Result<Duration> {
    let start = Instant::now();
    let vm = host.kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem.len() as u64,
        userspace_addr: mem.as_mut_ptr() as u64,
    };
    // SAFETY: `mem` is a live buffer borrowed for longer than the VM exists
    // (the VM is dropped at the end of this function).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(Error::kvm("KVM_CREATE_VCPU"))?;
    // Real mode with CS base 0, so RIP is the physical address of the HLT.
    let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    let mut regs = vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
    regs.rip = HLT_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => break,
            Ok(other) => {
                return Err(Error::Vcpu {
                    index: 0,
                    reason: format!("floor VM exited with {other:?} instead of HLT"),
                })
            }
            Err(e) if e.errno() == libc::EINTR => continue,
            Err(e) => return Err(Error::kvm("KVM_RUN")(e)),
        }
    }
    let elapsed = start.elapsed();
    drop(vcpu);
    drop(vm);
    Ok(elapsed)
}

/// `rounds` floor measurements, in order.
pub fn measure(rounds: usize) -> Result<Vec<Duration>> {
    let host = KvmHost::get()?;
    // KVM wants page-aligned guest memory, which an mmap region guarantees.
    let region = vm_memory::MmapRegion::<()>::new(FLOOR_MEM_SIZE)
        .map_err(|e| Error::GuestMemory(format!("floor memory: {e}")))?;
    // SAFETY: the region is a private anonymous mapping of FLOOR_MEM_SIZE
    // bytes owned by `region`, which outlives the slice.
    let mem = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), FLOOR_MEM_SIZE) };
    mem[HLT_ADDR as usize] = HLT;
    (0..rounds).map(|_| measure_once(host, mem)).collect()
}

/// Median of a set of durations (the upper median for even counts).
pub fn median(samples: &[Duration]) -> Duration {
    percentile(samples, 50.0)
}

/// Nearest-rank percentile.
pub fn percentile(samples: &[Duration], pct: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(median(&s), Duration::from_micros(50));
        assert_eq!(percentile(&s, 99.0), Duration::from_micros(99));
        assert_eq!(percentile(&s, 100.0), Duration::from_micros(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
        assert_eq!(
            median(&[Duration::from_micros(7)]),
            Duration::from_micros(7)
        );
    }
}
