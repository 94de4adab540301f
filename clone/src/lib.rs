//! VMFork: many clones of one template, each resumed in its own VM with
//! copy-on-write memory over the template's pages. docs/clone.md describes
//! the memory backends and what a clone costs.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod fault_inject;
pub mod fleet;
pub mod holder;
pub mod interrupt;
pub mod memfd;
pub mod uffd;
pub mod workers;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use memfd::SealedMemory;
use uffd::{PageServer, PageServerLink, PageSource};
use vmfork_machine::control::StopReason;
use vmfork_machine::devices::console::Console;
use vmfork_machine::error::{Error, Result};
use vmfork_machine::machine::Machine;
use vmfork_machine::memory::MemoryGuard;
use vmfork_machine::persist::vm::ClockMode;
use vmfork_machine::reset::InPlaceReset;
use vmfork_machine::shell::VmShell;
use vmfork_machine::vcpu::threads::Runners;
use vmfork_template::{restore, restore_vcpus, LoadedTemplate, RamSource, RestoreOptions};

/// Where a clone's RAM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `MAP_PRIVATE` of a sealed memfd loaded once (the default).
    Memfd,
    /// `MAP_PRIVATE` of the template's `memory` file (Firecracker-style).
    File,
    /// Empty anonymous memory filled on first touch from the sealed memfd
    /// by a userfaultfd handler.
    Uffd,
}

/// The working set recorded beside a template by `--prefetch`: little-endian
/// u64 memory-file offsets of the pages the first clone touched.
pub const WORKING_SET_FILE: &str = "working-set";

enum Source {
    Memfd(SealedMemory),
    File(std::fs::File),
    Uffd {
        sealed: SealedMemory,
        pages: Arc<PageSource>,
    },
}

/// Everything shared by the clones of one template, prepared once.
pub struct CloneFactory {
    pub template: LoadedTemplate,
    source: Source,
    /// `--prefetch`: the pages to install before a uffd clone resumes.
    prefetch: Option<Vec<u64>>,
    /// `--prefetch` with no saved working set yet: the first clone records.
    recording: Option<Arc<Mutex<Vec<u64>>>>,
    /// Pages served by uffd handlers, over all clones.
    pub uffd_faults: Arc<AtomicU64>,
    /// With the memfd backend: how a finished clone's memory is reset in
    /// place, for warm and recycled VM shells (reset.rs).
    in_place: Option<Arc<InPlaceReset>>,
}

/// One clone request: see [`CloneFactory::clone_vm`].
pub struct CloneOptions {
    /// Written to the clone's clone-info page.
    pub clone_id: u64,
    /// A VM made ahead ([`CloneFactory::shell`], [`CloneFactory::warm_shell`]).
    pub shell: Option<VmShell>,
    pub console: Console,
    /// Latencies are measured from here.
    pub requested: Instant,
    /// The command a guest parked in its `in` resumes with instead of
    /// RESUMED (see [`LoadedTemplate::resumes_parked`]).
    pub resume_command: Option<u32>,
}

/// How long a throwaway clone may take to warm a shell.
const WARM_UP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl CloneFactory {
    pub fn new(template: LoadedTemplate, backend: Backend, prefetch: bool) -> Result<CloneFactory> {
        Self::with_memory(template, None, backend, prefetch)
    }

    /// `sealed`: memory handed over by a template holder; loaded here when
    /// None.
    pub fn with_memory(
        template: LoadedTemplate,
        sealed: Option<SealedMemory>,
        backend: Backend,
        prefetch: bool,
    ) -> Result<CloneFactory> {
        if prefetch && backend != Backend::Uffd {
            return Err(Error::InvalidArgument(
                "--prefetch needs --backend uffd".into(),
            ));
        }
        if sealed.is_some() && backend == Backend::File {
            return Err(Error::InvalidArgument(
                "--holder shares a memfd: use --backend memfd or uffd".into(),
            ));
        }
        let mut sealed = sealed;
        let mut load = |t: &LoadedTemplate| match sealed.take() {
            Some(s) => Ok(s),
            None => SealedMemory::load(t),
        };
        let source = match backend {
            Backend::Memfd => Source::Memfd(load(&template)?),
            Backend::Uffd => {
                let sealed = load(&template)?;
                let pages = Arc::new(PageSource::new(
                    sealed.as_file(),
                    sealed.layout().file_size(),
                )?);
                Source::Uffd { sealed, pages }
            }
            Backend::File => {
                if template.memory_layers.len() > 1 {
                    return Err(Error::InvalidArgument(
                        "--backend file needs a full template; use memfd for a diff".into(),
                    ));
                }
                // The memory file the load checked, not a fresh open of
                // whatever the path names now.
                let path = template.dir.join(vmfork_template::manifest::MEMORY_FILE);
                let file = template.memory_layers[0]
                    .file
                    .try_clone()
                    .map_err(|source| Error::Image {
                        what: "template memory",
                        path,
                        source,
                    })?;
                Source::File(file)
            }
        };
        let (prefetch, recording) = match prefetch {
            false => (None, None),
            true => match read_working_set(&template.dir.join(WORKING_SET_FILE)) {
                Some(pages) => (Some(pages), None),
                None => (None, Some(Arc::new(Mutex::new(Vec::new())))),
            },
        };
        // Without /proc/self/pagemap shells are only ever reset by
        // dropping their memory, which is slower but as correct.
        let in_place = match &source {
            Source::Memfd(sealed) => InPlaceReset::new(sealed.as_file(), &template.state)
                .map_err(|e| tracing::debug!("no in-place resets: {e}"))
                .ok()
                .map(Arc::new),
            _ => None,
        };
        Ok(CloneFactory {
            template,
            source,
            prefetch,
            recording,
            uffd_faults: Arc::new(AtomicU64::new(0)),
            in_place,
        })
    }

    pub fn sealed_memory(&self) -> Option<&SealedMemory> {
        match &self.source {
            Source::Memfd(sealed) | Source::Uffd { sealed, .. } => Some(sealed),
            Source::File(_) => None,
        }
    }

    /// How many working-set pages each clone gets before it resumes.
    pub fn prefetch_pages(&self) -> usize {
        self.prefetch.as_ref().map_or(0, Vec::len)
    }

    /// An empty VM for this template, made ahead of any clone request.
    pub fn shell(&self) -> Result<VmShell> {
        let cpuid: Vec<_> = self
            .template
            .state
            .vcpus
            .iter()
            .map(|v| v.cpuid.clone())
            .collect();
        let t = &self.template;
        let pmem = t.rootfs.as_ref().zip(t.state.pmem.as_ref());
        VmShell::new(&t.state.memory, &cpuid, pmem)
    }

    /// The in-place reset of this template's clones and the memfd their
    /// memory maps, when clones use the memfd backend.
    pub fn in_place_reset(&self) -> Option<(Arc<InPlaceReset>, Arc<std::fs::File>)> {
        match (&self.in_place, &self.source) {
            (Some(reset), Source::Memfd(sealed)) => Some((reset.clone(), sealed.shared_file())),
            _ => None,
        }
    }

    /// A shell that has already run a throwaway clone of this template up
    /// to its first acknowledgement and been reset in place: KVM has then
    /// mapped the pages a resuming clone touches, so a clone in it takes
    /// no page faults for them (each ~45 us on this host). It costs one
    /// clone's time more to make, ahead of any request. Without in-place
    /// resets (uffd and file backends) it is a plain [`Self::shell`].
    /// With `resume_command` its clones resume with that command instead
    /// of RESUMED (see [`CloneOptions::resume_command`]).
    pub fn warm_shell(
        &self,
        runners: Option<&Arc<Runners>>,
        resume_command: Option<u32>,
    ) -> Result<VmShell> {
        let shell = self.shell()?;
        let Some((reset, memfd)) = self.in_place_reset() else {
            return Ok(shell);
        };
        if self.vcpus_reusable().is_err() {
            return Ok(shell);
        }
        let (machine, _) = self.clone_vm(CloneOptions {
            clone_id: 0,
            shell: Some(shell),
            console: Console::Discard,
            requested: Instant::now(),
            resume_command: None,
        })?;
        let commands = machine.control().commands().clone();
        let acks = commands.acks();
        let running = machine.start_on(runners)?;
        let deadline = Some(Instant::now() + WARM_UP_TIMEOUT);
        let up = commands.wait_acks_parked(acks + 1, deadline);
        let machine = running.stop(StopReason::Requested)?;
        if !up {
            return Err(Error::Timeout(format!(
                "warming a VM shell: the throwaway clone did not acknowledge within {} s",
                WARM_UP_TIMEOUT.as_secs()
            )));
        }
        let in_place = Some((reset.as_ref(), memfd.as_ref()));
        match VmShell::recycle(machine, &self.template.state.memory, in_place, false)? {
            Some((shell, _)) => self.prepare(shell, resume_command),
            // Its guest ran ring 0 on the way up (closed): a fresh shell.
            None => self.shell(),
        }
    }

    /// Whether a vCPU that ran a clone of this template can be given the
    /// template's state back in full: not when the template lacks MSRs
    /// this host's KVM lists (unreadable when it was saved), which a
    /// restore would leave as the last clone set them. The error names
    /// them.
    pub fn vcpus_reusable(&self) -> std::result::Result<(), String> {
        for v in &self.template.state.vcpus {
            match vmfork_machine::persist::vcpu::msrs_not_restored(&v.msrs) {
                Ok(missing) if missing.is_empty() => {}
                Ok(missing) => {
                    let list: Vec<String> = missing.iter().map(|m| format!("{m:#x}")).collect();
                    return Err(format!(
                        "vCPU {} lacks MSRs {} that this host's KVM lists",
                        v.index,
                        list.join(", ")
                    ));
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    }

    /// Restores the template's vCPU state into `shell` ahead of its clone,
    /// which then skips the restore's vCPU ioctls (~10-15 us each here, a
    /// dozen of them). Not for templates with an armed LAPIC timer, which
    /// would count and fire meanwhile: their shells are returned as they
    /// are.
    pub fn prepare(&self, mut shell: VmShell, resume_command: Option<u32>) -> Result<VmShell> {
        if !self.template.timers_disarmed() {
            return Ok(shell);
        }
        let vcpus = std::mem::take(&mut shell.vcpus);
        shell.vcpus = restore_vcpus(&self.template, &shell.vm, vcpus, resume_command)?;
        shell.vcpus_restored = Some(resume_command);
        Ok(shell)
    }

    fn anonymous_memory(&self) -> Result<GuestMemoryMmap> {
        let ranges: Vec<(GuestAddress, usize)> = self
            .template
            .state
            .memory
            .regions
            .iter()
            .map(|r| (GuestAddress(r.guest_addr), r.size as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges)
            .map_err(|e| Error::GuestMemory(format!("clone memory: {e}")))
    }

    /// One clone, ready to start: its own VM, its own id and entropy, its
    /// clock advanced to the host's present. In a [`CloneOptions::shell`]
    /// the clone only maps memory into it, restores state and runs; without
    /// one it also creates its VM and vCPUs. Also returns a uffd clone's
    /// link to its page server, through which an owner that gives up on
    /// the clone lets its vCPUs out of their faults
    /// ([`PageServerLink::release_waiters`]).
    pub fn clone_vm(&self, opts: CloneOptions) -> Result<(Machine, Option<Arc<PageServerLink>>)> {
        let CloneOptions {
            clone_id,
            shell,
            console,
            requested,
            resume_command,
        } = opts;
        let mut link = None;
        let memory = match (&self.source, shell) {
            (Source::Memfd(sealed), None) => RamSource::Memfd(sealed.file()),
            (Source::File(_), None) => RamSource::TemplateFile,
            (Source::Uffd { pages, .. }, None) => {
                let mem = self.anonymous_memory()?;
                let (server, server_link) = self.serve_faults(&mem, pages, clone_id)?;
                link = Some(server_link);
                RamSource::Uffd { mem, server }
            }
            (source, Some(shell)) => {
                let mem = shell.map_private(match source {
                    Source::Memfd(sealed) => Some(sealed.as_file()),
                    Source::File(file) => Some(file),
                    Source::Uffd { .. } => None,
                })?;
                let server = match source {
                    Source::Uffd { pages, .. } => {
                        let (server, server_link) = self.serve_faults(&mem, pages, clone_id)?;
                        link = Some(server_link);
                        Some(server)
                    }
                    _ => None,
                };
                RamSource::Shell {
                    shell: Box::new(shell),
                    mem,
                    server,
                }
            }
        };
        let machine = restore(
            &self.template,
            memory,
            RestoreOptions {
                console,
                clock: ClockMode::HostNow,
                started: requested,
                exit_on_ack: false,
                clone_id,
                resume_command,
            },
        )?;
        // From here a dying page server stops this clone with a clear
        // reason (at once, if it already died).
        if let Some(link) = &link {
            link.bind(machine.control().latch().clone());
        }
        Ok((machine, link))
    }

    /// Starts a userfaultfd handler filling `mem` (anonymous, untouched)
    /// from `pages`, after installing the prefetched working set.
    fn serve_faults(
        &self,
        mem: &GuestMemoryMmap,
        pages: &Arc<PageSource>,
        clone_id: u64,
    ) -> Result<(MemoryGuard, Arc<PageServerLink>)> {
        let record = (clone_id == 1).then(|| self.recording.clone()).flatten();
        let prefetch = self.prefetch.as_deref().unwrap_or(&[]);
        let link = Arc::new(PageServerLink::default());
        let guard = uffd::attach(
            mem,
            prefetch,
            PageServer {
                source: pages.clone(),
                record,
                faults: self.uffd_faults.clone(),
                link: link.clone(),
                injection: fault_inject::for_clone(clone_id)?,
            },
        )?;
        Ok((Box::new(guard), link))
    }

    /// After the first clone of a `--prefetch` run acknowledged: save the
    /// pages it touched beside the template for later runs.
    pub fn save_working_set(&self) -> Result<Option<usize>> {
        let Some(rec) = &self.recording else {
            return Ok(None);
        };
        let mut pages = rec.lock().map(|p| p.clone()).unwrap_or_default();
        pages.sort_unstable();
        pages.dedup();
        let bytes: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
        let target = self.template.dir.join(WORKING_SET_FILE);
        let tmp = self
            .template
            .dir
            .join(format!(".{WORKING_SET_FILE}.{}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|_| std::fs::rename(&tmp, &target))
            .map_err(|e| Error::Template {
                path: target,
                reason: format!("saving the working set: {e}"),
            })?;
        Ok(Some(pages.len()))
    }

    pub fn uffd_faults(&self) -> u64 {
        self.uffd_faults.load(Ordering::Relaxed)
    }
}

/// The largest working-set file read: 8 bytes per page, so 32 GiB of
/// guest pages.
const MAX_WORKING_SET_BYTES: u64 = 64 << 20;

/// A working set is only a hint: a missing or malformed one means "record".
fn read_working_set(path: &PathBuf) -> Option<Vec<u64>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Opened as the template's own files are (no symlink, no FIFO to
    // block on) and sized on the descriptor before anything is read.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    let len = meta.len();
    if !meta.is_file() || len == 0 || len % 8 != 0 || len > MAX_WORKING_SET_BYTES {
        return None;
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 != len {
        return None;
    }
    Some(
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .filter(|o| o % 4096 == 0)
            .collect(),
    )
}
