//! Fuzz target: the host side of the guest channel. A malicious guest
//! controls its RAM, so the function mailbox's response (header at
//! 0x600000, body at 0x601000, docs/guest-abi.md) can hold anything, and it
//! can do port I/O of any size at the ready port (0xdf0) and around it,
//! the console doorbell (0xdf8) included.
//! Shared by examples/fuzz_mailbox.rs and tests/fuzz_corpus.rs.
//!
//! An input is a script of guest actions and host reads (see [`Op`]) run
//! against real guest memory, the real port bus (a UART behind a KVM VM
//! that never runs) and a real `Control` (its command channel and stop
//! latch). Port accesses are dispatched the way the vCPU loop does
//! (src/vcpu/run.rs). Every outcome is checked
//! against the ABI tables in docs/guest-abi.md: each 32-bit value written to
//! the ready port decodes to exactly the documented signal, every read
//! gets the command's low bytes and nothing else changes, a console
//! doorbell is counted unclaimed exactly when the ABI calls it bad,
//! unclaimed ports read as all ones, and `read_response` returns exactly the guest's body
//! or a one-line error, never allocating past the mailbox's 2 MiB.

use std::path::{Path, PathBuf};
use std::time::Instant;

use fuzzer::{Limits, Outcome, Rng, Target};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmfork_machine::control::{Control, StopReason};
use vmfork_machine::devices::console::Console;
use vmfork_machine::devices::console_doorbell::{
    CONSOLE_PORT, CONSOLE_PRESENT, CONSOLE_RECORD_BYTES,
};
use vmfork_machine::devices::ready_port::{self, GuestSignal, READY_PORT};
use vmfork_machine::devices::serial::SerialPort;
use vmfork_machine::devices::{PlatformEvent, PortIoBus};
use vmfork_machine::kvm_host::KvmHost;
use vmfork_machine::vm::Vm;
use vmfork_machine::Error;
use vmfork_serve::http::answer_for;
use vmfork_serve::mailbox::{self, Status, MAX_BODY};

#[path = "mailbox_seeds.rs"]
mod mailbox_seeds;

pub use mailbox::{REQUEST_HEADER, RESPONSE_DATA, RESPONSE_HEADER};
const MAILBOX_END: u64 = 0x80_0000;
const MAX_OPS: usize = 64;
/// What reads of unclaimed bytes must not be confused with.
const SENTINEL: u8 = 0xa5;

/// Guest RAM layouts: the usual one, and RAM that ends or has a hole
/// where the mailbox is, as a guest built for less memory would have.
const LAYOUTS: [&[(u64, u64)]; 6] = [
    &[(0, 16 << 20)],
    &[(0, RESPONSE_DATA + 0x1000)],
    &[(0, RESPONSE_HEADER + 0x1000)],
    &[(0, RESPONSE_HEADER)],
    &[(0, 0x68_0000), (0x70_0000, 0x90_0000)],
    &[(0, 0x40_0000)],
];

/// One step of a script; the opcode is a byte modulo the count.
#[derive(Debug)]
enum Op {
    /// Guest `out` of `size` (0..=8) bytes to a port.
    Out { port: u16, data: Vec<u8> },
    /// Guest `in` of `size` bytes; the host has `command` queued.
    In {
        port: u16,
        size: usize,
        command: u32,
    },
    /// Guest writes bytes anywhere in the mailbox.
    Poke { addr: u64, bytes: Vec<u8> },
    /// Guest writes a whole response header.
    Header([u8; 16]),
    /// Guest fills a range with one byte (long bodies, cheaply).
    Fill { addr: u64, len: u64, byte: u8 },
    /// Host reads the response.
    Read,
    /// Host writes a request of `len` bytes.
    Request { len: usize, byte: u8 },
}

/// Reads the script's fields; past the end everything is zero, so every
/// byte string is a valid script.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }
    fn le(&mut self, n: usize) -> u64 {
        (0..n).fold(0, |v, i| v | u64::from(self.byte()) << (8 * i))
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }
    /// Mostly the ready port, often its neighbours, sometimes any port
    /// the default guest may use (0..0xfff: the UART, i8042, 0x80).
    fn port(&mut self) -> u16 {
        let raw = self.le(2) as u16;
        match raw % 4 {
            0 | 1 => READY_PORT,
            2 => READY_PORT - 8 + (raw >> 2) % 17,
            _ => (raw >> 2) & 0xfff,
        }
    }
}

fn parse(input: &[u8]) -> (usize, Vec<Op>) {
    let mut c = Cursor(input);
    let layout = usize::from(c.byte()) % LAYOUTS.len();
    let mut ops = Vec::new();
    // Bounded so that a script of many 2 MiB copies stays fast.
    while !c.0.is_empty() && ops.len() < MAX_OPS {
        ops.push(match c.byte() % 7 {
            0 => {
                let port = c.port();
                let size = usize::from(c.byte()) % 9;
                Op::Out {
                    port,
                    data: c.bytes(size),
                }
            }
            1 => Op::In {
                port: c.port(),
                size: usize::from(c.byte()) % 9,
                command: c.le(4) as u32,
            },
            2 => {
                let addr = REQUEST_HEADER + c.le(3) % (MAILBOX_END - REQUEST_HEADER);
                let len = usize::from(c.byte());
                Op::Poke {
                    addr,
                    bytes: c.bytes(len),
                }
            }
            3 => {
                let mut header = [0u8; 16];
                header.copy_from_slice(&c.bytes(16));
                Op::Header(header)
            }
            4 => Op::Fill {
                addr: RESPONSE_HEADER + c.le(3) % (MAILBOX_END - RESPONSE_HEADER),
                len: c.le(3),
                byte: c.byte(),
            },
            5 => Op::Read,
            _ => Op::Request {
                len: c.le(3) as usize % (MAX_BODY + 16),
                byte: c.byte(),
            },
        });
    }
    ops.push(Op::Read);
    (layout, ops)
}

/// What docs/guest-abi.md says a guest's `out` to the ready port means.
pub fn documented(data: &[u8]) -> GuestSignal {
    let mut word = [0u8; 4];
    for (w, d) in word.iter_mut().zip(data) {
        *w = *d;
    }
    let v = u32::from_le_bytes(word);
    if data.len() != 4 {
        return GuestSignal::Unknown(v);
    }
    match (v >> 16, v & 0xffff) {
        _ if v == 0x5245_4459 => GuestSignal::Ready,
        (0x4558, n) if n <= 0xff => GuestSignal::Exit(n as u8),
        (0x504e, n) if n <= 0xff => GuestSignal::Panic(n as u8),
        (0x4143, c) => GuestSignal::Ack(c as u16),
        _ => GuestSignal::Unknown(v),
    }
}

/// What docs/guest-abi.md says makes a console doorbell good: a 32-bit
/// `out` naming a record wholly in RAM whose length is at most
/// CONSOLE_RECORD_BYTES.
fn documented_doorbell(data: &[u8], mem: &GuestMemoryMmap) -> bool {
    let Ok(word) = <[u8; 4]>::try_from(data) else {
        return false;
    };
    let addr = u64::from(u32::from_le_bytes(word));
    let mut len = [0u8; 4];
    if mem.read_slice(&mut len, GuestAddress(addr)).is_err() {
        return false;
    }
    let len = u32::from_le_bytes(len) as usize;
    let mut bytes = vec![0u8; len.min(CONSOLE_RECORD_BYTES)];
    len <= CONSOLE_RECORD_BYTES && mem.read_slice(&mut bytes, GuestAddress(addr + 4)).is_ok()
}

/// Every 32-bit value the guest can write, `step` apart: each must decode
/// to what the ABI documents. Returns the first disagreement.
pub fn sweep_words(step: usize) -> Option<(u32, GuestSignal, GuestSignal)> {
    (0..=u32::MAX).step_by(step).find_map(|v| {
        let bytes = v.to_le_bytes();
        let (got, want) = (ready_port::decode_write(&bytes), documented(&bytes));
        (got != want).then_some((v, got, want))
    })
}

pub struct GuestChannel {
    bus: PortIoBus,
    /// The PCI configuration address the guest last set (a full 32-bit
    /// write to 0xcf8): what the address register must read back, and
    /// whether the data window may answer with anything but all ones.
    pci_address: u32,
    /// Keeps the UART's interrupt line (an irqfd on this VM) valid.
    _vm: Vm,
}

impl GuestChannel {
    pub fn new() -> Result<GuestChannel, String> {
        let host = KvmHost::get().map_err(|e| e.to_string())?;
        let vm = Vm::new(host).map_err(|e| e.to_string())?;
        vm.create_platform().map_err(|e| e.to_string())?;
        let serial = SerialPort::new(&vm.fd, Console::Discard).map_err(|e| e.to_string())?;
        Ok(GuestChannel {
            bus: PortIoBus::new(serial),
            pci_address: 0,
            _vm: vm,
        })
    }
}

/// What the host has seen of the guest so far, to check `Control`'s
/// command channel and stop latch against.
#[derive(Default)]
struct Seen {
    acks: u64,
    ready: bool,
    first_stop: Option<StopReason>,
    reads: Vec<&'static str>,
}

impl GuestChannel {
    fn port_out(
        &mut self,
        port: u16,
        data: &[u8],
        mem: &GuestMemoryMmap,
        control: &Control,
        seen: &mut Seen,
        o: &mut Outcome,
    ) {
        if port == READY_PORT {
            let signal = ready_port::decode_write(data);
            let want = documented(data);
            o.check(signal == want, "signal", || {
                format!("{data:02x?} gave {signal:?}, documented {want:?}")
            });
            // As the vCPU loop applies them (src/vcpu/run.rs).
            let stop = match signal {
                GuestSignal::Ready => {
                    seen.ready = true;
                    control.commands().mark_ready();
                    None
                }
                GuestSignal::Ack(_) => {
                    seen.acks += 1;
                    control.commands().mark_ack();
                    None
                }
                GuestSignal::Exit(code) => Some(StopReason::GuestExit(code)),
                GuestSignal::Panic(vector) => Some(StopReason::GuestCrash { vector }),
                GuestSignal::Unknown(_) => None,
            };
            if let Some(reason) = stop {
                seen.first_stop.get_or_insert(reason.clone());
                control.latch().stop(reason);
            }
            return;
        }
        if port == CONSOLE_PORT {
            // As the vCPU loop does: the doorbell reads guest memory.
            let before = self.bus.unclaimed().port_writes;
            self.bus.console_doorbell(port, data, mem);
            let counted = self.bus.unclaimed().port_writes - before;
            let good = documented_doorbell(data, mem);
            o.check(counted == u64::from(!good), "console-doorbell", || {
                format!("doorbell {data:02x?}: good={good}, counted {counted} unclaimed")
            });
            return;
        }
        if port == 0xcf8 {
            if let Ok(word) = <[u8; 4]>::try_from(data) {
                self.pci_address = u32::from_le_bytes(word);
            }
        }
        let event = self.bus.write(port, data);
        // The i8042's reset pulse, or the reset bit of the chipset's reset
        // control register.
        let reset = (port == 0x64 && data.first() == Some(&0xfe))
            || (port == 0xcf9 && data.len() == 1 && data[0] & 0x04 != 0);
        o.check(
            matches!(event, Some(PlatformEvent::ResetRequested(_))) == reset,
            "port-write",
            || format!("write {data:02x?} to {port:#x} raised {event:?}"),
        );
    }

    fn port_in(
        &mut self,
        port: u16,
        size: usize,
        command: u32,
        control: &Control,
        o: &mut Outcome,
    ) {
        let mut data = vec![SENTINEL; size];
        if port == READY_PORT {
            control.commands().send_command(command);
            // A stopping VM completes the parked `in` with RESUMED.
            let delivered = control
                .commands()
                .wait_command(false)
                .unwrap_or(ready_port::CMD_RESUMED);
            ready_port::encode_command(delivered, &mut data);
            let word = delivered.to_le_bytes();
            let ok = data
                .iter()
                .enumerate()
                .all(|(i, &b)| b == word.get(i).copied().unwrap_or(SENTINEL));
            o.check(ok, "port-read", || {
                format!("{size}-byte read of {delivered:#x} gave {data:02x?}")
            });
            return;
        }
        self.bus.read(port, &mut data);
        let uart = (0x3f8..0x400).contains(&port);
        // The UART answers one register, the console port its presence
        // word; unclaimed ports float high.
        let ok = if uart {
            data.iter().skip(1).all(|&b| b == SENTINEL)
        } else if port == CONSOLE_PORT {
            let word = CONSOLE_PRESENT.to_le_bytes();
            (0..size).all(|i| data[i] == word.get(i).copied().unwrap_or(SENTINEL))
        } else if (0xcf8..0xcfc).contains(&port) {
            // The PCI address register reads back what was set, all ones
            // past its four bytes.
            let word = self.pci_address.to_le_bytes();
            let at = usize::from(port - 0xcf8);
            (0..size).all(|i| data[i] == word.get(at + i).copied().unwrap_or(0xff))
        } else if (0xcfc..0xd00).contains(&port) {
            // The data window answers for the host bridge (bus 0, device
            // 0, function 0, with cycles enabled) and floats high for
            // every other address.
            let a = self.pci_address;
            let bridge = a & (1 << 31) != 0 && (a >> 8) & 0xffff == 0;
            bridge || data.iter().all(|&b| b == 0xff)
        } else {
            data.iter().all(|&b| b == 0xff)
        };
        o.check(ok, "port-read", || {
            format!("{size}-byte read of port {port:#x} gave {data:02x?}")
        });
    }
}

/// `read_response` against what is really in guest memory.
fn check_read(mem: &GuestMemoryMmap, o: &mut Outcome) -> &'static str {
    let got = mailbox::read_response(mem);
    let mut header = [0u8; 16];
    let want: Result<Vec<u8>, &str> =
        match mem.read_slice(&mut header, GuestAddress(RESPONSE_HEADER)) {
            Err(_) => Err("unmapped"),
            Ok(()) => {
                let word = |i: usize| {
                    u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]])
                };
                let len = word(4) as usize;
                if word(0) != u32::from_le_bytes(*b"VMRS") || len > MAX_BODY || word(8) > 2 {
                    Err("malformed")
                } else {
                    let mut body = vec![0u8; len];
                    mem.read_slice(&mut body, GuestAddress(RESPONSE_DATA))
                        .map(|()| body)
                        .map_err(|_| "unmapped")
                }
            }
        };
    match (&got, &want) {
        (Ok(r), Ok(body)) => {
            let words = (
                u32::from_le_bytes([header[8], header[9], header[10], header[11]]),
                u32::from_le_bytes([header[12], header[13], header[14], header[15]]),
            );
            let status = match r.status {
                Status::Ok => 0,
                Status::Rejected => 1,
                Status::BadRequest => 2,
            };
            o.check(
                &r.body == body && (status, r.invocations) == words,
                "response",
                || {
                    format!(
                        "read {:?}/{} ({} bytes), memory holds {words:?} ({} bytes)",
                        r.status,
                        r.invocations,
                        r.body.len(),
                        body.len()
                    )
                },
            );
            let (code, _) = answer_for(&r.status);
            o.check(
                matches!(code.as_u16(), 200 | 400 | 422),
                "http-status",
                || format!("{:?} answers {code}", r.status),
            );
            match r.status {
                Status::Ok => "ok",
                Status::Rejected => "rejected",
                Status::BadRequest => "bad-request",
            }
        }
        (Err(e), Err(why)) => {
            let message = e.to_string();
            let kind_ok = match *why {
                "malformed" => matches!(e, Error::GuestCrash(_)),
                _ => matches!(e, Error::GuestMemory(_)),
            };
            o.check(kind_ok, "error-kind", || {
                format!("expected {why}, got {e:?}")
            });
            o.check(
                message.len() <= 300 && !message.chars().any(char::is_control),
                "message",
                || format!("not one short line: {message:?}"),
            );
            why
        }
        _ => {
            o.find(
                "response",
                format!("read_response gave {got:?}, memory says {want:?}"),
            );
            "wrong"
        }
    }
}

impl Target for GuestChannel {
    const NAME: &'static str = "fuzz_mailbox";

    fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/mailbox")
    }

    fn seeds() -> Vec<(String, Vec<u8>)> {
        mailbox_seeds::seeds()
    }

    fn run(&mut self, input: &[u8], _rng: &mut Rng) -> Outcome {
        let (layout, ops) = parse(input);
        let ranges: Vec<(GuestAddress, usize)> = LAYOUTS[layout]
            .iter()
            .map(|&(a, s)| (GuestAddress(a), s as usize))
            .collect();
        let mut o = Outcome::new("", "");
        let mem = match GuestMemoryMmap::from_ranges(&ranges) {
            Ok(m) => m,
            Err(e) => {
                o.find("setup", format!("guest memory: {e}"));
                return o;
            }
        };
        let control = Control::new(Instant::now(), false);
        let mut seen = Seen::default();
        for op in &ops {
            match op {
                Op::Out { port, data } => {
                    self.port_out(*port, data, &mem, &control, &mut seen, &mut o)
                }
                Op::In {
                    port,
                    size,
                    command,
                } => self.port_in(*port, *size, *command, &control, &mut o),
                // Writes the guest's RAM may not have room for are the
                // guest's problem; only what lands matters.
                Op::Poke { addr, bytes } => drop(mem.write_slice(bytes, GuestAddress(*addr))),
                Op::Header(h) => drop(mem.write_slice(h, GuestAddress(RESPONSE_HEADER))),
                Op::Fill { addr, len, byte } => {
                    let len = (*len).min(MAILBOX_END.saturating_sub(*addr)) as usize;
                    drop(mem.write_slice(&vec![*byte; len], GuestAddress(*addr)));
                }
                Op::Read => {
                    let class = check_read(&mem, &mut o);
                    seen.reads.push(class);
                }
                Op::Request { len, byte } => {
                    let before = read_header(&mem);
                    let r = mailbox::write_request(&mem, &vec![*byte; *len]);
                    // Only an oversized body or RAM without a mailbox fails.
                    let fits = *len <= MAX_BODY && layout != 5;
                    o.check(r.is_ok() == fits, "request", || {
                        format!("{len}-byte request: {r:?}")
                    });
                    // The request never spills into the guest's response.
                    o.check(read_header(&mem) == before, "request-overlap", || {
                        format!("{len}-byte request changed the response header")
                    });
                }
            }
        }
        let commands = control.commands();
        o.check(commands.acks() == seen.acks, "acks", || {
            format!("{} acks counted, {} written", commands.acks(), seen.acks)
        });
        o.check(commands.ready_at().is_some() == seen.ready, "ready", || {
            "ready state differs".into()
        });
        o.check(control.latch().reason() == seen.first_stop, "stop", || {
            format!(
                "stop reason {:?}, first stop written {:?}",
                control.latch().reason(),
                seen.first_stop
            )
        });
        let last = seen.reads.last().copied().unwrap_or("none");
        o.class = last.to_string();
        o.feature = format!("{layout} {}", seen.reads.join(","));
        o
    }

    fn dictionary(&self) -> &[&[u8]] {
        &[
            b"VMRS",
            b"VMRQ",
            b"YDER",
            b"\x00\x00XE",
            b"\xff\x00XE",
            b"\x00\x01XE",
            b"\x06\x00NP",
            b"\x34\x12CA",
            b"\x00\xf0\x1f\x00",
            b"\x01\xf0\x1f\x00",
            b"\xf0\x0d",
            b"\xef\x0d",
            b"\xf1\x0d",
        ]
    }

    fn limits(&self) -> Limits {
        Limits {
            max_input: 16 << 10,
            // The host may copy a whole mailbox body (2 MiB) and a request
            // of that size; nothing more.
            alloc_slack: MAX_BODY + (1 << 20),
            ..Limits::default()
        }
    }
}

fn read_header(mem: &GuestMemoryMmap) -> Option<[u8; 16]> {
    let mut h = [0u8; 16];
    mem.read_slice(&mut h, GuestAddress(RESPONSE_HEADER))
        .ok()
        .map(|()| h)
}
