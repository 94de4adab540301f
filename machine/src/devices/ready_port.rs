//! The ready/exit port: how a vmfork guest says "ready", "exit with N",
//! "I crashed" and "acknowledged", and where it parks waiting for work.
//! The protocol is documented in docs/guest-abi.md; its values are
//! defined once, for host and guest, in vmfork-guest-abi.

use vmfork_guest_abi::{command_arg, command_opcode, ACK_TAG, EXIT_TAG, PANIC_TAG, TAG_MASK};
pub use vmfork_guest_abi::{
    dirty_command, ACK_WAIT_PORT, CMD_DIRTY, CMD_EXIT, CMD_PING, CMD_RESUMED, READY, READY_PORT,
};

/// A command word as people name it, for messages.
pub fn command_name(command: u32) -> String {
    match command {
        CMD_PING => "PING".into(),
        CMD_EXIT => "EXIT".into(),
        CMD_RESUMED => "RESUMED".into(),
        vmfork_guest_abi::CMD_INVOKE => "INVOKE".into(),
        vmfork_guest_abi::CMD_RESUME_INVOKE => "RESUME_INVOKE".into(),
        vmfork_guest_abi::CMD_EXEC => "EXEC".into(),
        vmfork_guest_abi::CMD_RESUME_EXEC => "RESUME_EXEC".into(),
        c if command_opcode(c) == CMD_DIRTY => format!("DIRTY {}", command_arg(c)),
        c => format!("{c:#x}"),
    }
}

/// What a 32-bit write to the port means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestSignal {
    Ready,
    Exit(u8),
    Panic(u8),
    Ack(u16),
    /// Any other value: logged and ignored, never fatal to the VMM.
    Unknown(u32),
}

pub fn decode_write(data: &[u8]) -> GuestSignal {
    let Ok(bytes) = <[u8; 4]>::try_from(data) else {
        // Byte or word writes are not part of the protocol.
        let mut padded = [0u8; 4];
        for (p, d) in padded.iter_mut().zip(data) {
            *p = *d;
        }
        return GuestSignal::Unknown(u32::from_le_bytes(padded));
    };
    let value = u32::from_le_bytes(bytes);
    match value & TAG_MASK {
        _ if value == READY => GuestSignal::Ready,
        EXIT_TAG if value & 0xff00 == 0 => GuestSignal::Exit(value as u8),
        PANIC_TAG if value & 0xff00 == 0 => GuestSignal::Panic(value as u8),
        ACK_TAG => GuestSignal::Ack(value as u16),
        _ => GuestSignal::Unknown(value),
    }
}

/// Fills the data of an `in` from the port with a command word; accesses
/// narrower than 32 bits get the low bytes.
pub fn encode_command(command: u32, data: &mut [u8]) {
    for (d, b) in data.iter_mut().zip(command.to_le_bytes()) {
        *d = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_documented_value() {
        assert_eq!(decode_write(&READY.to_le_bytes()), GuestSignal::Ready);
        assert_eq!(
            decode_write(&0x4558_0007u32.to_le_bytes()),
            GuestSignal::Exit(7)
        );
        assert_eq!(
            decode_write(&0x4558_00ffu32.to_le_bytes()),
            GuestSignal::Exit(255)
        );
        assert_eq!(
            decode_write(&0x504e_000du32.to_le_bytes()),
            GuestSignal::Panic(13)
        );
        assert_eq!(
            decode_write(&0x4143_1234u32.to_le_bytes()),
            GuestSignal::Ack(0x1234)
        );
    }

    #[test]
    fn malformed_writes_are_unknown_not_fatal() {
        assert_eq!(
            decode_write(&0x4558_0100u32.to_le_bytes()),
            GuestSignal::Unknown(0x4558_0100)
        );
        assert_eq!(decode_write(&[1]), GuestSignal::Unknown(1));
        assert_eq!(decode_write(&[]), GuestSignal::Unknown(0));
        assert_eq!(
            decode_write(&[1, 2, 3, 4, 5]),
            GuestSignal::Unknown(0x0403_0201)
        );
    }

    #[test]
    fn commands_have_names() {
        assert_eq!(command_name(CMD_PING), "PING");
        assert_eq!(command_name(dirty_command(10).unwrap_or(0)), "DIRTY 10");
        assert_eq!(command_name(0x77), "0x77");
    }

    #[test]
    fn commands_fill_narrow_reads() {
        let mut one = [0xffu8; 1];
        encode_command(CMD_PING, &mut one);
        assert_eq!(one, [1]);
        let mut four = [0u8; 4];
        encode_command(CMD_RESUMED, &mut four);
        assert_eq!(u32::from_le_bytes(four), 3);
    }
}
