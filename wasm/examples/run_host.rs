//! Runs a module's `_start` on the host with the Wasm guest's engine
//! settings, for comparing its speed with the guest's:
//! `cargo run --release -p vmfork-wasm --example run_host -- IN.wasm [--pulley]`
//!
//! Only what a wasi-libc program printing to stdout needs is real here
//! (fd_write, fd_fdstat_get, fd_seek, fd_close, the size queries,
//! proc_exit); the rest of the guest's subset answers ENOSYS. `--pulley`
//! compiles for Wasmtime's interpreter instead of x86-64.

use std::io::Write as _;
use std::process::ExitCode;

use wasmtime::{Caller, Extern, Linker, Store, Val, ValType};

const ENOSYS: i32 = 52;
/// The functions defined for real in `linker`.
const REAL: &[&str] = &[
    "fd_write",
    "fd_fdstat_get",
    "args_sizes_get",
    "environ_sizes_get",
    "fd_seek",
    "fd_close",
    "proc_exit",
];
const ESPIPE: i32 = 70;

#[derive(Debug)]
struct Exit(i32);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "proc_exit({})", self.0)
    }
}

impl std::error::Error for Exit {}

fn memory<'a>(c: &'a mut Caller<'_, ()>) -> &'a mut [u8] {
    match c.get_export("memory") {
        Some(Extern::Memory(m)) => m.data_mut(c),
        _ => &mut [],
    }
}

fn put(mem: &mut [u8], at: i32, bytes: &[u8]) -> Option<()> {
    let at = at as u32 as usize;
    mem.get_mut(at..at.checked_add(bytes.len())?)?
        .copy_from_slice(bytes);
    Some(())
}

fn get_u32(mem: &[u8], at: u32) -> Option<u32> {
    let at = at as usize;
    Some(u32::from_le_bytes(mem.get(at..at + 4)?.try_into().ok()?))
}

fn fd_write(mem: &mut [u8], iovs: i32, n: i32, nwritten: i32) -> Option<()> {
    let mut out = Vec::new();
    for i in 0..n as u32 {
        let at = (iovs as u32).checked_add(i.checked_mul(8)?)?;
        let (base, len) = (get_u32(mem, at)? as usize, get_u32(mem, at + 4)? as usize);
        out.extend_from_slice(mem.get(base..base.checked_add(len)?)?);
    }
    std::io::stdout().write_all(&out).ok()?;
    put(mem, nwritten, &(out.len() as u32).to_le_bytes())
}

fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<()>> {
    let m = vmfork_wasm::wasi::MODULE;
    let mut linker = Linker::new(engine);
    let errno = |ok: Option<()>| if ok.is_some() { 0 } else { 21 };
    linker.func_wrap(
        m,
        "fd_write",
        move |mut c: Caller<'_, ()>, fd: i32, iovs: i32, n: i32, nw: i32| {
            if fd != 1 && fd != 2 {
                return 8;
            }
            errno(fd_write(memory(&mut c), iovs, n, nw))
        },
    )?;
    linker.func_wrap(
        m,
        "fd_fdstat_get",
        move |mut c: Caller<'_, ()>, _fd: i32, at: i32| {
            let mut stat = [0u8; 24];
            stat[0] = 2; // character device
            errno(put(memory(&mut c), at, &stat))
        },
    )?;
    for sizes in ["args_sizes_get", "environ_sizes_get"] {
        linker.func_wrap(m, sizes, move |mut c: Caller<'_, ()>, a: i32, b: i32| {
            let mem = memory(&mut c);
            errno(put(mem, a, &[0; 4]).and_then(|()| put(mem, b, &[0; 4])))
        })?;
    }
    linker.func_wrap(
        m,
        "fd_seek",
        |_: Caller<'_, ()>, _: i32, _: i64, _: i32, _: i32| ESPIPE,
    )?;
    linker.func_wrap(m, "fd_close", |_: Caller<'_, ()>, _: i32| 0)?;
    linker.func_wrap(
        m,
        "proc_exit",
        |_: Caller<'_, ()>, code: i32| -> wasmtime::Result<()> {
            Err(wasmtime::Error::new(Exit(code)))
        },
    )?;
    for (name, params, results) in vmfork_wasm::wasi::FUNCTIONS {
        if REAL.contains(name) {
            continue;
        }
        let ty = |t: &vmfork_wasm::wasi::Ty| match t {
            vmfork_wasm::wasi::Ty::I32 => ValType::I32,
            vmfork_wasm::wasi::Ty::I64 => ValType::I64,
        };
        let sig = wasmtime::FuncType::new(engine, params.iter().map(ty), results.iter().map(ty));
        linker.func_new(m, name, sig, |_, _, out| {
            out.iter_mut().for_each(|v| *v = Val::I32(ENOSYS));
            Ok(())
        })?;
    }
    Ok(linker)
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

fn run(path: &str, pulley: bool) -> Result<i32, String> {
    let wasm = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
    let mut config = vmfork_wasm::host_config().map_err(|e| e.to_string())?;
    // This engine runs what it compiles, on the host: its code must be
    // made executable, which host_config leaves to the guest.
    config.with_custom_code_memory(None);
    if pulley {
        config
            .target("pulley64")
            .map_err(|e| format!("pulley: {e:#}"))?;
    }
    let engine = wasmtime::Engine::new(&config).map_err(|e| format!("{e:#}"))?;
    let module = vmfork_wasm::compile(&engine, &wasm).map_err(|e| e.to_string())?;
    let mut store = Store::new(&engine, ());
    let instance = linker(&engine)
        .and_then(|l| l.instantiate(&mut store, &module))
        .map_err(|e| format!("instantiating: {e:#}"))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|e| format!("{e:#}"))?;
    let t0 = rdtsc();
    let result = start.call(&mut store, ());
    let cycles = rdtsc() - t0;
    let status = match result {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<Exit>() {
            Some(Exit(code)) => *code,
            None => return Err(format!("trap after {cycles} cycles: {e:#}")),
        },
    };
    let what = if pulley { "pulley" } else { "native x86-64" };
    eprintln!("run_host: _start ({what}) ran {cycles} cycles; exit status {status}");
    Ok(status)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, pulley) = match args.as_slice() {
        [path] => (path, false),
        [path, flag] if flag == "--pulley" => (path, true),
        _ => {
            eprintln!("usage: run_host IN.wasm|IN.wat [--pulley]");
            return ExitCode::from(2);
        }
    };
    match run(path, pulley) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            eprintln!("run_host: {e}");
            ExitCode::FAILURE
        }
    }
}
