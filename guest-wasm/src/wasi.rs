//! The guest's own WASI preview 1 (the subset in wasm/src/wasi.rs;
//! wasmtime-wasi needs std). A run's arguments, environment and stdin
//! come from the exec request (none with `wasm_run=1`); stdout and stderr
//! are captured up to the request's cap, or go to the console with
//! `wasm_run=1`; clocks are clock.rs's; randomness is ChaCha20 reseeded
//! from the host's entropy on every resume. No preopened directories.

use alloc::vec::Vec;
use core::fmt;

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use wasmtime::{Caller, Extern, Linker, Memory};

use crate::clock::Clock;
use crate::cpu;
use crate::io::{rdtsc, Line};
use crate::wasi_subset::MODULE;

// WASI errno values.
const SUCCESS: i32 = 0;
const EBADF: i32 = 8;
const EFAULT: i32 = 21;
const EINVAL: i32 = 28;
const ESPIPE: i32 = 70;

const FILETYPE_CHARACTER_DEVICE: u8 = 2;
const CLOCK_REALTIME: i32 = 0;
const CLOCK_THREAD_CPUTIME: i32 = 3;

/// proc_exit's status, carried out of the module as an error.
#[derive(Debug)]
pub struct ProcExit(pub i32);

impl fmt::Display for ProcExit {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "proc_exit({})", self.0)
    }
}

impl core::error::Error for ProcExit {}

/// A captured stream: the first `cap` bytes; the rest is dropped, as the
/// Linux agent drops what a program writes past the cap.
#[derive(Default)]
pub struct Capture {
    pub bytes: Vec<u8>,
    cap: usize,
    pub truncated: bool,
}

impl Capture {
    pub fn new(cap: usize) -> Capture {
        Capture {
            bytes: Vec::new(),
            cap,
            truncated: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = self.cap.saturating_sub(self.bytes.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.bytes
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// What one run of `_start` gets and gives: an exec request's argv,
/// environment and stdin, and its captured output.
#[derive(Default)]
pub struct Run {
    pub args: Vec<Vec<u8>>,
    pub env: Vec<Vec<u8>>,
    pub stdin: Vec<u8>,
    stdin_at: usize,
    /// stdout and stderr; None prints them on the console (`wasm_run=1`).
    pub output: Option<(Capture, Capture)>,
}

impl Run {
    pub fn new(
        args: Vec<Vec<u8>>,
        env: Vec<Vec<u8>>,
        stdin: Vec<u8>,
        output: Option<(Capture, Capture)>,
    ) -> Run {
        Run {
            args,
            env,
            stdin,
            stdin_at: 0,
            output,
        }
    }
}

/// The store's data: what the WASI functions keep between calls.
pub struct Wasi {
    pub clock: Clock,
    rng: ChaCha20Rng,
    /// Whether the CPU has RDRAND, asked once at boot: CPUID traps to
    /// the VMM, and a resume should not pay for that exit. Clones run on
    /// the template's CPU model, so the answer holds for them.
    rdrand: bool,
    pub run: Run,
}

/// 32 bytes from RDRAND, or None where the CPU has none (`has_rdrand`)
/// or it keeps failing.
fn rdrand_seed(has_rdrand: bool) -> Option<[u8; 32]> {
    if !has_rdrand {
        return None;
    }
    let mut seed = [0u8; 32];
    for chunk in seed.chunks_mut(8) {
        chunk.copy_from_slice(&cpu::rdrand()?.to_le_bytes());
    }
    Some(seed)
}

impl Wasi {
    /// Seeded from RDRAND, or from the TSC where the CPU has none: that
    /// seed is guessable, and the same in every clone of one template
    /// until the first resume reseeds from the host (see [`Wasi::reseed`]).
    pub fn new(clock: Clock) -> Wasi {
        let rdrand = cpu::has_rdrand();
        let seed = rdrand_seed(rdrand).unwrap_or_else(|| {
            let mut s = [0u8; 32];
            s[..8].copy_from_slice(&rdtsc().to_le_bytes());
            s
        });
        Wasi {
            clock,
            rng: ChaCha20Rng::from_seed(seed),
            rdrand,
            run: Run::default(),
        }
    }

    /// A fresh key from the host's 32 bytes of entropy, XORed with RDRAND
    /// where there is one and with the generator's own next output: the
    /// result is as unpredictable as the best of the three, and differs
    /// between clones because the host's part does.
    pub fn reseed(&mut self, entropy: &[u64; 4]) {
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        let rdrand = rdrand_seed(self.rdrand).unwrap_or([0; 32]);
        for (i, (byte, r)) in seed.iter_mut().zip(rdrand).enumerate() {
            *byte ^= entropy[i / 8].to_le_bytes()[i % 8] ^ r;
        }
        self.rng = ChaCha20Rng::from_seed(seed);
    }
}

/// The module's exported memory, which every WASI pointer refers to.
fn memory(caller: &mut Caller<'_, Wasi>) -> Option<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Some(m),
        _ => None,
    }
}

/// `len` bytes of the module's memory at `ptr`, or EFAULT.
fn slice(mem: &mut [u8], ptr: i32, len: u64) -> Result<&mut [u8], i32> {
    let start = ptr as u32 as usize;
    let len = usize::try_from(len).map_err(|_| EFAULT)?;
    let end = start.checked_add(len).ok_or(EFAULT)?;
    mem.get_mut(start..end).ok_or(EFAULT)
}

fn put_u32(mem: &mut [u8], ptr: i32, value: u32) -> Result<(), i32> {
    slice(mem, ptr, 4)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn put_u64(mem: &mut [u8], ptr: i32, value: u64) -> Result<(), i32> {
    slice(mem, ptr, 8)?.copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn get_u32(mem: &mut [u8], ptr: i32) -> Result<u32, i32> {
    let b = slice(mem, ptr, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Runs `f` on the module's memory; a module without one gets EFAULT.
fn with_memory(
    caller: &mut Caller<'_, Wasi>,
    f: impl FnOnce(&mut [u8], &mut Wasi) -> Result<(), i32>,
) -> i32 {
    let Some(memory) = memory(caller) else {
        return EFAULT;
    };
    let (mem, wasi) = memory.data_and_store_mut(caller);
    match f(mem, wasi) {
        Ok(()) => SUCCESS,
        Err(errno) => errno,
    }
}

fn is_stdio(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

/// The iovec (or ciovec) `i` of the array at `iovs`: (base, len).
fn iovec(mem: &mut [u8], iovs: i32, i: u32) -> Result<(u32, u32), i32> {
    let at = (iovs as u32)
        .checked_add(i.checked_mul(8).ok_or(EFAULT)?)
        .ok_or(EFAULT)? as i32;
    Ok((get_u32(mem, at)?, get_u32(mem, at.wrapping_add(4))?))
}

/// Writes each ciovec to a capture, or to the console with a record per
/// line so that lines reach it whole. The count reported is everything
/// asked: bytes past a capture's cap are dropped, not refused, as from a
/// pipe that is read to its end.
fn fd_write(
    mem: &mut [u8],
    run: &mut Run,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> Result<(), i32> {
    if fd != 1 && fd != 2 {
        return Err(EBADF);
    }
    let mut line = Line::new();
    let mut total: u32 = 0;
    for i in 0..iovs_len as u32 {
        let (base, len) = iovec(mem, iovs, i)?;
        let bytes = slice(mem, base as i32, u64::from(len))?;
        match &mut run.output {
            Some((out, err)) => (if fd == 1 { out } else { err }).push(bytes),
            None => {
                for chunk in bytes.split_inclusive(|&b| b == b'\n') {
                    line.write_bytes(chunk);
                    if chunk.ends_with(b"\n") {
                        line.flush();
                    }
                }
            }
        }
        total = total.checked_add(len).ok_or(EINVAL)?;
    }
    line.flush();
    put_u32(mem, nwritten, total)
}

/// Reads the request's stdin into the iovecs; 0 bytes at its end (EOF).
fn fd_read(mem: &mut [u8], run: &mut Run, iovs: i32, iovs_len: i32, nread: i32) -> Result<(), i32> {
    let mut total: u32 = 0;
    for i in 0..iovs_len as u32 {
        let (base, len) = iovec(mem, iovs, i)?;
        let to = slice(mem, base as i32, u64::from(len))?;
        let from = run.stdin.get(run.stdin_at..).unwrap_or_default();
        let n = to.len().min(from.len());
        to[..n].copy_from_slice(&from[..n]);
        run.stdin_at += n;
        // n <= len, a u32, and the sum of lengths is checked below.
        total = total.checked_add(n as u32).ok_or(EINVAL)?;
    }
    put_u32(mem, nread, total)
}

/// args_sizes_get and environ_sizes_get: the count and the bytes of the
/// strings with their NULs.
fn sizes(mem: &mut [u8], list: &[Vec<u8>], count: i32, size: i32) -> Result<(), i32> {
    let bytes = list.iter().map(|s| s.len() + 1).sum::<usize>();
    put_u32(mem, count, u32::try_from(list.len()).map_err(|_| EINVAL)?)?;
    put_u32(mem, size, u32::try_from(bytes).map_err(|_| EINVAL)?)
}

/// args_get and environ_get: a pointer per string at `ptrs`, the strings
/// themselves NUL-terminated one after another at `buf`.
fn strings(mem: &mut [u8], list: &[Vec<u8>], ptrs: i32, buf: i32) -> Result<(), i32> {
    let mut at = buf as u32;
    for (i, s) in list.iter().enumerate() {
        let slot = (ptrs as u32)
            .checked_add(u32::try_from(i * 4).map_err(|_| EFAULT)?)
            .ok_or(EFAULT)?;
        put_u32(mem, slot as i32, at)?;
        let len = u32::try_from(s.len() + 1).map_err(|_| EFAULT)?;
        let to = slice(mem, at as i32, u64::from(len))?;
        to[..s.len()].copy_from_slice(s);
        to[s.len()] = 0;
        at = at.checked_add(len).ok_or(EFAULT)?;
    }
    Ok(())
}

macro_rules! wasi_fn {
    ($linker:expr, $name:literal, $f:expr) => {
        $linker.func_wrap(MODULE, $name, $f)?
    };
}

/// Defines every function of the subset in `linker`.
pub fn add_to_linker(linker: &mut Linker<Wasi>) -> wasmtime::Result<()> {
    type C<'a> = Caller<'a, Wasi>;
    wasi_fn!(
        linker,
        "args_sizes_get",
        |mut c: C, argc: i32, size: i32| {
            with_memory(&mut c, |m, w| sizes(m, &w.run.args, argc, size))
        }
    );
    wasi_fn!(linker, "args_get", |mut c: C, argv: i32, buf: i32| {
        with_memory(&mut c, |m, w| strings(m, &w.run.args, argv, buf))
    });
    wasi_fn!(
        linker,
        "environ_sizes_get",
        |mut c: C, n: i32, size: i32| { with_memory(&mut c, |m, w| sizes(m, &w.run.env, n, size)) }
    );
    wasi_fn!(linker, "environ_get", |mut c: C, env: i32, buf: i32| {
        with_memory(&mut c, |m, w| strings(m, &w.run.env, env, buf))
    });
    wasi_fn!(
        linker,
        "fd_read",
        |mut c: C, fd: i32, iovs: i32, n: i32, nread: i32| {
            if fd != 0 {
                return EBADF;
            }
            with_memory(&mut c, |m, w| fd_read(m, &mut w.run, iovs, n, nread))
        }
    );
    wasi_fn!(
        linker,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, n: i32, nwritten: i32| {
            with_memory(&mut c, |m, w| {
                fd_write(m, &mut w.run, fd, iovs, n, nwritten)
            })
        }
    );
    wasi_fn!(linker, "fd_close", |_: C, fd: i32| if is_stdio(fd) {
        SUCCESS
    } else {
        EBADF
    });
    wasi_fn!(linker, "fd_fdstat_get", |mut c: C, fd: i32, stat: i32| {
        if !is_stdio(fd) {
            return EBADF;
        }
        // fdstat: filetype u8, flags u16 at 2, rights u64 at 8 and 16.
        // All rights: wasi-libc only looks at the file type.
        with_memory(&mut c, |m, _| {
            let s = slice(m, stat, 24)?;
            s.fill(0);
            s[0] = FILETYPE_CHARACTER_DEVICE;
            s[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
            Ok(())
        })
    });
    wasi_fn!(
        linker,
        "fd_seek",
        |_: C, fd: i32, _off: i64, _whence: i32, _at: i32| {
            if is_stdio(fd) {
                ESPIPE
            } else {
                EBADF
            }
        }
    );
    // No preopened directories: wasi-libc asks from fd 3 up until EBADF.
    wasi_fn!(linker, "fd_prestat_get", |_: C, _fd: i32, _buf: i32| EBADF);
    wasi_fn!(
        linker,
        "fd_prestat_dir_name",
        |_: C, _fd: i32, _p: i32, _n: i32| EBADF
    );
    wasi_fn!(
        linker,
        "clock_time_get",
        |mut c: C, id: i32, _precision: i64, at: i32| {
            if !(CLOCK_REALTIME..=CLOCK_THREAD_CPUTIME).contains(&id) {
                return EINVAL;
            }
            with_memory(&mut c, |m, w| {
                let ns = if id == CLOCK_REALTIME {
                    w.clock.realtime()
                } else {
                    w.clock.monotonic()
                };
                put_u64(m, at, ns)
            })
        }
    );
    wasi_fn!(linker, "clock_res_get", |mut c: C, id: i32, at: i32| {
        if !(CLOCK_REALTIME..=CLOCK_THREAD_CPUTIME).contains(&id) {
            return EINVAL;
        }
        with_memory(&mut c, |m, _| put_u64(m, at, 1))
    });
    wasi_fn!(linker, "random_get", |mut c: C, buf: i32, len: i32| {
        with_memory(&mut c, |m, w| {
            w.rng.fill_bytes(slice(m, buf, u64::from(len as u32))?);
            Ok(())
        })
    });
    wasi_fn!(linker, "proc_exit", |_: C,
                                   code: i32|
     -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(ProcExit(code)))
    });
    wasi_fn!(linker, "sched_yield", |_: C| SUCCESS);
    Ok(())
}
