//! VMFork: many clones of one template, each resumed in its own VM with
//! copy-on-write memory over the template's pages. docs/clone.md describes
//! the memory backends and what a clone costs.

pub mod memfd;
pub mod shell;

use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use crate::devices::console::Console;
use crate::error::{Error, Result};
use crate::machine::Machine;
use crate::persist::vm::ClockMode;
use crate::template::{restore_into, LoadedTemplate, RestoreOptions};
use memfd::SealedMemory;
use shell::VmShell;

/// Where a clone's RAM comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `MAP_PRIVATE` of a sealed memfd loaded once (the default).
    Memfd,
    /// `MAP_PRIVATE` of the template's `memory` file (Firecracker-style).
    File,
}

enum Source {
    Memfd(SealedMemory),
    File(std::fs::File),
}

/// Everything shared by the clones of one template, prepared once.
pub struct CloneFactory {
    pub template: LoadedTemplate,
    source: Source,
}

impl CloneFactory {
    pub fn new(template: LoadedTemplate, backend: Backend) -> Result<CloneFactory> {
        let source = match backend {
            Backend::Memfd => Source::Memfd(SealedMemory::load(&template)?),
            Backend::File => {
                if template.memory_layers.len() > 1 {
                    return Err(Error::InvalidArgument(
                        "--backend file needs a full template; use memfd for a diff".into(),
                    ));
                }
                let path = template.dir.join(crate::template::manifest::MEMORY_FILE);
                let file = std::fs::File::open(&path).map_err(|source| Error::Image {
                    what: "template memory",
                    path,
                    source,
                })?;
                Source::File(file)
            }
        };
        Ok(CloneFactory { template, source })
    }

    fn memory(&self) -> Result<GuestMemoryMmap> {
        match &self.source {
            Source::Memfd(sealed) => sealed.map_private(),
            Source::File(_) => self.template.map_memory(),
        }
    }

    fn backing_file(&self) -> &std::fs::File {
        match &self.source {
            Source::Memfd(sealed) => sealed.as_file(),
            Source::File(file) => file,
        }
    }

    pub fn sealed_memory(&self) -> Option<&SealedMemory> {
        match &self.source {
            Source::Memfd(sealed) => Some(sealed),
            Source::File(_) => None,
        }
    }

    /// An empty VM for this template, made ahead of any clone request.
    pub fn shell(&self) -> Result<VmShell> {
        VmShell::new(
            &self.template.state.memory,
            self.template.state.vcpus.len() as u8,
        )
    }

    /// One clone, ready to start: its own VM, its own id and entropy, its
    /// clock advanced to the host's present. Latencies are measured from
    /// `requested`.
    /// With a `shell`, the clone only maps memory into it, restores state and
    /// runs; without one it also creates its VM and vCPUs.
    pub fn clone_vm(
        &self,
        clone_id: u64,
        shell: Option<VmShell>,
        console: Console,
        requested: Instant,
    ) -> Result<Machine> {
        let mem = match &shell {
            Some(shell) => shell.map_private(self.backing_file())?,
            None => self.memory()?,
        };
        restore_into(
            &self.template,
            mem,
            shell,
            RestoreOptions {
                console,
                clock: ClockMode::HostNow,
                started: requested,
                exit_on_ack: false,
                clone_id,
            },
        )
    }
}
