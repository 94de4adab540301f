//! Saving and restoring guest RAM's layout. The contents are not part of
//! the state: they are the template's `memory` file, written beside it.

use std::fs::File;
use std::sync::Arc;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmfork_snapshot::state::{MemoryRegion, MemoryState};
use vmfork_snapshot::Persist;

use crate::error::{Error, Result};
use crate::memory::{map_file_private, GuestRam, RamGuard};

/// Where restored guest RAM comes from.
pub enum RamArgs<'a> {
    /// A file holding the whole memory, laid out as the state says (a full
    /// template's `memory`, a sealed memfd): mapped private here, region by
    /// region, so pages are read lazily and copied only when written.
    File(&'a Arc<File>),
    /// Memory the caller mapped already (a VM shell's slots, anonymous
    /// memory a userfaultfd handler fills), with what must outlive it; only
    /// checked against the state's layout.
    Mapped(GuestRam),
}

impl Persist for GuestRam {
    type State = MemoryState;
    type RestoreArgs<'a> = RamArgs<'a>;
    type Error = Error;

    /// The layout of a full snapshot: regions back to back in the memory
    /// file. A diff snapshot adds its dirty ranges (template crate).
    fn save(&self) -> Result<MemoryState> {
        let mut regions = Vec::with_capacity(self.mem.num_regions());
        let mut file_offset = 0;
        for r in self.mem.iter() {
            regions.push(MemoryRegion {
                guest_addr: r.start_addr().0,
                size: r.len(),
                file_offset,
            });
            file_offset += r.len();
        }
        Ok(MemoryState {
            mem_size: file_offset,
            regions,
            diff: false,
            dirty_ranges: Vec::new(),
        })
    }

    fn restore(args: RamArgs<'_>, state: &MemoryState) -> Result<GuestRam> {
        match args {
            RamArgs::File(file) => Ok(GuestRam {
                mem: map_file_private(file, &state.regions)?,
                guard: RamGuard::default(),
            }),
            RamArgs::Mapped(ram) => {
                if !same_layout(&ram, state) {
                    return Err(Error::GuestMemory(
                        "the memory given to a restore is not laid out as its state says".into(),
                    ));
                }
                Ok(ram)
            }
        }
    }
}

fn same_layout(ram: &GuestRam, state: &MemoryState) -> bool {
    ram.mem.num_regions() == state.regions.len()
        && ram
            .mem
            .iter()
            .zip(&state.regions)
            .all(|(m, s)| m.start_addr().0 == s.guest_addr && m.len() == s.size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    fn anonymous(ranges: &[(u64, usize)]) -> GuestRam {
        let ranges: Vec<_> = ranges.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
        GuestRam::owned(GuestMemoryMmap::from_ranges(&ranges).expect("map"))
    }

    #[test]
    fn save_lays_regions_back_to_back() {
        let state = anonymous(&[(0, 0x4000), (0x10000, 0x2000)])
            .save()
            .expect("save");
        assert_eq!(state.mem_size, 0x6000);
        assert_eq!(
            state.regions,
            [
                MemoryRegion {
                    guest_addr: 0,
                    size: 0x4000,
                    file_offset: 0
                },
                MemoryRegion {
                    guest_addr: 0x10000,
                    size: 0x2000,
                    file_offset: 0x4000
                },
            ]
        );
        assert!(!state.diff && state.dirty_ranges.is_empty());
        state.validate().expect("a saved layout validates");
    }

    #[test]
    fn mapped_memory_must_match_the_layout() {
        let state = anonymous(&[(0, 0x4000)]).save().expect("save");
        assert!(GuestRam::restore(RamArgs::Mapped(anonymous(&[(0, 0x4000)])), &state).is_ok());
        for other in [
            &[(0, 0x2000)][..],
            &[(0x1000, 0x4000)],
            &[(0, 0x2000), (0x10000, 0x2000)],
        ] {
            assert!(GuestRam::restore(RamArgs::Mapped(anonymous(other)), &state).is_err());
        }
    }

    #[test]
    fn file_is_mapped_as_the_layout_says() {
        use std::io::Write;
        use vm_memory::Bytes;
        let state = anonymous(&[(0, 0x2000), (0x10000, 0x1000)])
            .save()
            .expect("save");
        let mut file = tempfile_in_tmp();
        let mut bytes = vec![0u8; 0x3000];
        bytes[0x2000] = 0xab;
        file.write_all(&bytes).expect("write");
        let ram = GuestRam::restore(RamArgs::File(&Arc::new(file)), &state).expect("map");
        let mut b = [0u8; 1];
        ram.mem
            .read_slice(&mut b, GuestAddress(0x10000))
            .expect("read");
        assert_eq!(b[0], 0xab);
    }

    fn tempfile_in_tmp() -> File {
        let path = std::env::temp_dir().join(format!("vmfork-ram-test-{}", std::process::id()));
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create");
        let _ = std::fs::remove_file(&path);
        file
    }
}
