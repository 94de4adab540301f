//! The console doorbell (docs/guest-abi.md, "Console records"): one
//! 32-bit `out` to CONSOLE_PORT names a record in guest RAM holding a
//! piece of console output, which goes to the same sink as the UART's
//! bytes. It replaces one exit per byte (about 27 us each on the PVM
//! host) with one exit per line.
//!
//! Everything in the doorbell and the record is the guest's to choose, so
//! it is checked before use: the access width, that the record lies in
//! guest RAM, and that its length is within CONSOLE_RECORD_BYTES. The
//! bytes are copied into a fixed buffer: a guest can make the VMM neither
//! read outside its RAM nor allocate.

use vm_memory::{Bytes, GuestAddress, GuestMemory};
pub use vmfork_guest_abi::{
    CONSOLE_ACK_PORT, CONSOLE_PORT, CONSOLE_PRESENT, CONSOLE_RECORD_BYTES, CONSOLE_RECORD_DATA,
};

/// Why a doorbell carried nothing printable; such a doorbell is counted
/// as an unclaimed port write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadDoorbell {
    /// Not a 32-bit `out`.
    Width(usize),
    /// The record's header or bytes are not all in guest RAM.
    OutsideRam(u32),
    /// The record claims more than CONSOLE_RECORD_BYTES.
    TooLong(u32),
}

/// A record's bytes, read out of guest memory.
pub struct Record {
    bytes: [u8; CONSOLE_RECORD_BYTES],
    len: usize,
}

impl Record {
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Reads the record a doorbell `out` (its data bytes) names.
pub fn read_record<M: GuestMemory>(data: &[u8], mem: &M) -> Result<Record, BadDoorbell> {
    let addr = <[u8; 4]>::try_from(data)
        .map(u32::from_le_bytes)
        .map_err(|_| BadDoorbell::Width(data.len()))?;
    let mut len = [0u8; 4];
    mem.read_slice(&mut len, GuestAddress(u64::from(addr)))
        .map_err(|_| BadDoorbell::OutsideRam(addr))?;
    let len = u32::from_le_bytes(len);
    let n = usize::try_from(len)
        .ok()
        .filter(|&n| n <= CONSOLE_RECORD_BYTES)
        .ok_or(BadDoorbell::TooLong(len))?;
    let mut record = Record {
        bytes: [0; CONSOLE_RECORD_BYTES],
        len: n,
    };
    // addr + 4 + 508 cannot overflow a u64.
    let data_at = GuestAddress(u64::from(addr) + CONSOLE_RECORD_DATA as u64);
    mem.read_slice(&mut record.bytes[..n], data_at)
        .map_err(|_| BadDoorbell::OutsideRam(addr))?;
    Ok(record)
}

/// What an `in` from the port reads: CONSOLE_PRESENT's low bytes.
pub fn read_presence(data: &mut [u8]) {
    for (d, b) in data.iter_mut().zip(CONSOLE_PRESENT.to_le_bytes()) {
        *d = b;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    const RAM: u64 = 0x10000;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).expect("guest memory")
    }

    fn put(mem: &GuestMemoryMmap, addr: u64, len: u32, text: &[u8]) {
        mem.write_slice(&len.to_le_bytes(), GuestAddress(addr))
            .expect("header");
        mem.write_slice(text, GuestAddress(addr + 4)).expect("text");
    }

    fn ring(mem: &GuestMemoryMmap, addr: u32) -> Result<Vec<u8>, BadDoorbell> {
        read_record(&addr.to_le_bytes(), mem).map(|r| r.bytes().to_vec())
    }

    #[test]
    fn a_record_is_read_as_written() {
        let mem = memory();
        put(&mem, 0x1000, 6, b"hello\n");
        assert_eq!(ring(&mem, 0x1000), Ok(b"hello\n".to_vec()));
        put(&mem, 0x2000, 0, b"");
        assert_eq!(ring(&mem, 0x2000), Ok(Vec::new()));
        // A full record ending exactly at the end of RAM.
        let at = RAM - 4 - CONSOLE_RECORD_BYTES as u64;
        put(
            &mem,
            at,
            CONSOLE_RECORD_BYTES as u32,
            &[b'x'; CONSOLE_RECORD_BYTES],
        );
        assert_eq!(
            ring(&mem, at as u32).map(|b| b.len()),
            Ok(CONSOLE_RECORD_BYTES)
        );
    }

    #[test]
    fn hostile_doorbells_are_refused_not_followed() {
        let mem = memory();
        // Lengths past the record, up to u32::MAX: refused, nothing read.
        for len in [CONSOLE_RECORD_BYTES as u32 + 1, 0x8000_0000, u32::MAX] {
            put(&mem, 0x1000, len, b"x");
            assert_eq!(ring(&mem, 0x1000), Err(BadDoorbell::TooLong(len)));
        }
        // Records outside RAM, straddling its end, at the top of the
        // 32-bit range (where addr + len would wrap a u32).
        for addr in [RAM as u32, RAM as u32 - 2, 0xffff_fffc, u32::MAX] {
            assert_eq!(ring(&mem, addr), Err(BadDoorbell::OutsideRam(addr)));
        }
        let near_end = RAM - 8;
        put(&mem, near_end, 100, b"");
        assert_eq!(
            ring(&mem, near_end as u32),
            Err(BadDoorbell::OutsideRam(near_end as u32))
        );
        // Byte, word and oversized writes are not doorbells.
        for width in [0, 1, 2, 3, 5, 8] {
            assert_eq!(
                read_record(&vec![0; width], &mem).map(|r| r.len),
                Err(BadDoorbell::Width(width))
            );
        }
    }

    #[test]
    fn presence_fills_any_width() {
        let mut four = [0u8; 4];
        read_presence(&mut four);
        assert_eq!(u32::from_le_bytes(four), CONSOLE_PRESENT);
        let mut one = [0u8; 1];
        read_presence(&mut one);
        assert_eq!(one[0], CONSOLE_PRESENT as u8);
    }
}
