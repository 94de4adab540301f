//! Pre-created VM shells: a VM with its memory slots, irqchip, PIT and
//! vCPUs made ahead of time, so a clone only maps memory, restores state
//! and runs. The slots point into an address range reserved now and filled
//! later with `MAP_FIXED` mappings of the template's memfd: KVM slots refer
//! to host virtual addresses, and replacing the mapping underneath a slot
//! is safe because KVM's MMU notifier drops anything it had mapped.
//! (Registering the slots now also avoids the ~7.5 ms a slot costs once the
//! irqchip exists; see docs/boot.md.)

use std::os::fd::AsRawFd;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vmfork_snapshot::state::{MemoryState, PmemState};
use vmfork_snapshot::Persist;

use super::reset::{InPlaceReset, Reset};
use crate::devices::serial::{IrqTrigger, SerialPort};
use crate::error::{Error, Result};
use crate::kvm_host::KvmHost;
use crate::memory::{PmemImage, ReservedRam};
use crate::persist::pmem::{PmemRestore, PmemSlot};
use crate::vcpu::Vcpu;
use crate::vm::Vm;

pub struct VmShell {
    pub vm: Vm,
    pub vcpus: Vec<Vcpu>,
    pub serial_irq: IrqTrigger,
    pub ram: ReservedRam,
    /// The rootfs window of the template it was made for, registered with
    /// the RAM slots (before the irqchip, where a slot is cheap), over the
    /// one mapping of the image this process holds.
    pub pmem: Option<PmemSlot>,
    layout: MemoryState,
    /// The (device, inode) of the template memfd still mapped over `ram`
    /// from a previous clone, reset in place (clone/reset.rs), with KVM's
    /// mappings of it; None when `ram` is a bare reservation.
    template_mapped: Option<(u64, u64)>,
    /// The vCPUs already hold the template's state, restored ahead of the
    /// clone (with this resume command in RAX, if any): a clone then only
    /// writes its clone-info page, restores the VM-wide state (irqchip,
    /// PIT, clock: no vCPU ioctls) and runs.
    pub vcpus_restored: Option<Option<u32>>,
}

impl VmShell {
    /// `cpuid`: each vCPU's CPUID from the template. It is set before the
    /// warm-up run, because KVM only accepts an identical CPUID once a vCPU
    /// has run, and the restore sets the template's. `pmem`: the template's
    /// rootfs image and window, if it has one.
    pub fn new(
        layout: &MemoryState,
        cpuid: &[Vec<kvm_bindings::kvm_cpuid_entry2>],
        pmem: Option<(&Arc<PmemImage>, &PmemState)>,
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
        let pmem = match pmem {
            Some((image, state)) => Some(PmemSlot::restore(
                PmemRestore { vm: &mut vm, image },
                state,
            )?),
            None => None,
        };
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
            pmem,
            layout: layout.clone(),
            template_mapped: None,
            vcpus_restored: None,
        })
    }

    /// Turns a finished clone's VM back into a shell for the next clone,
    /// skipping KVM's VM teardown and creation (most of a clone's host CPU
    /// cost on this host; docs/serve.md). vCPU, irqchip, PIT, clock and
    /// device state are all overwritten by the next restore; the memory is
    /// reset here. With `in_place` (the template's reset state and its
    /// memfd, which the clone's memory must map), the pages the clone wrote
    /// are refilled and the mapping stays, when that is safe (reset.rs).
    /// Otherwise the memory goes back to a bare reservation: the clone's
    /// private pages are freed, and KVM's MMU notifier drops every mapping
    /// it had of them.
    ///
    /// Only a machine restored into a shell (its one memory guard being the
    /// shell's reservation) can be recycled; any other is closed and an
    /// error returned.
    ///
    /// Returns None, the VM closed, when KVM shadows the guest's page
    /// tables and the clone may have run guest ring 0 (`in_place` tells,
    /// ring0_entry.rs): ring 0 can build page tables whose shadows a
    /// refill or a remap would leave stale, and change vCPU state beyond
    /// what is saved. A new VM is the only reset that covers both.
    ///
    /// `remap`: drop the memory even when an in-place reset would do
    /// (`--recycle remap`); `in_place` still tells about ring 0.
    pub fn recycle(
        machine: crate::machine::Machine,
        layout: &MemoryState,
        in_place: Option<(&InPlaceReset, &std::fs::File)>,
        remap: bool,
    ) -> Result<Option<(VmShell, Reset)>> {
        let parts = machine.into_reusable()?;
        let ram = match parts.ram_guard {
            crate::memory::RamGuard {
                reserved: Some(ram),
                server: None,
            } => ram,
            _ => {
                return Err(Error::GuestMemory(
                    "only a clone restored into a VM shell can be recycled".into(),
                ))
            }
        };
        if ram.size != layout.file_size() as usize {
            return Err(Error::GuestMemory(
                "a recycled VM's memory range does not fit this template".into(),
            ));
        }
        // No statistics: assume shadow paging.
        let vm_fd = &parts.vm.fd;
        let shadowing = || crate::mmu_stats::read(vm_fd).is_none_or(|c| c.cache_miss > 0);
        let verdict = match in_place {
            Some((reset, memfd)) if !remap => {
                reset.reset(memfd, ram.addr as usize, ram.size, shadowing)?
            }
            Some((reset, _)) => reset.remap_unless_ring0(ram.addr as usize, shadowing)?,
            None => Some(Reset::Remap),
        };
        let Some(reset) = verdict else {
            return Ok(None);
        };
        if reset == Reset::Remap {
            ram.unmap_contents()?;
        }
        let mut vcpus = parts.vcpus;
        // The pool a shell returns to serves one template only.
        for vcpu in &mut vcpus {
            vcpu.identity_restored = true;
        }
        let shell = VmShell {
            vm: parts.vm,
            vcpus,
            serial_irq: parts.serial_irq,
            ram,
            pmem: parts.pmem,
            layout: layout.clone(),
            template_mapped: match (&reset, in_place) {
                (Reset::InPlace(_), Some((in_place, _))) => Some(in_place.memfd_id()),
                _ => None,
            },
            vcpus_restored: None,
        };
        Ok(Some((shell, reset)))
    }

    /// Maps `file` privately over the reservation (or, with None, fresh
    /// anonymous memory for a userfaultfd clone), region by region, and
    /// returns the guest memory view of it (which does not own the mapping).
    /// A shell recycled in place that already maps `file` keeps that
    /// mapping.
    pub fn map_private(&self, file: Option<&std::fs::File>) -> Result<GuestMemoryMmap> {
        let keep = match (self.template_mapped, file) {
            (Some(mapped), Some(f)) => super::reset::file_id(f)? == mapped,
            _ => false,
        };
        let mut regions = Vec::with_capacity(self.layout.regions.len());
        for r in &self.layout.regions {
            let at = self.ram.addr as usize + r.file_offset as usize;
            if !keep {
                self.map_region(at, r.size as usize, r.file_offset, file)?;
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

    fn map_region(
        &self,
        at: usize,
        size: usize,
        file_offset: u64,
        file: Option<&std::fs::File>,
    ) -> Result<()> {
        let (fd, flags, offset) = match file {
            Some(f) => (f.as_raw_fd(), libc::MAP_PRIVATE, file_offset as libc::off_t),
            None => (-1, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, 0),
        };
        // SAFETY: replaces part of our own reservation (MAP_FIXED inside a
        // range this shell owns) with a private mapping of `file`.
        let mapped = unsafe {
            libc::mmap(
                at as *mut libc::c_void,
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                flags | libc::MAP_FIXED | libc::MAP_NORESERVE,
                fd,
                offset,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(Error::GuestMemory(format!(
                "mapping clone memory into a shell: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
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
