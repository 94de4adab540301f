//! A PCI host bridge with nothing behind it: configuration mechanism #1
//! (ports 0xcf8..0xcff) answering for one device, the bridge itself at
//! 00:00.0, and "no device" everywhere else.
//!
//! Why a bus with nothing on it: a distribution's kernel (Debian's, for
//! one) registers a legacy persistent-memory e820 range, the DAX rootfs at
//! /dev/pmem0, only from its PCI resource survey, which it runs only after
//! finding a working configuration mechanism. Mechanism #1 counts as working
//! when the address register reads back what was written and bus 0 holds a
//! host bridge (or an Intel or Compaq device), so that is all this models.
//! Kernels without PCI (our guest kernel) and the default guest never touch
//! these ports.
//!
//! The one other register in this range is the chipset's reset control at
//! 0xcf9: a write with the reset bit set resets the machine, which Linux
//! uses for `reboot=pci` and as a fallback.

/// Configuration address register (32-bit); the data window follows it.
pub const CONFIG_ADDRESS: u16 = 0xcf8;
pub const CONFIG_DATA: u16 = 0xcfc;
/// Reset control register (one byte, inside the address register's span).
pub const RESET_CONTROL: u16 = 0xcf9;
/// Bit 2 of the reset control register starts a reset.
const RESET_CPU: u8 = 1 << 2;
/// The ports this device answers: the address register and the data window.
pub const PORTS: std::ops::Range<u16> = CONFIG_ADDRESS..CONFIG_DATA + 4;

/// Bit 31 of the address enables configuration cycles on the data port.
const ENABLE: u32 = 1 << 31;
/// The bridge's identity. Vendor Intel with the device id other virtual
/// machine monitors (Cloud Hypervisor) give their virtual host bridge,
/// which no Linux quirk matches.
const VENDOR_ID: u16 = 0x8086;
const DEVICE_ID: u16 = 0x0d57;
/// Base class 06 (bridge), subclass 00 (host bridge).
const CLASS_HOST_BRIDGE: u32 = 0x0600;

/// What a port access asks of the machine beyond the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PciHostEvent {
    Reset,
}

/// The bridge's only state is the address latch a guest writes before each
/// data access.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PciHostBridge {
    config_address: u32,
}

impl PciHostBridge {
    pub fn from_address(config_address: u32) -> Self {
        PciHostBridge { config_address }
    }

    pub fn config_address(&self) -> u32 {
        self.config_address
    }

    /// A read of `port` (inside [`PORTS`]). Sub-dword reads of the address
    /// register return its bytes; data reads return the addressed
    /// register's bytes, all ones for absent devices, as the bus floats.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        if port < CONFIG_DATA {
            let bytes = self.config_address.to_le_bytes();
            copy_window(&bytes, usize::from(port - CONFIG_ADDRESS), data);
            return;
        }
        let value = self.enabled_register().unwrap_or(u32::MAX);
        copy_window(&value.to_le_bytes(), usize::from(port - CONFIG_DATA), data);
    }

    /// A write to `port` (inside [`PORTS`]). Only a full 32-bit write sets
    /// the address, as on a PC's chipset; the bridge's registers are read
    /// only (so a BAR sized with all ones reads back 0: no BARs).
    pub fn write(&mut self, port: u16, data: &[u8]) -> Option<PciHostEvent> {
        if port == CONFIG_ADDRESS {
            if let Ok(bytes) = <[u8; 4]>::try_from(data) {
                self.config_address = u32::from_le_bytes(bytes);
            }
            return None;
        }
        if port == RESET_CONTROL && data.len() == 1 && data[0] & RESET_CPU != 0 {
            return Some(PciHostEvent::Reset);
        }
        None
    }

    /// The dword the latched address selects, if configuration cycles are
    /// enabled and it names the bridge's function; otherwise None.
    fn enabled_register(&self) -> Option<u32> {
        let a = self.config_address;
        if a & ENABLE == 0 {
            return None;
        }
        let bus = (a >> 16) & 0xff;
        let devfn = (a >> 8) & 0xff;
        if bus != 0 || devfn != 0 {
            return None;
        }
        Some(bridge_register((a & 0xfc) as u8))
    }
}

/// The host bridge's configuration space, one dword at `offset`: its ids,
/// its class, a type-0 header with no BARs, no capabilities and no
/// interrupt. Everything not listed reads as zero.
fn bridge_register(offset: u8) -> u32 {
    match offset {
        0x00 => u32::from(DEVICE_ID) << 16 | u32::from(VENDOR_ID),
        // Class code, subclass, programming interface, revision.
        0x08 => CLASS_HOST_BRIDGE << 16,
        _ => 0,
    }
}

/// Copies `data.len()` bytes of `dword` starting at byte `at`, all ones past
/// its end (an access straddling the register).
fn copy_window(dword: &[u8; 4], at: usize, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = dword.get(at + i).copied().unwrap_or(0xff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select(bridge: &mut PciHostBridge, bus: u32, devfn: u32, offset: u32) {
        let a = ENABLE | bus << 16 | devfn << 8 | offset;
        assert_eq!(bridge.write(CONFIG_ADDRESS, &a.to_le_bytes()), None);
    }

    fn read32(bridge: &PciHostBridge, port: u16) -> u32 {
        let mut d = [0u8; 4];
        bridge.read(port, &mut d);
        u32::from_le_bytes(d)
    }

    #[test]
    fn address_register_reads_back_as_linux_probes_it() {
        let mut b = PciHostBridge::default();
        // pci_check_type1: a byte to 0xcfb first, then the dword.
        assert_eq!(b.write(0xcfb, &[1]), None);
        assert_eq!(b.write(CONFIG_ADDRESS, &ENABLE.to_le_bytes()), None);
        assert_eq!(read32(&b, CONFIG_ADDRESS), ENABLE);
        // A byte write does not move the latch.
        b.write(CONFIG_ADDRESS, &[0]);
        assert_eq!(b.config_address(), ENABLE);
    }

    #[test]
    fn bus_zero_holds_a_host_bridge_and_nothing_else() {
        let mut b = PciHostBridge::default();
        select(&mut b, 0, 0, 0);
        assert_eq!(read32(&b, CONFIG_DATA), 0x0d57_8086);
        // pci_sanity_check reads the 16-bit class at offset 0x0a.
        select(&mut b, 0, 0, 0x08);
        let mut class = [0u8; 2];
        b.read(CONFIG_DATA + 2, &mut class);
        assert_eq!(u16::from_le_bytes(class), 0x0600);
        // Header type 0 (offset 0x0e), no BARs, no interrupt pin.
        for offset in [0x0c, 0x10, 0x14, 0x24, 0x30, 0x3c] {
            select(&mut b, 0, 0, offset);
            assert_eq!(read32(&b, CONFIG_DATA), 0, "offset {offset:#x}");
        }
        for (bus, devfn) in [(0, 1), (0, 8), (0, 0xff), (1, 0)] {
            select(&mut b, bus, devfn, 0);
            assert_eq!(read32(&b, CONFIG_DATA), u32::MAX, "{bus}:{devfn:#x}");
        }
    }

    #[test]
    fn data_reads_without_the_enable_bit_float() {
        let mut b = PciHostBridge::default();
        b.write(CONFIG_ADDRESS, &0u32.to_le_bytes());
        assert_eq!(read32(&b, CONFIG_DATA), u32::MAX);
    }

    #[test]
    fn bar_sizing_writes_are_ignored() {
        let mut b = PciHostBridge::default();
        select(&mut b, 0, 0, 0x10);
        assert_eq!(b.write(CONFIG_DATA, &u32::MAX.to_le_bytes()), None);
        assert_eq!(read32(&b, CONFIG_DATA), 0);
    }

    #[test]
    fn reset_control_resets_only_with_the_reset_bit() {
        let mut b = PciHostBridge::default();
        assert_eq!(b.write(RESET_CONTROL, &[0x02]), None);
        assert_eq!(b.write(RESET_CONTROL, &[0x06]), Some(PciHostEvent::Reset));
        assert_eq!(b.write(RESET_CONTROL, &[0x0e]), Some(PciHostEvent::Reset));
    }

    #[test]
    fn odd_widths_never_panic() {
        let mut b = PciHostBridge::default();
        select(&mut b, 0, 0, 0);
        for port in PORTS {
            for len in [0usize, 1, 2, 3, 4, 8] {
                let mut d = vec![0u8; len];
                b.read(port, &mut d);
                b.write(port, &d);
            }
        }
        // A dword read at 0xcfe straddles the register: its tail floats.
        select(&mut b, 0, 0, 0);
        let mut d = [0u8; 4];
        b.read(CONFIG_DATA + 2, &mut d);
        assert_eq!(d, [0x57, 0x0d, 0xff, 0xff]);
    }
}
