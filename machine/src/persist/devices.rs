//! Saving and restoring the serial port.

use kvm_ioctls::VmFd;
use vmfork_snapshot::state::SerialState;
use vmfork_snapshot::Persist;

use crate::devices::console::Console;
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
