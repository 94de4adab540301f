//! Building a pc-lite machine for a cold boot, in the order of docs/boot.md.

use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmfork_snapshot::state::PmemState;
use vmfork_snapshot::Persist;

use super::config::{MachineConfig, MAX_MEM_SIZE, MAX_VCPUS, MIN_MEM_SIZE};
use super::{Machine, Origin};
use crate::boot::e820::{memory_map, ram_end, reserve};
use crate::boot::layout::{
    BOOT_GDT_START, BOOT_IDT_START, CMDLINE_MAX_SIZE, CMDLINE_START, PMEM_ALIGN, PML4_START,
};
use crate::boot::loader::KernelInfo;
use crate::boot::loader::{load_initrd, load_kernel, Entry};
use crate::boot::{gdt, mptable, paging, params};
use crate::control::Control;
use crate::devices::serial::SerialPort;
use crate::devices::PortIoBus;
use crate::error::{Error, Result};
use crate::kvm_host::KvmHost;
use crate::memory::{anonymous_ram, GuestRam, PmemImage};
use crate::persist::pmem::{PmemRestore, PmemSlot};
use crate::vcpu::setup::{configure_vcpu, vcpu_cpuid};
use crate::vcpu::Vcpu;
use crate::vm::Vm;

fn validate(config: &MachineConfig, host: &KvmHost) -> Result<()> {
    let max = host.max_vcpus().min(usize::from(MAX_VCPUS));
    if config.vcpus == 0 || usize::from(config.vcpus) > max {
        return Err(Error::InvalidArgument(format!(
            "--vcpus {} is out of range 1..={max}",
            config.vcpus
        )));
    }
    if config.mem_size < MIN_MEM_SIZE || config.mem_size > MAX_MEM_SIZE {
        return Err(Error::InvalidArgument(format!(
            "--mem {} MiB is out of range {}..={} MiB",
            config.mem_size >> 20,
            MIN_MEM_SIZE >> 20,
            MAX_MEM_SIZE >> 20
        )));
    }
    if !config.mem_size.is_multiple_of(4096) {
        return Err(Error::InvalidArgument(
            "--mem must be a multiple of 4 KiB".into(),
        ));
    }
    if config.cmdline.len() >= CMDLINE_MAX_SIZE || config.cmdline.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "--cmdline must be under {CMDLINE_MAX_SIZE} bytes with no NUL"
        )));
    }
    Ok(())
}

fn write(mem: &GuestMemoryMmap, bytes: &[u8], addr: u64, what: &str) -> Result<()> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|e| Error::MemoryTooSmall(format!("cannot write {what} at {addr:#x}: {e}")))
}

impl Machine {
    /// Creates a VM ready to run the kernel from its first instruction.
    pub fn cold_boot(config: MachineConfig) -> Result<Machine> {
        let mut phases = Vec::new();
        let mut mark = |name| phases.push((name, config.started.elapsed().as_micros() as u64));
        mark("start");
        let host = KvmHost::get()?;
        validate(&config, host)?;
        mark("open_kvm");
        let mut vm = Vm::new(host)?;
        mark("create_vm");
        let mem = anonymous_ram(config.mem_size)?;
        vm.register_ram(&mem)?;
        mark("memory");

        let kernel = load_kernel(&mem, &config.kernel, config.protocol)
            .map_err(|e| too_small_hint(e, config.mem_size))?;
        if kernel.kernel_end > ram_end(config.mem_size) {
            return Err(Error::MemoryTooSmall(format!(
                "the kernel ends at {:#x}, past the end of {} MiB of RAM",
                kernel.kernel_end,
                config.mem_size >> 20
            )));
        }

        let pmem = match &config.rootfs {
            Some(path) => {
                if !host.has_readonly_mem() {
                    return Err(Error::HostUnsupported(
                        "KVM lacks KVM_CAP_READONLY_MEM, needed for a read-only rootfs".into(),
                    ));
                }
                let image = Arc::new(PmemImage::open(path)?);
                let state = PmemState {
                    guest_addr: ram_end(config.mem_size).next_multiple_of(PMEM_ALIGN),
                    size: image.size,
                    slot: vm.slots().len() as u32,
                };
                let restore = PmemRestore {
                    vm: &mut vm,
                    image: &image,
                };
                Some(PmemSlot::restore(restore, &state)?)
            }
            None => None,
        };
        mark("load_kernel");
        vm.create_platform()?;
        mark("irqchip");
        let mut map = memory_map(
            config.mem_size,
            pmem.as_ref().map(|p| (p.guest_addr, p.image.size)),
        );
        if kernel.is_linux {
            // Its agent reaches the mailbox through /dev/mem, which only
            // opens memory the kernel does not own.
            reserve(
                &mut map,
                vmfork_guest_abi::MAILBOX_START,
                vmfork_guest_abi::MAILBOX_END,
            );
        }

        let mut cmdline = config.cmdline.clone().into_bytes();
        cmdline.push(0);
        write(&mem, &cmdline, CMDLINE_START, "the command line")?;

        let initrd = match &config.initrd {
            Some(path) => Some(load_initrd(
                &mem,
                path,
                config.mem_size,
                kernel.kernel_end,
                kernel.setup_header.map(|h| u64::from(h.initrd_addr_max)),
            )?),
            None => None,
        };
        match kernel.entry {
            Entry::Linux64 { .. } => {
                let zero_page =
                    params::zero_page(kernel.setup_header, cmdline.len(), &map, initrd)?;
                params::write_zero_page(&mem, &zero_page)?;
                write(&mem, &paging::identity_tables(), PML4_START, "page tables")?;
            }
            Entry::Pvh { .. } => params::write_pvh_start_info(&mem, &map, initrd)?,
        }
        let gdt: Vec<u8> = gdt::boot_gdt()
            .iter()
            .flat_map(|d| d.to_le_bytes())
            .collect();
        write(&mem, &gdt, BOOT_GDT_START, "the boot GDT")?;
        write(&mem, &0u64.to_le_bytes(), BOOT_IDT_START, "the boot IDT")?;
        mptable::setup_mptable(&mem, config.vcpus)?;
        mark("boot_structures");

        let supported = host.supported_cpuid()?;
        let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
        for index in 0..config.vcpus {
            let vcpu = Vcpu::new(&vm, index)?;
            let cpuid = vcpu_cpuid(supported, index, config.vcpus)?;
            configure_vcpu(&vcpu.fd, &cpuid, index, kernel.entry)?;
            vcpus.push(vcpu);
        }

        mark("vcpus");
        let serial = SerialPort::new(&vm.fd, config.console)?;
        mark("devices");
        let kernel_info = KernelInfo {
            source: config.kernel.describe(),
            sha256: config.kernel.sha256()?,
            cmdline: config.cmdline.clone(),
        };
        Ok(Machine {
            vcpus,
            vm,
            ram: GuestRam::owned(mem),
            pmem,
            bus: Arc::new(Mutex::new(PortIoBus::new(serial))),
            control: Control::new(config.started, config.exit_on_ready),
            host,
            phases,
            origin: Arc::new(Origin {
                kernel: kernel_info,
                template: None,
                template_sha256: None,
                exec: None,
            }),
        })
    }
}

/// linux-loader reports "cannot write guest memory" for a kernel larger
/// than RAM; say what the user can do about it.
fn too_small_hint(e: Error, mem_size: u64) -> Error {
    match e {
        Error::KernelLoad(msg) if msg.contains("guest memory") || msg.contains("Guest memory") => {
            Error::MemoryTooSmall(format!(
                "{msg}: the kernel does not fit in {} MiB of RAM; raise --mem",
                mem_size >> 20
            ))
        }
        other => other,
    }
}
