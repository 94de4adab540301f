//! Loading and running the module: the engine with the host's settings,
//! the module straight from the initrd, WASI from wasi.rs, then READY,
//! the command loop and `_start`.

use alloc::sync::Arc;
use core::ptr::NonNull;

use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Trap};

use crate::abi::{ACK_WAIT_PORT, CMD_EXIT, CMD_INVOKE, CMD_RESUME_INVOKE, READY, READY_PORT};
use crate::io::{exit, inl, outl, rdtsc, say};
use crate::wasi::{ProcExit, Wasi};
use crate::{cpu, engine_config, wasi_subset, Options, EXIT_BAD_MODULE, EXIT_TRAP};

pub struct Job {
    /// (address, size) of the `.cwasm` in guest RAM.
    pub module: (u64, u64),
    pub opts: Options,
    pub boot_tsc: u64,
}

/// What the host's ISA flags are checked against when a module loads.
/// The guest claims no extension past baseline x86-64: its ring 3 is
/// built for that, it enables no XSAVE state (so no AVX), and the host
/// compiles for that too, so a module needing more is refused, never run.
fn detect_host_feature(_feature: &str) -> Option<bool> {
    Some(false)
}

fn engine() -> wasmtime::Result<Engine> {
    let mut config = Config::new();
    engine_config::apply_shared(&mut config);
    // SAFETY: claims no feature at all, which is true of every CPU this
    // guest runs on (see detect_host_feature).
    unsafe { config.detect_host_feature(detect_host_feature) };
    config.with_custom_code_memory(Some(Arc::new(crate::platform::RwxCode)));
    Engine::new(&config)
}

/// Says why loading failed and exits.
fn bad_module(what: &str, e: &wasmtime::Error) -> ! {
    say!("vmfork-wasm: error: {}: {:#}", what, e);
    exit(EXIT_BAD_MODULE)
}

pub fn main(job: Job) -> ! {
    let quiet = job.opts.quiet;
    let start = rdtsc();
    let engine = engine().unwrap_or_else(|e| bad_module("creating the engine", &e));
    let bytes = core::ptr::slice_from_raw_parts_mut(job.module.0 as *mut u8, job.module.1 as usize);
    let Some(bytes) = NonNull::new(bytes) else {
        unreachable!("cpu::initrd returns a nonzero address")
    };
    // SAFETY: the initrd is identity-mapped RAM (executable like all of
    // it) that nothing else uses or changes while the module lives, which
    // is until the guest exits. Its bytes are whatever the host passed:
    // Wasmtime checks the header, version and settings and refuses
    // anything that is not a module compiled for this configuration; the
    // host (the VMM user) is trusted to pass vmfork-wasm's output.
    let module = unsafe { Module::deserialize_raw(&engine, bytes) }
        .unwrap_or_else(|e| bad_module("loading the module (a .cwasm made by vmfork-wasm?)", &e));
    let mut linker = Linker::<Wasi>::new(&engine);
    crate::wasi::add_to_linker(&mut linker).unwrap_or_else(|e| bad_module("defining WASI", &e));
    let mut store = Store::new(&engine, Wasi::new(job.boot_tsc));
    // The host accepted the module against the shared list of the subset;
    // every function on it must be defined here.
    for (name, _, _) in wasi_subset::FUNCTIONS {
        if linker.get(&mut store, wasi_subset::MODULE, name).is_err() {
            panic!("WASI function {name} is on the supported list but not defined");
        }
    }
    let instance = linker
        .instantiate(&mut store, &module)
        .unwrap_or_else(|e| bad_module("instantiating the module", &e));
    // A module pre-initialized with Wizer exports its initializer; running
    // it here, before READY, puts its work into every snapshot.
    if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "wizer.initialize") {
        if let Err(e) = init.call(&mut store, ()) {
            finish("wizer.initialize", Err(e), 0, quiet);
        }
    }
    let loaded = rdtsc().wrapping_sub(start);
    if !quiet {
        say!(
            "vmfork-wasm: module loaded in {}; {} since boot",
            Cycles(loaded),
            Cycles(rdtsc().wrapping_sub(job.boot_tsc))
        );
    }
    say!("vmfork-guest: READY");
    outl(READY_PORT, READY);
    if !job.opts.run_now {
        wait_for_invoke();
    }
    run_start(&mut store, &instance, quiet)
}

/// The command loop of the default guest, cut down: INVOKE runs the
/// module; EXIT exits; anything else is acknowledged and ignored.
fn wait_for_invoke() {
    let mut ack_due = false;
    loop {
        let command = inl(if core::mem::take(&mut ack_due) {
            ACK_WAIT_PORT
        } else {
            READY_PORT
        });
        match command {
            CMD_INVOKE | CMD_RESUME_INVOKE => return,
            CMD_EXIT => exit(0),
            _ => ack_due = true,
        }
    }
}

fn run_start(store: &mut Store<Wasi>, instance: &Instance, quiet: bool) -> ! {
    let start = match instance.get_typed_func::<(), ()>(&mut *store, "_start") {
        Ok(f) => f,
        Err(e) => bad_module("the module has no `_start() -> ()` export", &e),
    };
    let t0 = rdtsc();
    let result = start.call(&mut *store, ());
    let cycles = rdtsc().wrapping_sub(t0);
    finish("_start", result, cycles, quiet)
}

/// Exits as the module asked once export `what` ended: returning is
/// status 0, proc_exit(n) is n (mod 256, as on Linux), a trap is
/// EXIT_TRAP.
fn finish(what: &str, result: wasmtime::Result<()>, cycles: u64, quiet: bool) -> ! {
    let status = match result {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<ProcExit>() {
            Some(ProcExit(code)) => *code as u8,
            None => {
                match e.downcast_ref::<Trap>() {
                    Some(trap) => say!("vmfork-wasm: trap: {}", trap),
                    None => say!("vmfork-wasm: trap: {:#}", e),
                }
                say!("vmfork-wasm: {:?}", e);
                EXIT_TRAP
            }
        },
    };
    if !quiet {
        say!(
            "vmfork-wasm: {} ran {}; exit status {}",
            what,
            Cycles(cycles),
            status
        );
    }
    exit(status)
}

/// TSC cycles, and the time they took when the TSC rate is known (KVM
/// on PVM hosts does not say).
struct Cycles(u64);

impl core::fmt::Display for Cycles {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        write!(f, "{} cycles", self.0)?;
        if let Some(hz) = cpu::tsc_hz() {
            let us = u128::from(self.0) * 1_000_000 / u128::from(hz);
            write!(f, " ({}.{:03} ms)", us / 1000, us % 1000)?;
        }
        Ok(())
    }
}
