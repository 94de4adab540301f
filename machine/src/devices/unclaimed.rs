//! Guest accesses no device claims: port I/O outside the UART, the ready
//! port and the i8042 reset, and MMIO to guest-physical addresses with no
//! memory (or read-only memory). The policy, documented in
//! docs/guest-abi.md, is the one a PC's floating bus has: writes are
//! dropped, reads return all ones, and the VM carries on. Every access is
//! counted, and logged at most once per second per VM, so a guest flooding
//! them costs only its own vCPU thread's time and never a log line per
//! access.

use std::fmt;
use std::time::{Duration, Instant};

/// How often a VM's unclaimed accesses may be logged.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    PortRead(u16),
    PortWrite(u16),
    MmioRead(u64),
    MmioWrite(u64),
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::PortRead(p) => write!(f, "read of port {p:#x}"),
            Access::PortWrite(p) => write!(f, "write to port {p:#x}"),
            Access::MmioRead(a) => write!(f, "MMIO read at {a:#x}"),
            Access::MmioWrite(a) => write!(f, "MMIO write at {a:#x}"),
        }
    }
}

/// Unclaimed accesses of one VM since it was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnclaimedCounts {
    pub port_reads: u64,
    pub port_writes: u64,
    pub mmio_reads: u64,
    pub mmio_writes: u64,
}

impl UnclaimedCounts {
    pub fn ports(&self) -> u64 {
        self.port_reads + self.port_writes
    }

    pub fn mmio(&self) -> u64 {
        self.mmio_reads + self.mmio_writes
    }

    pub fn total(&self) -> u64 {
        self.ports() + self.mmio()
    }
}

impl fmt::Display for UnclaimedCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unclaimed port and {} unbacked MMIO accesses, all ignored",
            self.ports(),
            self.mmio()
        )
    }
}

/// The counter and its rate-limited log.
#[derive(Debug, Default)]
pub struct UnclaimedAccesses {
    counts: UnclaimedCounts,
    /// Total at the last log line, and when it was written.
    reported: u64,
    reported_at: Option<Instant>,
}

impl UnclaimedAccesses {
    pub fn note(&mut self, access: Access) {
        self.note_at(access, Instant::now());
    }

    /// Counts one access; returns whether it was logged. The first access
    /// is logged at once (it names the address, which is what debugging a
    /// guest needs), later ones as one summary per REPORT_INTERVAL.
    fn note_at(&mut self, access: Access, now: Instant) -> bool {
        let c = &mut self.counts;
        match access {
            Access::PortRead(_) => c.port_reads += 1,
            Access::PortWrite(_) => c.port_writes += 1,
            Access::MmioRead(_) => c.mmio_reads += 1,
            Access::MmioWrite(_) => c.mmio_writes += 1,
        }
        let total = c.total();
        match self.reported_at {
            None => tracing::warn!(
                "guest {access} claimed by no device: ignored (reads return all ones); more are logged at most once per second"
            ),
            Some(at) if now.saturating_duration_since(at) >= REPORT_INTERVAL => tracing::warn!(
                "guest made {} more unclaimed accesses in {:.1} s ({} port and {} MMIO in all; latest: {access})",
                total - self.reported,
                now.saturating_duration_since(at).as_secs_f64(),
                self.counts.ports(),
                self.counts.mmio()
            ),
            Some(_) => return false,
        }
        self.reported = total;
        self.reported_at = Some(now);
        true
    }

    pub fn counts(&self) -> UnclaimedCounts {
        self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_access_is_counted_by_kind() {
        let mut u = UnclaimedAccesses::default();
        let now = Instant::now();
        for access in [
            Access::PortRead(0x100),
            Access::PortWrite(0x100),
            Access::PortWrite(0x101),
            Access::MmioRead(0xd000_0000),
            Access::MmioWrite(0xd000_0000),
        ] {
            u.note_at(access, now);
        }
        assert_eq!(
            u.counts(),
            UnclaimedCounts {
                port_reads: 1,
                port_writes: 2,
                mmio_reads: 1,
                mmio_writes: 1,
            }
        );
        assert_eq!(u.counts().total(), 5);
    }

    #[test]
    fn a_flood_logs_once_per_interval_not_once_per_access() {
        let mut u = UnclaimedAccesses::default();
        let start = Instant::now();
        let mut logged = 0;
        // 100,000 accesses over 2.5 s: the first, then one at 1 s and 2 s.
        for i in 0..100_000u64 {
            let at = start + Duration::from_micros(i * 25);
            if u.note_at(Access::PortWrite(0x200), at) {
                logged += 1;
            }
        }
        assert_eq!(logged, 3);
        assert_eq!(u.counts().port_writes, 100_000);
    }
}
