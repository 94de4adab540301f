//! Saving and restoring the VM-wide kernel state: the two PICs, the IOAPIC,
//! the PIT and kvmclock.

use kvm_bindings::{
    kvm_irqchip, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE,
};
use vmfork_snapshot::state::VmState;
use vmfork_snapshot::Persist;

use crate::error::{Error, Result};
use crate::vm::Vm;

/// How the guest's kvmclock is set on restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockMode {
    /// Exactly as saved: the guest sees no time pass while it was a file.
    AsSaved,
    /// Advanced by the host time elapsed since the snapshot, so the guest's
    /// clock agrees with the host's present (what clones want).
    HostNow,
}

pub struct VmRestore {
    /// A VM with its memory slots and irqchip/PIT already created.
    pub vm: Vm,
    pub clock: ClockMode,
}

fn get_chip(vm: &Vm, chip_id: u32) -> Result<kvm_irqchip> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.fd
        .get_irqchip(&mut chip)
        .map_err(Error::kvm("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

impl Persist for Vm {
    type State = VmState;
    type RestoreArgs<'a> = VmRestore;
    type Error = Error;

    fn save(&self) -> Result<VmState> {
        Ok(VmState {
            pic_master: get_chip(self, KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: get_chip(self, KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: get_chip(self, KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(Error::kvm("KVM_GET_PIT2"))?,
            clock: self.fd.get_clock().map_err(Error::kvm("KVM_GET_CLOCK"))?,
        })
    }

    fn restore(args: VmRestore, s: &VmState) -> Result<Vm> {
        let vm = args.vm;
        for (chip, expected) in [
            (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
            (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
            (&s.ioapic, KVM_IRQCHIP_IOAPIC),
        ] {
            if chip.chip_id != expected {
                return Err(Error::Snapshot(format!(
                    "irqchip state has chip id {} where {expected} belongs",
                    chip.chip_id
                )));
            }
            vm.fd
                .set_irqchip(chip)
                .map_err(Error::kvm("KVM_SET_IRQCHIP"))?;
        }
        vm.fd.set_pit2(&s.pit).map_err(Error::kvm("KVM_SET_PIT2"))?;
        let mut clock = s.clock;
        match args.clock {
            // KVM_SET_CLOCK with KVM_CLOCK_REALTIME adds the host realtime
            // elapsed since `clock.realtime` to the value.
            ClockMode::HostNow if clock.flags & KVM_CLOCK_REALTIME != 0 => {
                clock.flags = KVM_CLOCK_REALTIME;
            }
            _ => clock.flags = 0,
        }
        vm.fd
            .set_clock(&clock)
            .map_err(Error::kvm("KVM_SET_CLOCK"))?;
        Ok(vm)
    }
}
