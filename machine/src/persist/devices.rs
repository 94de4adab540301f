//! Saving and restoring the devices: the serial port, the PCI host
//! bridge and the ready port (its [`CommandChannel`]).

use std::time::Instant;

use kvm_ioctls::VmFd;
use vmfork_snapshot::state::{PciHostState, ReadyPortState, SerialState};
use vmfork_snapshot::Persist;

use crate::control::CommandChannel;
use crate::devices::console::Console;
use crate::devices::pci_host::PciHostBridge;
use crate::devices::ready_port::CMD_RESUMED;
use crate::devices::serial::SerialPort;
use crate::error::{Error, Result};

pub struct SerialRestore<'a> {
    pub vm: &'a VmFd,
    /// A pre-registered interrupt line (from a VM shell), if any.
    pub irq: Option<crate::devices::serial::IrqTrigger>,
    pub console: Console,
}

impl Persist for SerialPort {
    type State = SerialState;
    type RestoreArgs<'a> = SerialRestore<'a>;
    type Error = Error;

    fn save(&self) -> Result<SerialState> {
        let s = self.state();
        Ok(SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        })
    }

    fn restore(args: SerialRestore<'_>, s: &SerialState) -> Result<SerialPort> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        SerialPort::from_state(args.vm, args.irq, &state, args.console)
    }
}

impl Persist for PciHostBridge {
    type State = PciHostState;
    type RestoreArgs<'a> = ();
    type Error = Error;

    fn save(&self) -> Result<PciHostState> {
        Ok(PciHostState {
            config_address: self.config_address(),
        })
    }

    fn restore(_: (), s: &PciHostState) -> Result<PciHostBridge> {
        Ok(PciHostBridge::from_address(s.config_address))
    }
}

pub struct CommandRestore {
    /// The instant latencies (the first acknowledgement) are measured from.
    pub started: Instant,
    /// Stop the VM at the guest's first acknowledgement after the restore.
    pub exit_on_ack: bool,
}

impl Persist for CommandChannel {
    type State = ReadyPortState;
    type RestoreArgs<'a> = CommandRestore;
    type Error = Error;

    /// The machine is paused: nothing changes between the reads.
    fn save(&self) -> Result<ReadyPortState> {
        Ok(ReadyPortState {
            ready: self.ready_at().is_some(),
            acks: self.acks(),
            parked: self.is_parked(),
        })
    }

    /// A guest saved parked in its `in` is resumed by the vCPU restore
    /// (its `in` completes with RESUMED), so it is not parked here.
    fn restore(args: CommandRestore, s: &ReadyPortState) -> Result<CommandChannel> {
        let channel = CommandChannel::restored(args.started, s.acks, args.exit_on_ack);
        if !s.parked {
            // Saved between commands: the guest will park again shortly,
            // and must learn it was resumed then.
            channel.send_command(CMD_RESUMED);
        }
        Ok(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Control;

    fn restore(state: &ReadyPortState) -> CommandChannel {
        let args = CommandRestore {
            started: Instant::now(),
            exit_on_ack: false,
        };
        CommandChannel::restore(args, state).expect("restore")
    }

    #[test]
    fn pci_host_latch_round_trips() {
        let saved = PciHostState {
            config_address: 0x8000_0008,
        };
        let bridge = PciHostBridge::restore((), &saved).expect("restore");
        assert_eq!(bridge.save().ok(), Some(saved));
    }

    #[test]
    fn saves_ready_acks_and_park() {
        let control = Control::new(Instant::now(), false);
        let commands = control.commands();
        assert_eq!(commands.save().ok(), Some(ReadyPortState::default()));
        commands.mark_ready();
        commands.mark_ack();
        commands.parked_with(true);
        let saved = ReadyPortState {
            ready: true,
            acks: 2,
            parked: true,
        };
        assert_eq!(commands.save().ok(), Some(saved));
    }

    #[test]
    fn guest_saved_between_commands_round_trips_and_gets_resumed() {
        let saved = ReadyPortState {
            ready: true,
            acks: 5,
            parked: false,
        };
        let commands = restore(&saved);
        assert_eq!(commands.save().ok(), Some(saved));
        assert_eq!(commands.take_command(), Some(CMD_RESUMED));
        assert!(!commands.command_pending());
    }

    #[test]
    fn guest_saved_parked_is_resumed_by_its_vcpu_not_a_command() {
        let saved = ReadyPortState {
            ready: true,
            acks: 5,
            parked: true,
        };
        let commands = restore(&saved);
        assert!(!commands.command_pending());
        let unparked = ReadyPortState {
            parked: false,
            ..saved
        };
        assert_eq!(commands.save().ok(), Some(unparked));
        assert_eq!(commands.ready_at(), Some(std::time::Duration::ZERO));
        assert_eq!(commands.first_ack_at(), None);
    }

    #[test]
    fn exit_on_ack_stops_at_the_first_ack_after_restore() {
        let args = CommandRestore {
            started: Instant::now(),
            exit_on_ack: true,
        };
        let state = ReadyPortState {
            ready: true,
            acks: 1,
            parked: true,
        };
        let control = Control::around(CommandChannel::restore(args, &state).expect("restore"));
        assert_eq!(control.latch().reason(), None);
        control.commands().mark_ack();
        assert_eq!(
            control.latch().reason(),
            Some(crate::control::StopReason::ReadyReached)
        );
        assert!(control.latch().is_leaving());
    }
}
