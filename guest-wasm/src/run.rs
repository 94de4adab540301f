//! Loading and running the module: the TSC rate, the engine with the
//! host's settings, the module straight from the initrd, WASI from
//! wasi.rs, then READY and either `_start` at once (`wasm_run=1`) or the
//! command loop, where EXEC runs it (exec.rs).

use alloc::sync::Arc;
use core::ptr::NonNull;

use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Trap};

use crate::abi::{
    command_opcode, CloneInfo, ACK_WAIT_PORT, CLONE_INFO_ADDR, CLONE_INFO_MAGIC, CMD_EXEC,
    CMD_EXIT, CMD_INVOKE, CMD_NO_VMM, CMD_RESUMED, CMD_RESUME_EXEC, CMD_RESUME_INVOKE, READY,
    READY_PORT,
};
use crate::clock::{self, Clock};
use crate::io::{exit, inl, outl, rdtsc, say};
use crate::job::Job;
use crate::wasi::{ProcExit, Wasi};
use crate::{engine_config, exec, wasi_subset, EXIT_BAD_MODULE, EXIT_TRAP};

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
    // Before READY, so that a template carries the rate to its clones.
    let (hz, source) = clock::tsc_rate();
    if !quiet {
        say!(
            "vmfork-wasm: tsc {}.{:03} MHz ({}) in {} cycles",
            hz / 1_000_000,
            hz / 1000 % 1000,
            source.name(),
            rdtsc().wrapping_sub(job.boot_tsc)
        );
    }
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
    let mut store = Store::new(&engine, Wasi::new(Clock::new(hz, job.boot_tsc)));
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
            finish("wizer.initialize", Err(e), 0, hz, quiet);
        }
    }
    let loaded = rdtsc().wrapping_sub(start);
    if !quiet {
        say!(
            "vmfork-wasm: module loaded in {}; {} since boot",
            Cycles(loaded, hz),
            Cycles(rdtsc().wrapping_sub(job.boot_tsc), hz)
        );
    }
    say!("vmfork-guest: READY");
    outl(READY_PORT, READY);
    if job.opts.run_now {
        run_start(&mut store, &instance, quiet)
    }
    serve(&mut store, &instance)
}

/// The clone-info page, when the VMM wrote one (docs/guest-abi.md).
fn clone_info() -> Option<CloneInfo> {
    // SAFETY: the page is identity-mapped RAM that the e820 map reserves
    // and nothing in the guest uses; the VMM fills it while the vCPU is
    // stopped, before the `in` that returns RESUMED completes.
    let info = unsafe { core::ptr::read_volatile(CLONE_INFO_ADDR as *const CloneInfo) };
    (info.magic == CLONE_INFO_MAGIC).then_some(info)
}

/// RESUMED: the clone becomes itself: REALTIME is the host's time and
/// random_get draws from a key reseeded with the host's entropy.
fn resumed(wasi: &mut Wasi) {
    if let Some(info) = clone_info() {
        wasi.clock.set_realtime(info.host_unix_ns);
        wasi.reseed(&info.entropy);
    }
}

/// The command loop, as the Linux agent's: every command but EXIT is
/// acknowledged, by the next park's `in` from ACK_WAIT_PORT. The loop's
/// state lives on the guest's stack, so a template hands it to clones.
fn serve(store: &mut Store<Wasi>, instance: &Instance) -> ! {
    let mut ack_due = false;
    // Whether `_start` has not run yet: a clone runs one request.
    let mut fresh = true;
    let mut invocations: u32 = 0;
    loop {
        let command = inl(if core::mem::replace(&mut ack_due, true) {
            ACK_WAIT_PORT
        } else {
            READY_PORT
        });
        match command_opcode(command) {
            _ if command == CMD_NO_VMM => {
                say!(
                    "vmfork-wasm: no VMM on port {:#x}; exiting through isa-debug-exit",
                    READY_PORT
                );
                exit(0)
            }
            CMD_EXIT => exit(0),
            CMD_RESUMED => resumed(store.data_mut()),
            CMD_EXEC => {
                invocations = invocations.wrapping_add(1);
                exec::exec(store, instance, &mut fresh, invocations);
            }
            // One guest entry instead of two: each costs the VMM a vCPU
            // run, tens of microseconds on a PVM host (docs/wasm.md).
            CMD_RESUME_EXEC => {
                resumed(store.data_mut());
                invocations = invocations.wrapping_add(1);
                exec::exec(store, instance, &mut fresh, invocations);
            }
            CMD_INVOKE => {
                invocations = invocations.wrapping_add(1);
                exec::invoke(invocations);
            }
            CMD_RESUME_INVOKE => {
                resumed(store.data_mut());
                invocations = invocations.wrapping_add(1);
                exec::invoke(invocations);
            }
            // PING, DIRTY and anything unknown: acknowledged, nothing more.
            _ => {}
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
    let hz = store.data().clock.hz();
    finish("_start", result, cycles, hz, quiet)
}

/// Exits as the module asked once export `what` ended: returning is
/// status 0, proc_exit(n) is n (mod 256, as on Linux), a trap is
/// EXIT_TRAP.
fn finish(what: &str, result: wasmtime::Result<()>, cycles: u64, hz: u64, quiet: bool) -> ! {
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
            Cycles(cycles, hz),
            status
        );
    }
    exit(status)
}

/// TSC cycles, and the time they took at `hz` (clock.rs).
struct Cycles(u64, u64);

impl core::fmt::Display for Cycles {
    fn fmt(&self, f: &mut core::fmt::Formatter) -> core::fmt::Result {
        let us = u128::from(self.0) * 1_000_000 / u128::from(self.1.max(1));
        write!(f, "{} cycles ({}.{:03} ms)", self.0, us / 1000, us % 1000)
    }
}
