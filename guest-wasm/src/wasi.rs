//! The guest's own WASI preview 1 (the subset in wasm/src/wasi.rs):
//! stdout and stderr go to the console, stdin is empty, there are no
//! arguments, environment or preopened directories, clocks count from
//! boot on the TSC, and randomness is RDRAND (or a TSC-seeded generator
//! where the CPU has none). wasmtime-wasi needs std, hence this file.

use core::fmt;

use wasmtime::{Caller, Extern, Linker, Memory};

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

/// The store's data: what the WASI functions keep between calls.
pub struct Wasi {
    boot_tsc: u64,
    tsc_hz: Option<u64>,
    rdrand: bool,
    rng: u64,
}

impl Wasi {
    pub fn new(boot_tsc: u64) -> Wasi {
        Wasi {
            boot_tsc,
            tsc_hz: cpu::tsc_hz(),
            rdrand: cpu::has_rdrand(),
            rng: rdtsc(),
        }
    }

    fn nanos_since_boot(&self) -> u64 {
        let cycles = rdtsc().wrapping_sub(self.boot_tsc);
        // Without a known rate, pretend 1 GHz: time still moves forward.
        let hz = self.tsc_hz.unwrap_or(1_000_000_000);
        (u128::from(cycles) * 1_000_000_000 / u128::from(hz)) as u64
    }

    fn random(&mut self) -> u64 {
        if self.rdrand {
            if let Some(r) = cpu::rdrand() {
                return r;
            }
        }
        // splitmix64
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
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

/// Writes each iovec to the console, ending a record at every newline
/// so that lines reach the console whole.
fn fd_write(mem: &mut [u8], fd: i32, iovs: i32, iovs_len: i32, nwritten: i32) -> Result<(), i32> {
    if fd != 1 && fd != 2 {
        return Err(EBADF);
    }
    let mut line = Line::new();
    let mut total: u32 = 0;
    for i in 0..iovs_len as u32 {
        let at = (iovs as u32)
            .checked_add(i.checked_mul(8).ok_or(EFAULT)?)
            .ok_or(EFAULT)? as i32;
        let base = get_u32(mem, at)?;
        let len = get_u32(mem, at.wrapping_add(4))?;
        let bytes = slice(mem, base as i32, u64::from(len))?;
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            line.write_bytes(chunk);
            if chunk.ends_with(b"\n") {
                line.flush();
            }
        }
        total = total.checked_add(len).ok_or(EINVAL)?;
    }
    line.flush();
    put_u32(mem, nwritten, total)
}

macro_rules! wasi_fn {
    ($linker:expr, $name:literal, $f:expr) => {
        $linker.func_wrap(MODULE, $name, $f)?
    };
}

/// Defines every function of the subset in `linker`.
pub fn add_to_linker(linker: &mut Linker<Wasi>) -> wasmtime::Result<()> {
    type C<'a> = Caller<'a, Wasi>;
    // No arguments and no environment: zero of each, and nothing to copy.
    wasi_fn!(
        linker,
        "args_sizes_get",
        |mut c: C, argc: i32, size: i32| {
            with_memory(&mut c, |m, _| {
                put_u32(m, argc, 0)?;
                put_u32(m, size, 0)
            })
        }
    );
    wasi_fn!(linker, "args_get", |_: C, _: i32, _: i32| SUCCESS);
    wasi_fn!(
        linker,
        "environ_sizes_get",
        |mut c: C, n: i32, size: i32| {
            with_memory(&mut c, |m, _| {
                put_u32(m, n, 0)?;
                put_u32(m, size, 0)
            })
        }
    );
    wasi_fn!(linker, "environ_get", |_: C, _: i32, _: i32| SUCCESS);
    // stdin is empty.
    wasi_fn!(
        linker,
        "fd_read",
        |mut c: C, fd: i32, _iovs: i32, _n: i32, nread: i32| {
            if fd != 0 {
                return EBADF;
            }
            with_memory(&mut c, |m, _| put_u32(m, nread, 0))
        }
    );
    wasi_fn!(
        linker,
        "fd_write",
        |mut c: C, fd: i32, iovs: i32, n: i32, nwritten: i32| {
            with_memory(&mut c, |m, _| fd_write(m, fd, iovs, n, nwritten))
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
            // Every clock counts from boot for now, the realtime one too:
            // the guest has no wall clock until the VMM hands it one.
            with_memory(&mut c, |m, w| put_u64(m, at, w.nanos_since_boot()))
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
            for chunk in slice(m, buf, u64::from(len as u32))?.chunks_mut(8) {
                let r = w.random().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
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
