//! VMFork: many clones of one template, each resumed in its own VM with
//! copy-on-write memory over the template's pages. docs/clone.md describes
//! the memory backends and what a clone costs.

pub mod memfd;

use std::time::Instant;

use vm_memory::GuestMemoryMmap;

use crate::devices::console::Console;
use crate::error::Result;
use crate::machine::Machine;
use crate::persist::vm::ClockMode;
use crate::template::{restore_with_memory, LoadedTemplate, RestoreOptions};
use memfd::SealedMemory;

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
    File,
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
            Backend::File => Source::File,
        };
        Ok(CloneFactory { template, source })
    }

    fn memory(&self) -> Result<GuestMemoryMmap> {
        match &self.source {
            Source::Memfd(sealed) => sealed.map_private(),
            Source::File => self.template.map_memory(),
        }
    }

    pub fn sealed_memory(&self) -> Option<&SealedMemory> {
        match &self.source {
            Source::Memfd(sealed) => Some(sealed),
            Source::File => None,
        }
    }

    /// One clone, ready to start: its own VM, its own id and entropy, its
    /// clock advanced to the host's present. Latencies are measured from
    /// `requested`.
    pub fn clone_vm(&self, clone_id: u64, console: Console, requested: Instant) -> Result<Machine> {
        restore_with_memory(
            &self.template,
            self.memory()?,
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
