//! Saving and restoring the rootfs window: a read-only KVM slot over an
//! image mapped once per process. The image's bytes are not state; which
//! image it is, the template's manifest records and checks.

use std::sync::Arc;

use vmfork_snapshot::state::PmemState;
use vmfork_snapshot::Persist;

use crate::error::{Error, Result};
use crate::memory::PmemImage;
use crate::vm::Vm;

/// A VM's rootfs window: the shared image mapping and where its slot is.
/// Cloning it shares the mapping.
#[derive(Clone)]
pub struct PmemSlot {
    pub image: Arc<PmemImage>,
    pub guest_addr: u64,
    pub slot: u32,
}

impl PmemSlot {
    /// Whether `other` is the same mapping at the same place: then a VM
    /// made for one can run the other's clones.
    pub fn same_as(&self, other: &PmemSlot) -> bool {
        Arc::ptr_eq(&self.image, &other.image)
            && self.guest_addr == other.guest_addr
            && self.slot == other.slot
    }
}

pub struct PmemRestore<'a> {
    /// The VM whose slot it is: either with its RAM slots registered and
    /// the next slot free (a fresh VM, before its irqchip, since a slot
    /// added after KVM_CREATE_IRQCHIP costs milliseconds), or with this
    /// very slot already registered over `image` (a VM shell).
    pub vm: &'a mut Vm,
    pub image: &'a Arc<PmemImage>,
}

impl Persist for PmemSlot {
    type State = PmemState;
    type RestoreArgs<'a> = PmemRestore<'a>;
    type Error = Error;

    fn save(&self) -> Result<PmemState> {
        Ok(PmemState {
            guest_addr: self.guest_addr,
            size: self.image.size,
            slot: self.slot,
        })
    }

    fn restore(args: PmemRestore<'_>, state: &PmemState) -> Result<PmemSlot> {
        let PmemRestore { vm, image } = args;
        if image.size != state.size {
            return Err(Error::RootfsChanged {
                path: image.path.clone(),
                what: format!(
                    "it is {} bytes where the saved VM had {}",
                    image.size, state.size
                ),
            });
        }
        let existing = vm.slots().iter().find(|s| s.slot == state.slot).copied();
        match existing {
            Some(s)
                if s.guest_addr == state.guest_addr
                    && s.size == state.size
                    && s.host_addr == image.host_addr()
                    && s.flags & kvm_bindings::KVM_MEM_READONLY != 0 => {}
            Some(_) => {
                return Err(Error::Snapshot(
                    "this VM's rootfs slot maps another image or address than the template's"
                        .into(),
                ))
            }
            None if vm.slots().len() == state.slot as usize => {
                vm.register_readonly(state.guest_addr, state.size, image.host_addr())?;
            }
            None => {
                return Err(Error::Snapshot(format!(
                    "the rootfs belongs in KVM slot {}, but this VM has {} slots",
                    state.slot,
                    vm.slots().len()
                )))
            }
        }
        Ok(PmemSlot {
            image: image.clone(),
            guest_addr: state.guest_addr,
            slot: state.slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm_host::KvmHost;
    use crate::memory::PMEM_SIZE_ALIGN;

    fn image(name: &str) -> Arc<PmemImage> {
        let path = std::env::temp_dir().join(format!("vmfork-pmem-{name}-{}", std::process::id()));
        let mut bytes = vec![0x5a; PMEM_SIZE_ALIGN as usize];
        crate::boot::rootfs_check::stamp_superblock(&mut bytes);
        std::fs::write(&path, bytes).expect("image");
        let image = PmemImage::open(&path).expect("open");
        let _ = std::fs::remove_file(&path);
        Arc::new(image)
    }

    fn vm() -> Vm {
        Vm::new(KvmHost::get().expect("/dev/kvm")).expect("VM")
    }

    const STATE: PmemState = PmemState {
        guest_addr: 1 << 30,
        size: PMEM_SIZE_ALIGN,
        slot: 0,
    };

    #[test]
    fn a_window_saves_and_restores_through_the_state_file_encoding() {
        let image = image("roundtrip");
        let mut first = vm();
        let slot = PmemSlot::restore(
            PmemRestore {
                vm: &mut first,
                image: &image,
            },
            &STATE,
        )
        .expect("register");
        let saved = slot.save().expect("save");
        assert_eq!(saved, STATE);
        let bytes = vmfork_snapshot::encode(&Some(saved)).expect("encode");
        let decoded: Option<PmemState> = vmfork_snapshot::decode(&bytes).expect("decode");
        assert_eq!(decoded, Some(STATE));
        let registered = first.slots()[0];
        assert_eq!(registered.host_addr, image.host_addr());
        assert_ne!(registered.flags & kvm_bindings::KVM_MEM_READONLY, 0);

        // A VM that has the slot already (a shell) keeps it.
        let again = PmemSlot::restore(
            PmemRestore {
                vm: &mut first,
                image: &image,
            },
            &STATE,
        )
        .expect("same image, same place");
        assert!(again.same_as(&slot));
        assert_eq!(first.slots().len(), 1);
    }

    #[test]
    fn another_image_or_size_is_refused() {
        let image = image("refuse");
        let mut vm = vm();
        let bigger = PmemState {
            size: 2 * PMEM_SIZE_ALIGN,
            ..STATE
        };
        let restore = |vm, image| PmemSlot::restore(PmemRestore { vm, image }, &bigger);
        assert!(matches!(
            restore(&mut vm, &image),
            Err(Error::RootfsChanged { .. })
        ));
        PmemSlot::restore(
            PmemRestore {
                vm: &mut vm,
                image: &image,
            },
            &STATE,
        )
        .expect("register");
        let other = self::image("refuse-other");
        let err = PmemSlot::restore(
            PmemRestore {
                vm: &mut vm,
                image: &other,
            },
            &STATE,
        );
        assert!(matches!(err, Err(Error::Snapshot(_))));
        let later = PmemState { slot: 3, ..STATE };
        let err = PmemSlot::restore(
            PmemRestore {
                vm: &mut vm,
                image: &image,
            },
            &later,
        );
        assert!(matches!(err, Err(Error::Snapshot(_))));
    }
}
