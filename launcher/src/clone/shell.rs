//! Pre-created VM shells: a VM with its memory slots, irqchip, PIT and
//! vCPUs made ahead of time, so a clone only maps memory, restores state
//! and runs. The slots point into an address range reserved now and filled
//! later with `MAP_FIXED` mappings of the template's memfd: KVM slots refer
//! to host virtual addresses, and replacing the mapping underneath a slot
//! is safe because KVM's MMU notifier drops anything it had mapped.
//! (Registering the slots now also avoids the ~7.5 ms a slot costs once the
//! irqchip exists; see docs/boot.md.)

use std::os::fd::AsRawFd;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmfork_snapshot::state::MemoryState;

use crate::devices::serial::{IrqTrigger, SerialPort};
use crate::error::{Error, Result};
use crate::kvm_host::KvmHost;
use crate::vcpu::Vcpu;
use crate::vm::Vm;

/// An address range owned by a shell (and later by its clone), unmapped
/// when dropped.
pub struct ReservedRam {
    addr: *mut libc::c_void,
    size: usize,
}

// SAFETY: the range is only an address reservation plus mappings owned by
// this value; moving ownership between threads is fine.
unsafe impl Send for ReservedRam {}
// SAFETY: shared references expose nothing that could race.
unsafe impl Sync for ReservedRam {}

impl Drop for ReservedRam {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range reserved in `reserve`; the VM
        // using it is dropped first (field order in Machine).
        unsafe {
            libc::munmap(self.addr, self.size);
        }
    }
}

pub struct VmShell {
    pub vm: Vm,
    pub vcpus: Vec<Vcpu>,
    pub serial_irq: IrqTrigger,
    pub ram: ReservedRam,
    layout: MemoryState,
}

impl VmShell {
    /// `cpuid`: each vCPU's CPUID from the template. It is set before the
    /// warm-up run, because KVM only accepts an identical CPUID once a vCPU
    /// has run, and the restore sets the template's.
    pub fn new(
        layout: &MemoryState,
        cpuid: &[Vec<kvm_bindings::kvm_cpuid_entry2>],
    ) -> Result<VmShell> {
        let host = KvmHost::get()?;
        let size = layout.file_size() as usize;
        // SAFETY: a fresh anonymous reservation at a kernel-chosen address,
        // checked below and unmapped by ReservedRam's Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(Error::GuestMemory(format!(
                "reserving {size} bytes for a VM shell: {}",
                std::io::Error::last_os_error()
            )));
        }
        let ram = ReservedRam { addr, size };
        let mut vm = Vm::new(host)?;
        for r in &layout.regions {
            vm.register_ram_at(r.guest_addr, r.size, addr as u64 + r.file_offset)?;
        }
        vm.create_platform()?;
        let mut vcpus = Vec::with_capacity(cpuid.len());
        for (i, entries) in cpuid.iter().enumerate() {
            let vcpu = Vcpu::new(&vm, i as u8)?;
            let cpuid = kvm_bindings::CpuId::from_entries(entries)
                .map_err(|e| Error::GuestMemory(format!("template CPUID: {e:?}")))?;
            vcpu.fd
                .set_cpuid2(&cpuid)
                .map_err(Error::kvm("KVM_SET_CPUID2"))?;
            vcpus.push(vcpu);
        }
        let serial_irq = SerialPort::irq(&vm.fd)?;
        warm_up(&mut vcpus, &ram)?;
        Ok(VmShell {
            vm,
            vcpus,
            serial_irq,
            ram,
            layout: layout.clone(),
        })
    }

    /// Maps `file` privately over the reservation (or, with None, fresh
    /// anonymous memory for a userfaultfd clone), region by region, and
    /// returns the guest memory view of it (which does not own the mapping).
    pub fn map_private(&self, file: Option<&std::fs::File>) -> Result<GuestMemoryMmap> {
        let mut regions = Vec::with_capacity(self.layout.regions.len());
        for r in &self.layout.regions {
            let at = self.ram.addr as usize + r.file_offset as usize;
            // SAFETY: replaces part of our own reservation (MAP_FIXED inside
            // a range this shell owns) with a private mapping of `file`.
            let (fd, flags) = match file {
                Some(f) => (f.as_raw_fd(), libc::MAP_PRIVATE),
                None => (-1, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
            };
            let mapped = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    r.size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
                    fd,
                    if file.is_some() {
                        r.file_offset as libc::off_t
                    } else {
                        0
                    },
                )
            };
            if mapped == libc::MAP_FAILED {
                return Err(Error::GuestMemory(format!(
                    "mapping clone memory into a shell: {}",
                    std::io::Error::last_os_error()
                )));
            }
            // SAFETY: `at..at+size` is the live mapping just created, owned
            // by self.ram for longer than the returned memory is used.
            let region = unsafe {
                MmapRegionBuilder::<()>::new(r.size as usize)
                    .with_raw_mmap_pointer(at as *mut u8)
                    .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
                    .with_mmap_flags(libc::MAP_PRIVATE)
                    .build()
            }
            .map_err(|e| Error::GuestMemory(format!("shell memory view: {e}")))?;
            regions.push(
                GuestRegionMmap::new(region, GuestAddress(r.guest_addr))
                    .ok_or_else(|| Error::GuestMemory("memory region overflows".into()))?,
            );
        }
        GuestMemoryMmap::from_regions(regions)
            .map_err(|e| Error::GuestMemory(format!("guest memory layout: {e}")))
    }
}

/// Runs each vCPU once, ahead of time, on a two-byte real-mode program
/// (`out %al, $0x80`) in a scratch page: KVM (PVM here) does much of its
/// per-vCPU setup on the first entry, measured at ~200 us, which a clone
/// would otherwise pay. Restoring a clone overwrites every piece of state
/// the warm-up touched, and mapping the clone's memory over the scratch
/// page makes KVM drop anything it mapped from it.
fn warm_up(vcpus: &mut [Vcpu], ram: &ReservedRam) -> Result<()> {
    const CODE_GPA: usize = 0x1000;
    if ram.size < 2 * CODE_GPA {
        return Ok(());
    }
    let page = ram.addr as usize + CODE_GPA;
    // SAFETY: replaces one page inside this shell's own reservation.
    let mapped = unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(Error::GuestMemory(format!(
            "shell warm-up page: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: the page was just mapped writable.
    unsafe { std::ptr::copy_nonoverlapping([0xe6u8, 0x80].as_ptr(), page as *mut u8, 2) };
    for vcpu in vcpus.iter_mut() {
        let mut sregs = vcpu.fd.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
        vcpu.fd
            .set_sregs(&sregs)
            .map_err(Error::kvm("KVM_SET_SREGS"))?;
        let mut regs = vcpu.fd.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
        regs.rip = CODE_GPA as u64;
        regs.rflags = 2;
        vcpu.fd
            .set_regs(&regs)
            .map_err(Error::kvm("KVM_SET_REGS"))?;
        // APs wait for SIPI and do not run; only the BSP warms up.
        if vcpu.index == 0 {
            let exit = vcpu
                .fd
                .run()
                .map(|e| matches!(e, kvm_ioctls::VcpuExit::IoOut(0x80, _)));
            if !matches!(exit, Ok(true)) {
                return Err(Error::Vcpu {
                    index: 0,
                    reason: format!("shell warm-up did not reach its port write: {exit:?}"),
                });
            }
            // Complete the `out` so no I/O is pending when state is restored.
            vcpu.fd.set_kvm_immediate_exit(1);
            let _ = vcpu.fd.run();
            vcpu.fd.set_kvm_immediate_exit(0);
        }
    }
    // Back to an unmapped reservation page until the clone maps its memory.
    // SAFETY: as above, inside the reservation.
    unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    Ok(())
}
