//! The ready/exit port: how a vmfork guest says "ready", "exit with N",
//! "I crashed" and "acknowledged", and where it parks waiting for work.
//! The protocol is documented in docs/guest-abi.md.

pub const READY_PORT: u16 = 0x0df0;
/// An `in` from this port is an acknowledgement of the last command
/// followed by a park on READY_PORT: one exit instead of two.
pub const ACK_WAIT_PORT: u16 = 0x0df4;

pub const READY: u32 = 0x5245_4459;
const EXIT_TAG: u32 = 0x4558_0000;
const PANIC_TAG: u32 = 0x504e_0000;
const ACK_TAG: u32 = 0x4143_0000;

/// Commands returned to a guest parked in an `in` from the port.
pub const CMD_PING: u32 = 1;
pub const CMD_EXIT: u32 = 2;
/// Delivered to a guest whose parked `in` is completed for a snapshot: it
/// is what the guest sees first after every restore.
pub const CMD_RESUMED: u32 = 3;
/// DIRTY n: the guest writes one byte in each of n heap pages.
pub const CMD_DIRTY: u32 = 4;

pub fn dirty_command(pages: u32) -> Option<u32> {
    (pages < 1 << 24).then_some(CMD_DIRTY | (pages << 8))
}

/// A command word as people name it, for messages.
pub fn command_name(command: u32) -> String {
    match command {
        CMD_PING => "PING".into(),
        CMD_EXIT => "EXIT".into(),
        CMD_RESUMED => "RESUMED".into(),
        // serve::mailbox::CMD_INVOKE, CMD_RESUME_INVOKE
        5 => "INVOKE".into(),
        6 => "RESUME_INVOKE".into(),
        c if c & 0xff == CMD_DIRTY => format!("DIRTY {}", c >> 8),
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
    match value & 0xffff_0000 {
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
