//! WASI clocks on the TSC: the TSC rate, learned once at cold boot (so a
//! template carries it to every clone), and the bases the clocks count
//! from, reset from the host's time on every resume.
//!
//! The rate comes from KVM's timing leaf (CPUID 0x40000010, EAX = TSC
//! kHz) when the hypervisor fills it in. KVM on a PVM host does not, and
//! ring 3 cannot read an MSR, so the guest then measures the TSC against
//! channel 2 of the PIT: a counter at a fixed 1.193182 MHz that KVM's
//! in-kernel PIT (which vmfork creates, on PVM and on VMX/SVM hosts
//! alike) derives from the host's clock, read from ring 3 through ports
//! 0x42, 0x43 and 0x61 (IOPL=3 and the TSS I/O bitmap open them).

use core::cell::Cell;

use crate::cpu;
use crate::io::{inb, outb, rdtsc};

/// The PIT's input clock, Hz (a PC's 14.31818 MHz crystal / 12).
const PIT_HZ: u64 = 1_193_182;
const PIT_CH2: u16 = 0x42;
const PIT_MODE: u16 = 0x43;
/// Bit 0: channel 2's gate; bit 1: the speaker's data line (kept off).
const PIT_GATE_PORT: u16 = 0x61;
/// Channel 2 (bits 7-6: 10), low then high byte (5-4: 11), mode 2, a
/// rate generator (3-1: 010), binary (0: 0).
const PIT_CH2_MODE2: u8 = 0xb4;
/// Channel 2 (bits 7-6: 10), counter latch (5-4: 00).
const PIT_CH2_LATCH: u8 = 0x80;
/// One measurement window: 10 ms of PIT ticks. A sample (a latch and two
/// reads) costs about 80 us on a PVM host, where every port access is
/// emulated, and its jitter bounds the error at a few 0.1% per window;
/// the median of three windows leaves out one the host preempted.
const WINDOW_TICKS: u64 = PIT_HZ / 100;
const WINDOWS: usize = 3;
/// Samples in a row with the same count before the PIT is taken to be
/// absent (reads of an unclaimed port are all ones, forever): at least
/// 1 ms even at a microsecond per sample, hundreds of ticks.
const STUCK_SAMPLES: u32 = 1000;

/// Where the TSC rate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateSource {
    /// CPUID 0x40000010.
    Hypervisor,
    /// Measured against the PIT.
    Pit,
    /// CPUID 0x15 or 0x16 (what the CPU claims; KVM may pass the host's
    /// values through unchanged).
    CpuLeaf,
    /// Nothing said and nothing to measure against: 1 GHz, assumed.
    Assumed,
}

impl RateSource {
    pub fn name(self) -> &'static str {
        match self {
            RateSource::Hypervisor => "cpuid-0x40000010",
            RateSource::Pit => "pit",
            RateSource::CpuLeaf => "cpuid-0x15/0x16",
            RateSource::Assumed => "assumed",
        }
    }
}

/// KVM's TSC kHz, when the hypervisor leaf range includes it.
fn hypervisor_khz() -> Option<u64> {
    let max = cpu::cpuid(0x4000_0000).eax;
    if max < 0x4000_0010 {
        return None;
    }
    let khz = cpu::cpuid(0x4000_0010).eax;
    (khz != 0).then_some(u64::from(khz))
}

/// The TSC just before channel 2's count is latched, and that count. The
/// latch happens in the exit of the `out`, a nearly fixed delay after the
/// TSC read, so the delay cancels between two samples.
fn sample() -> (u64, u16) {
    let tsc = rdtsc();
    outb(PIT_MODE, PIT_CH2_LATCH);
    let lo = inb(PIT_CH2);
    let hi = inb(PIT_CH2);
    (tsc, u16::from_le_bytes([lo, hi]))
}

/// TSC cycles per second over one window, or None if the counter does
/// not move (no PIT).
fn window() -> Option<u64> {
    let (t0, c0) = sample();
    let (mut last, mut ticks, mut stuck) = (c0, 0u64, 0u32);
    loop {
        let (t, c) = sample();
        // The counter counts down and reloads every 65536 ticks (55 ms),
        // far longer than a sample takes, so the 16-bit difference is the
        // ticks since the last sample.
        let step = last.wrapping_sub(c);
        last = c;
        if step == 0 {
            stuck += 1;
            if stuck >= STUCK_SAMPLES {
                return None;
            }
            continue;
        }
        stuck = 0;
        ticks += u64::from(step);
        if ticks >= WINDOW_TICKS {
            let cycles = u128::from(t.wrapping_sub(t0));
            return u64::try_from(cycles * u128::from(PIT_HZ) / u128::from(ticks)).ok();
        }
    }
}

/// Measures the TSC against the PIT: the median of [`WINDOWS`] windows.
fn pit_hz() -> Option<u64> {
    let gate = inb(PIT_GATE_PORT);
    outb(PIT_GATE_PORT, (gate & !0x02) | 0x01);
    outb(PIT_MODE, PIT_CH2_MODE2);
    // A count of 0 is 65536: the longest period.
    outb(PIT_CH2, 0);
    outb(PIT_CH2, 0);
    let mut rates = [0u64; WINDOWS];
    for rate in &mut rates {
        *rate = window()?;
    }
    outb(PIT_GATE_PORT, gate);
    rates.sort_unstable();
    Some(rates[WINDOWS / 2]).filter(|hz| *hz > 0)
}

/// The TSC rate in Hz and where it came from; measuring takes about 30 ms
/// on a host without the hypervisor leaf, once per cold boot.
pub fn tsc_rate() -> (u64, RateSource) {
    if let Some(khz) = hypervisor_khz() {
        return (khz * 1000, RateSource::Hypervisor);
    }
    if let Some(hz) = pit_hz() {
        return (hz, RateSource::Pit);
    }
    match cpu::cpu_leaf_tsc_hz() {
        Some(hz) => (hz, RateSource::CpuLeaf),
        None => (1_000_000_000, RateSource::Assumed),
    }
}

/// The WASI clocks. MONOTONIC (and the CPU-time clocks, the same thing in
/// a single-threaded guest) counts from boot; REALTIME counts from the
/// host's time at the last resume, or from boot (the Unix epoch, as far
/// as a module can tell) before any.
pub struct Clock {
    hz: u64,
    /// The TSC at the last reset, and both clocks' values then.
    ref_tsc: u64,
    mono_ns: u64,
    real_ns: u64,
    /// The largest MONOTONIC value handed out: a floor for later ones.
    mono_max: Cell<u64>,
}

impl Clock {
    pub fn new(hz: u64, boot_tsc: u64) -> Clock {
        Clock {
            hz: hz.max(1),
            ref_tsc: boot_tsc,
            mono_ns: 0,
            real_ns: 0,
            mono_max: Cell::new(0),
        }
    }

    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// ns since the last reset. A TSC behind the reference (a VMM that
    /// did not restore the TSC: vmfork does, with the other MSRs) counts
    /// as no time at all.
    fn since_ref(&self, tsc: u64) -> u64 {
        let cycles = tsc.saturating_sub(self.ref_tsc);
        u64::try_from(u128::from(cycles) * 1_000_000_000 / u128::from(self.hz)).unwrap_or(u64::MAX)
    }

    /// Never less than a value returned before, even if the TSC went
    /// back across a restore.
    pub fn monotonic(&self) -> u64 {
        let ns = self
            .mono_ns
            .saturating_add(self.since_ref(rdtsc()))
            .max(self.mono_max.get());
        self.mono_max.set(ns);
        ns
    }

    pub fn realtime(&self) -> u64 {
        self.real_ns.saturating_add(self.since_ref(rdtsc()))
    }

    /// On resume: REALTIME becomes the host's time (taken by the VMM just
    /// before the clone ran, so behind by the resume's latency, well under
    /// a millisecond to a few); MONOTONIC carries on from where it was.
    pub fn set_realtime(&mut self, host_unix_ns: u64) {
        let now = rdtsc();
        self.mono_ns = self
            .mono_ns
            .saturating_add(self.since_ref(now))
            .max(self.mono_max.get());
        self.ref_tsc = now;
        self.real_ns = host_unix_ns;
    }
}
