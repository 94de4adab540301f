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
    pub ram: ReservedRam,
    layout: MemoryState,
}

impl VmShell {
    pub fn new(layout: &MemoryState, vcpu_count: u8) -> Result<VmShell> {
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
        let vcpus = (0..vcpu_count)
            .map(|i| Vcpu::new(&vm, i))
            .collect::<Result<Vec<_>>>()?;
        Ok(VmShell {
            vm,
            vcpus,
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
