//! The KVM VM: in-kernel irqchip (PIC, IOAPIC, LAPICs), PIT2 and memory
//! slots. Nothing else lives in the kernel for a pc-lite machine.

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MEM_READONLY, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::error::{Error, Result};
use crate::kvm_host::KvmHost;

/// Where KVM's three-page TSS for real-mode emulation goes on VMX hosts:
/// just below the BIOS area, inside the MMIO gap where no RAM is.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemorySlot {
    pub slot: u32,
    pub guest_addr: u64,
    pub size: u64,
    pub host_addr: u64,
    pub flags: u32,
}

pub struct Vm {
    pub fd: VmFd,
    slots: Vec<MemorySlot>,
}

impl Vm {
    /// Creates an empty VM. Register every memory slot next, then call
    /// [`Vm::create_platform`]: measured on this host, a slot added before
    /// KVM_CREATE_IRQCHIP costs ~80 us and one added after it ~7.5 ms,
    /// whatever its size (the memslot update then waits for an SRCU grace
    /// period). docs/boot.md has the numbers.
    pub fn new(host: &KvmHost) -> Result<Vm> {
        let fd = host.kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        Ok(Vm {
            fd,
            slots: Vec::new(),
        })
    }

    /// Creates the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT2. Must
    /// run after the memory slots (see [`Vm::new`]) and before any vCPU is
    /// created, or vCPUs get no in-kernel LAPIC.
    pub fn create_platform(&self) -> Result<()> {
        self.fd
            .create_irq_chip()
            .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        self.fd
            .create_pit2(pit)
            .map_err(Error::kvm("KVM_CREATE_PIT2"))
    }

    /// Registers every RAM region. Flags stay 0: in particular no
    /// KVM_MEM_LOG_DIRTY_PAGES, so KVM allocates no dirty bitmap.
    pub fn register_ram<M: GuestMemoryBackend>(&mut self, mem: &M) -> Result<()> {
        for region in mem.iter() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(|e| Error::GuestMemory(format!("host address of RAM: {e}")))?;
            self.add_slot(region.start_addr().0, region.len(), host as u64, 0)?;
        }
        Ok(())
    }

    /// Registers one RAM slot at a host address that may not be mapped yet
    /// (VM shells map the memory later, see clone/shell.rs).
    pub fn register_ram_at(&mut self, guest_addr: u64, size: u64, host_addr: u64) -> Result<()> {
        self.add_slot(guest_addr, size, host_addr, 0)
    }

    pub fn register_readonly(&mut self, guest_addr: u64, size: u64, host_addr: u64) -> Result<()> {
        self.add_slot(guest_addr, size, host_addr, KVM_MEM_READONLY)
    }

    fn add_slot(&mut self, guest_addr: u64, size: u64, host_addr: u64, flags: u32) -> Result<()> {
        let slot = self.slots.len() as u32;
        let region = kvm_userspace_memory_region {
            slot,
            flags,
            guest_phys_addr: guest_addr,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: `host_addr..host_addr+size` is a live mapping owned by the
        // caller's memory object, which outlives this VM (the Machine drops
        // the VM first).
        unsafe { self.fd.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        self.slots.push(MemorySlot {
            slot,
            guest_addr,
            size,
            host_addr,
            flags,
        });
        Ok(())
    }

    pub fn slots(&self) -> &[MemorySlot] {
        &self.slots
    }

    /// Whether any slot has KVM dirty logging on (vmfork never turns it on;
    /// reported so tests and users can check).
    pub fn dirty_logging(&self) -> bool {
        self.slots
            .iter()
            .any(|s| s.flags & kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES != 0)
    }
}
