//! The command line keys of docs/guest-abi.md.

use core::fmt;

use crate::abi::UNKNOWN_FUNCTION;
use crate::function::Function;
use crate::misbehave::Test;

pub struct Config {
    pub touch_mib: u64,
    pub work: u64,
    pub timer_hz: u64,
    pub test: Test,
    /// Print only errors and crashes (no banner, init, READY or pong lines).
    pub quiet: bool,
    /// The built-in function INVOKE runs; it also reserves the mailbox.
    pub function: Option<Function>,
}

/// Above this the tick interrupts (an emulated ring-0 trip each on PVM)
/// would eat the guest; 10 kHz is already 20% of a PVM vCPU.
const MAX_TIMER_HZ: u64 = 10_000;

impl Default for Config {
    fn default() -> Self {
        Config {
            touch_mib: 8,
            work: 1_000_000,
            // Off unless asked for: a ticking timer costs every idle
            // clone an emulated ring-0 trip per tick, and an armed one
            // keeps `--shells` from restoring vCPU state ahead.
            timer_hz: 0,
            test: Test::None,
            quiet: false,
            function: None,
        }
    }
}

/// A malformed value for a known key.
pub struct BadWord {
    pub word: &'static [u8],
    pub why: &'static str,
}

impl fmt::Display for BadWord {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(core::str::from_utf8(self.word).unwrap_or("(not UTF-8)"))?;
        write!(f, ": {}", self.why)
    }
}

/// Space-separated `key=value` words; unknown words are ignored (the
/// command line may carry words meant for other guests), but a bad value
/// for one of our keys is an error rather than a silent default.
pub fn parse(cmdline: &'static [u8]) -> Result<Config, BadWord> {
    let mut cfg = Config::default();
    for word in cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n') {
        let Some(eq) = word.iter().position(|&b| b == b'=') else {
            continue;
        };
        let (key, value) = (&word[..eq], &word[eq + 1..]);
        let bad = |why| BadWord { word, why };
        match key {
            b"touch_mib" => {
                cfg.touch_mib = number(value).ok_or(bad("not a number"))?;
                if cfg.touch_mib.checked_mul(1 << 20).is_none() {
                    return Err(bad("too large"));
                }
            }
            b"work" => cfg.work = number(value).ok_or(bad("not a number"))?,
            b"timer_hz" => {
                cfg.timer_hz = number(value).ok_or(bad("not a number"))?;
                if cfg.timer_hz > MAX_TIMER_HZ {
                    return Err(bad("above 10000"));
                }
            }
            b"quiet" => {
                cfg.quiet = match value {
                    b"0" => false,
                    b"1" => true,
                    _ => return Err(bad("must be 0 or 1")),
                }
            }
            b"function" => {
                cfg.function = Some(Function::parse(value).ok_or(bad(UNKNOWN_FUNCTION))?)
            }
            b"test" => {
                cfg.test = match value {
                    b"panic" => Test::Panic,
                    b"triple_fault" => Test::TripleFault,
                    b"hang" => Test::Hang,
                    b"emulation_error" => Test::EmulationError,
                    b"port_flood" => Test::PortFlood,
                    b"mmio_flood" => Test::MmioFlood,
                    b"interrupt_storm" => Test::InterruptStorm,
                    b"no_ack" => Test::NoAck,
                    _ => match value.strip_prefix(b"exit:") {
                        Some(n) => match number(n) {
                            Some(n) if n <= 255 => Test::Exit(n as u8),
                            _ => return Err(bad("exit status must be 0..=255")),
                        },
                        None => return Err(bad("unknown test")),
                    },
                }
            }
            _ => {}
        }
    }
    Ok(cfg)
}

/// Decimal, or hexadecimal with a 0x prefix.
fn number(s: &[u8]) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix(b"0x").or_else(|| s.strip_prefix(b"0X")) {
        Some(hex) => (hex, 16),
        None => (s, 10),
    };
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in digits {
        let d = (c as char).to_digit(radix)?;
        n = n.checked_mul(u64::from(radix))?.checked_add(u64::from(d))?;
    }
    Some(n)
}
