//! Loading a template (with every check that keeps a bad one from being
//! used) and restoring a machine from it.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmfork_snapshot::state::{MachineState, MemoryState};
use vmfork_snapshot::Persist;

use super::clone_info::{CloneInfo, CloneInfoRestore};
use super::files::{open_template_file, trusted_owner};
use super::manifest::{KernelInfo, Manifest, TemplateKind, MEMORY_FILE, STATE_FILE};
use super::trust::TrustPolicy;
use vmfork_machine::control::Control;
use vmfork_machine::devices::console::Console;
use vmfork_machine::devices::pci_host::PciHostBridge;
use vmfork_machine::devices::serial::SerialPort;
use vmfork_machine::devices::PortIoBus;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::kvm_host::KvmHost;
use vmfork_machine::machine::{Machine, Origin, RestoredParts};
use vmfork_machine::memory::{GuestRam, MemoryGuard, PmemImage, RamGuard};
use vmfork_machine::persist::devices::SerialRestore;
use vmfork_machine::persist::memory::RamArgs;
use vmfork_machine::persist::pmem::{PmemRestore, PmemSlot};
use vmfork_machine::persist::vcpu::VcpuRestore;
use vmfork_machine::persist::vm::{ClockMode, VmRestore};
use vmfork_machine::shell::VmShell;
use vmfork_machine::vcpu::Vcpu;
use vmfork_machine::vm::Vm;

/// Diff templates form a chain back to a full one; a longer chain is
/// either a mistake or a loop.
const MAX_DIFF_DEPTH: usize = 16;

pub struct RestoreOptions {
    pub console: Console,
    pub clock: ClockMode,
    /// Latencies are measured from here.
    pub started: Instant,
    /// Stop the VM at the guest's first acknowledgement after resuming.
    pub exit_on_ack: bool,
    /// Written to the clone-info page with fresh entropy (0 for a plain
    /// restore).
    pub clone_id: u64,
    /// The command a parked guest resumes with instead of RESUMED; only
    /// for templates [`LoadedTemplate::resumes_parked`] says can, and
    /// guests the caller knows understand it.
    pub resume_command: Option<u32>,
}

/// One template's files, checked.
pub struct LoadedTemplate {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// The template's identity: the hex SHA-256 of its `template.json`
    /// as loaded. A diff made from it records this as its base's.
    pub sha256: String,
    pub state: MachineState,
    /// The template whose memory file holds every page not in a diff,
    /// followed by the diffs to apply on top, oldest first.
    pub memory_layers: Vec<MemoryLayer>,
    /// Only this process's user or root can have written the template:
    /// each directory of its chain and every file in them is owned by one
    /// of them and writable by no one else ([`trusted_owner`]), and so is
    /// the path to each, as the load's [`TrustPolicy`] says.
    /// Only then does its recorded kernel digest decide anything
    /// ([`LoadedTemplate::trusted_kernel`], docs/security.md).
    pub trusted: bool,
    /// What machines restored from it record as their origin.
    pub origin: Arc<Origin>,
    /// Its rootfs image, opened, checked and mapped once: every VM
    /// restored from this load gets a read-only slot over this mapping.
    pub rootfs: Option<Arc<PmemImage>>,
}

/// How thoroughly a load checks what the template refers to.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Hash the rootfs image again and compare it with the digest recorded
    /// at build time (its size and identity are checked on every load).
    pub verify_rootfs: bool,
    /// Which templates' recorded facts are believed.
    pub trust: TrustPolicy,
}

/// One memory file of a template chain: where it is, the layout its state
/// records, and the file itself, opened and checked (regular, not through
/// a symlink, exactly the size the layout needs) when the template was
/// loaded, so it is mapped or read as it was checked.
pub struct MemoryLayer {
    pub dir: PathBuf,
    pub layout: MemoryState,
    pub file: Arc<File>,
}

fn bad(dir: &Path, reason: String) -> Error {
    Error::Template {
        path: dir.to_path_buf(),
        reason,
    }
}

impl LoadedTemplate {
    pub fn load(dir: &Path) -> Result<LoadedTemplate> {
        Self::load_with(dir, LoadOptions::default())
    }

    pub fn load_with(dir: &Path, opts: LoadOptions) -> Result<LoadedTemplate> {
        let mut template = Self::load_at_depth(dir, 0, &opts.trust)?;
        // Only the template restored from maps its image; a diff's bases
        // record the same one (checked in load_at_depth).
        template.rootfs = match &template.manifest.rootfs {
            Some(info) => Some(info.open(opts.verify_rootfs)?),
            None => None,
        };
        Ok(template)
    }

    fn load_at_depth(dir: &Path, depth: usize, trust: &TrustPolicy) -> Result<LoadedTemplate> {
        if depth > MAX_DIFF_DEPTH {
            return Err(bad(dir, format!("diff chain deeper than {MAX_DIFF_DEPTH}")));
        }
        let dir = dir
            .canonicalize()
            .map_err(|e| bad(dir, format!("cannot open: {e}")))?;
        let dir_meta =
            std::fs::metadata(&dir).map_err(|e| bad(&dir, format!("cannot open: {e}")))?;
        let (manifest, sha256, manifest_meta) = Manifest::read_identified(&dir)?;
        // Every file's size is checked on its open descriptor before it is
        // read: the state's against the manifest, the memory's against the
        // state.
        let (mut state_file, state_meta) =
            open_template_file(&dir, STATE_FILE, Some(manifest.state_bytes))?;
        let state: MachineState =
            vmfork_snapshot::read_from(&mut state_file, vmfork_snapshot::MAX_STATE_LEN)
                .map_err(|e| bad(&dir, format!("{STATE_FILE}: {e}")))?;
        state
            .validate()
            .map_err(|e| bad(&dir, format!("{STATE_FILE}: {e}")))?;
        let regions: Vec<(u64, u64)> = state
            .memory
            .regions
            .iter()
            .map(|r| (r.guest_addr, r.size))
            .collect();
        let recorded: Vec<(u64, u64)> = manifest
            .memory_regions
            .iter()
            .map(|r| (r.guest_addr, r.size))
            .collect();
        if manifest.vcpus as usize != state.vcpus.len()
            || manifest.mem_size != state.memory.mem_size
            || manifest.memory_bytes != state.memory.file_size()
            || recorded != regions
            || (manifest.kind == TemplateKind::Diff) != state.memory.diff
            || manifest.rootfs.as_ref().map(|r| r.size) != state.pmem.map(|p| p.size)
        {
            return Err(bad(
                &dir,
                format!(
                    "{} and {STATE_FILE} disagree on vCPUs, memory layout, rootfs or kind",
                    super::manifest::MANIFEST_FILE
                ),
            ));
        }
        let (memory_file, memory_meta) =
            open_template_file(&dir, MEMORY_FILE, Some(state.memory.file_size()))?;
        let layer = MemoryLayer {
            dir: dir.clone(),
            layout: state.memory.clone(),
            file: Arc::new(memory_file),
        };
        let mut trusted = [&dir_meta, &manifest_meta, &state_meta, &memory_meta]
            .into_iter()
            .all(trusted_owner)
            && trust.trusts_path(&dir);
        let memory_layers = match (&manifest.base, &manifest.base_sha256) {
            (Some(base_dir), Some(base_sha256)) => {
                let base = Self::load_at_depth(base_dir, depth + 1, trust)?;
                // The recorded identity, not the path, names the base: a
                // base rebuilt (or replaced) since the diff was made holds
                // other memory, and the diff's pages on it would make a VM
                // that never existed.
                if &base.sha256 != base_sha256 {
                    return Err(bad(
                        &dir,
                        format!(
                            "its base {} is not the template it was made from (template.json SHA-256 {}.., the diff records {}..): rebuilt or replaced since",
                            base.dir.display(),
                            &base.sha256[..12],
                            &base_sha256[..12]
                        ),
                    ));
                }
                if base.state.memory.regions != state.memory.regions {
                    return Err(bad(
                        &dir,
                        "its memory layout differs from its base's".into(),
                    ));
                }
                if base.manifest.rootfs != manifest.rootfs || base.state.pmem != state.pmem {
                    return Err(bad(
                        &dir,
                        "its rootfs image or window differs from its base's".into(),
                    ));
                }
                trusted &= base.trusted;
                let mut layers = base.memory_layers;
                layers.push(layer);
                layers
            }
            // Manifest validation gives a diff both and a full template
            // neither.
            _ => vec![layer],
        };
        let origin = Arc::new(Origin {
            kernel: manifest.kernel.clone(),
            template: Some(dir.clone()),
            template_sha256: Some(sha256.clone()),
            exec: manifest.exec.clone(),
        });
        Ok(LoadedTemplate {
            dir,
            manifest,
            sha256,
            state,
            memory_layers,
            trusted,
            origin,
            rootfs: None,
        })
    }

    /// The kernel the manifest records, only if the template is
    /// [`trusted`](LoadedTemplate::trusted): anyone who can write a
    /// template directory can write any digest into it, so an untrusted
    /// template's digest must decide nothing (such as whether its guest
    /// understands RESUME_INVOKE).
    pub fn trusted_kernel(&self) -> Option<&KernelInfo> {
        self.trusted.then_some(&self.manifest.kernel)
    }

    /// Guest RAM: the full template's memory file mapped private (pages are
    /// read lazily and copied only when written), then each diff's pages
    /// copied over it.
    pub fn map_memory(&self) -> Result<GuestRam> {
        let root = &self.memory_layers[0];
        let ram = GuestRam::restore(RamArgs::File(&root.file), &root.layout)?;
        for layer in &self.memory_layers[1..] {
            apply_diff(&ram.mem, layer)?;
        }
        Ok(ram)
    }
}

fn apply_diff(mem: &GuestMemoryMmap, layer: &MemoryLayer) -> Result<()> {
    let MemoryLayer { dir, layout, file } = layer;
    for &(offset, len) in &layout.dirty_ranges {
        // Validation guarantees the range lies inside one region's file span.
        let region = layout
            .regions
            .iter()
            .find(|r| offset >= r.file_offset && offset + len <= r.file_offset + r.size)
            .ok_or_else(|| bad(dir, format!("dirty range {offset:#x} spans regions")))?;
        let guest = GuestAddress(region.guest_addr + (offset - region.file_offset));
        let host = mem
            .get_host_address(guest)
            .map_err(|e| Error::GuestMemory(format!("diff target: {e}")))?;
        // SAFETY: `host..host+len` lies inside one mapped region (checked
        // above against the same layout the mapping was built from), and no
        // vCPU runs yet.
        let target = unsafe { std::slice::from_raw_parts_mut(host, len as usize) };
        file.read_exact_at(target, offset)
            .map_err(|e| bad(dir, format!("reading {MEMORY_FILE}: {e}")))?;
    }
    Ok(())
}

/// Restores the template's vCPU states into `pooled` (a shell's vCPUs,
/// by index) or into vCPUs created now. `resume_command`: see
/// [`RestoreOptions::resume_command`]. Part of [`restore`], and how a VM
/// shell's vCPUs are restored ahead of its clone.
pub fn restore_vcpus(
    template: &LoadedTemplate,
    vm: &Vm,
    mut pooled: Vec<Vcpu>,
    resume_command: Option<u32>,
) -> Result<Vec<Vcpu>> {
    let resume_rax = match resume_command {
        Some(command) if template.resumes_parked() => Some(u64::from(command)),
        Some(_) => {
            return Err(Error::Snapshot(
                "this template's guest was not saved parked in its ready-port `in`".into(),
            ))
        }
        None => None,
    };
    pooled.reverse();
    template
        .state
        .vcpus
        .iter()
        .map(|s| {
            let vcpu = match pooled.pop() {
                Some(v) if v.index == s.index => v,
                _ => Vcpu::new(vm, s.index)?,
            };
            Vcpu::restore(VcpuRestore { vcpu, resume_rax }, s)
        })
        .collect()
}

impl LoadedTemplate {
    /// Whether every vCPU's LAPIC timer is disarmed in the template. Only
    /// then may its vCPU state be restored ahead of a clone: an armed
    /// timer would start counting (and firing, in the host) while the
    /// shell waits.
    pub fn timers_disarmed(&self) -> bool {
        self.state.vcpus.iter().all(|v| {
            let reg = |offset: usize| {
                let b = &v.lapic.regs[offset..offset + 4];
                u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
            };
            let lvt_timer = reg(APIC_LVTT);
            let deadline = v
                .msrs
                .iter()
                .find(|m| m.index == MSR_IA32_TSC_DEADLINE)
                .map_or(0, |m| m.data);
            lvt_timer & APIC_LVT_MASKED != 0
                || match (lvt_timer >> 17) & 3 {
                    APIC_TIMER_TSC_DEADLINE => deadline == 0,
                    _ => reg(APIC_TMICT) == 0,
                }
        })
    }

    /// Whether the template's one vCPU was saved parked in a 32-bit `in`
    /// from the ready port, completed with RESUMED: then RAX holds that
    /// command word, and a restore may put another there for the guest
    /// to resume with (docs/guest-abi.md, RESUME_INVOKE).
    pub fn resumes_parked(&self) -> bool {
        let state = &self.state;
        state.devices.ready_port.parked
            && matches!(state.vcpus.as_slice(),
                [v] if v.regs.rax == u64::from(vmfork_machine::devices::ready_port::CMD_RESUMED))
    }
}

/// LAPIC register offsets and fields (Intel SDM vol. 3, 11.5.1), and the
/// TSC-deadline MSR.
const APIC_LVTT: usize = 0x320;
const APIC_TMICT: usize = 0x380;
const APIC_LVT_MASKED: u32 = 1 << 16;
const APIC_TIMER_TSC_DEADLINE: u32 = 2;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// Where a restored machine's guest RAM comes from, with what keeps its
/// backing alive. How a sealed memfd is made or a userfaultfd handler
/// runs is vmfork-clone's business; a restore only needs the mapping.
pub enum RamSource<'a> {
    /// The template's own `memory` file mapped private, with each diff's
    /// pages copied over it.
    TemplateFile,
    /// A private mapping, made here, of a sealed memfd holding the
    /// template's whole memory.
    Memfd(&'a Arc<File>),
    /// Anonymous memory, mapped by the caller, that `server` (a userfaultfd
    /// handler, dropped after the memory) fills on first touch.
    Uffd {
        mem: GuestMemoryMmap,
        server: MemoryGuard,
    },
    /// A VM shell whose slots already map `mem` ([`VmShell::map_private`]),
    /// and the handler serving its faults for a userfaultfd clone.
    Shell {
        /// Boxed: a shell is most of a VM, and the other sources are small.
        shell: Box<VmShell>,
        mem: GuestMemoryMmap,
        server: Option<MemoryGuard>,
    },
}

/// Restores a machine from `template`, ready to start: a walk over its
/// state in the order docs/snapshot-format.md gives (memory, clone-info
/// page, VM, vCPUs, devices).
pub fn restore(
    template: &LoadedTemplate,
    memory: RamSource<'_>,
    opts: RestoreOptions,
) -> Result<Machine> {
    let mut phases = Vec::new();
    let mut mark = |name| phases.push((name, opts.started.elapsed().as_micros() as u64));
    let host = KvmHost::get()?;
    let state = &template.state;
    let mapped = |mem, reserved, server| {
        let guard = RamGuard { reserved, server };
        GuestRam::restore(RamArgs::Mapped(GuestRam { mem, guard }), &state.memory)
    };
    let (ram, shell) = match memory {
        RamSource::TemplateFile => (template.map_memory()?, None),
        RamSource::Memfd(file) => (GuestRam::restore(RamArgs::File(file), &state.memory)?, None),
        RamSource::Uffd { mem, server } => (mapped(mem, None, Some(server))?, None),
        RamSource::Shell { shell, mem, server } => {
            let VmShell {
                vm,
                vcpus,
                serial_irq,
                ram,
                vcpus_restored,
                pmem,
                ..
            } = *shell;
            let restored = vcpus_restored == Some(opts.resume_command);
            let shell = (vm, vcpus, serial_irq, restored, pmem);
            (mapped(mem, Some(ram), server)?, Some(shell))
        }
    };
    let clone_info = CloneInfoRestore {
        mem: &ram.mem,
        clone_id: opts.clone_id,
    };
    CloneInfo::restore(clone_info, &())?;
    mark("memory");
    let (vm, pooled_vcpus, serial_irq, vcpus_restored, pmem) = match shell {
        Some((mut vm, vcpus, serial_irq, restored, pmem)) => {
            let pmem = restore_pmem(template, &mut vm, pmem)?;
            (vm, vcpus, Some(serial_irq), restored, pmem)
        }
        None => {
            let mut vm = Vm::new(host)?;
            vm.register_ram(&ram.mem)?;
            // Before the irqchip, where a slot is cheap (Vm::new).
            let pmem = restore_pmem(template, &mut vm, None)?;
            vm.create_platform()?;
            (vm, Vec::new(), None, false, pmem)
        }
    };
    mark("create_vm");
    let vm = Vm::restore(
        VmRestore {
            vm,
            clock: opts.clock,
        },
        &state.vm,
    )?;
    let vcpus = if vcpus_restored {
        pooled_vcpus
    } else {
        restore_vcpus(template, &vm, pooled_vcpus, opts.resume_command)?
    };
    mark("restore_vcpus");
    let serial = SerialPort::restore(
        SerialRestore {
            vm: &vm.fd,
            irq: serial_irq,
            console: opts.console,
        },
        &state.devices.serial,
    )?;
    let pci_host = PciHostBridge::restore((), &state.devices.pci_host)?;
    mark("devices");
    let commands = vmfork_machine::control::CommandChannel::restore(
        vmfork_machine::persist::devices::CommandRestore {
            started: opts.started,
            exit_on_ack: opts.exit_on_ack,
        },
        &state.devices.ready_port,
    )?;
    Machine::from_restored(RestoredParts {
        vcpus,
        vm,
        ram,
        pmem,
        bus: PortIoBus::restored(serial, pci_host),
        control: Control::around(commands),
        phases,
        origin: template.origin.clone(),
    })
}

/// The restored VM's rootfs window over the template's one mapping of its
/// image: registered now in a fresh VM, or, in a VM shell or recycled VM
/// (`existing`), checked to be that same image at the same place.
fn restore_pmem(
    template: &LoadedTemplate,
    vm: &mut Vm,
    existing: Option<PmemSlot>,
) -> Result<Option<PmemSlot>> {
    let (state, image) = match (&template.state.pmem, &template.rootfs) {
        (Some(state), Some(image)) => (state, image),
        (None, None) if existing.is_none() => return Ok(None),
        (None, None) => {
            return Err(Error::Snapshot(
                "this VM maps a rootfs image; the template it would run has none".into(),
            ))
        }
        _ => {
            return Err(bad(
                &template.dir,
                "its rootfs image is not loaded (load it with LoadedTemplate::load)".into(),
            ))
        }
    };
    if let Some(existing) = &existing {
        if !Arc::ptr_eq(&existing.image, image) {
            return Err(Error::Snapshot(format!(
                "this VM maps rootfs image {}, not the template's {} as loaded here",
                existing.image.path.display(),
                image.path.display()
            )));
        }
    }
    PmemSlot::restore(PmemRestore { vm, image }, state).map(Some)
}
