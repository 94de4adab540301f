//! The Wasm guest: the default guest's ring 0 (guest/ring0) and ring-3
//! I/O, with Wasmtime's runtime in ring 3 running one WebAssembly module,
//! precompiled on the host by vmfork-wasm (wasm/) and handed over as the
//! initrd. It prints and signals READY like the default guest, then
//! either runs the module's `_start` right away (`wasm_run=1`, console
//! output, the module's exit status) or serves the exec protocol like the
//! Linux agent: RESUMED makes a clone unique (its clock and random key
//! from the clone-info page), EXEC runs `_start` once with the request's
//! argv, environment and stdin and answers with its output. docs/wasm.md.
//!
//! Wasm code runs natively in ring 3 and never faults on purpose: the
//! engine uses explicit bounds checks (see wasm/src/engine_config.rs), so
//! ring 0 (emulated on PVM hosts) is entered only for the usual services.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn)]

extern crate alloc;

// Shared with the default guest (guest/app), which uses all of them; not
// every item is used here. Formatted as part of guest/ (no cargo fmt).
#[allow(dead_code)]
#[path = "../../guest/app/abi.rs"]
#[rustfmt::skip]
mod abi;
#[allow(dead_code)]
#[path = "../../guest/app/boot.rs"]
#[rustfmt::skip]
mod boot;
#[allow(dead_code)]
#[path = "../../guest/app/io.rs"]
#[rustfmt::skip]
mod io;
#[path = "../../guest/app/mem.rs"]
#[rustfmt::skip]
mod mem;

// Shared with the host crate (wasm/): the engine settings a .cwasm must
// be loaded with, and the WASI subset.
#[allow(dead_code)]
#[path = "../../wasm/src/engine_config.rs"]
mod engine_config;
#[allow(dead_code)]
#[path = "../../wasm/src/wasi.rs"]
mod wasi_subset;

mod clock;
mod cpu;
mod exec;
mod heap;
mod job;
mod platform;
mod run;
mod wasi;

use abi::{BootInfo, PANIC_GUEST_FATAL};
use io::{crash, exit, rdtsc, say};

/// Exit statuses of the guest itself (docs/wasm.md). A module's own
/// status (proc_exit) is passed through as it is.
pub const EXIT_BAD_CMDLINE: u8 = 2;
pub const EXIT_NO_ROOM: u8 = 3;
pub const EXIT_NO_MODULE: u8 = 4;
pub const EXIT_BAD_MODULE: u8 = 5;
/// A trap, as `wasmtime run` reports one (128 + SIGABRT).
pub const EXIT_TRAP: u8 = 134;

/// What the command line asks for.
pub struct Options {
    /// Run `_start` right after READY instead of on the first EXEC.
    pub run_now: bool,
    /// Print only the module's output and errors.
    pub quiet: bool,
}

fn parse_cmdline(cmdline: &[u8]) -> Result<Options, &[u8]> {
    let mut opts = Options {
        run_now: false,
        quiet: false,
    };
    for word in cmdline.split(|&b| b == b' ' || b == b'\t' || b == b'\n') {
        let flag = match word {
            b"wasm_run=0" | b"quiet=0" => false,
            b"wasm_run=1" | b"quiet=1" => true,
            // Words for other guests pass; a bad value for ours does not.
            w if w.starts_with(b"wasm_run=") || w.starts_with(b"quiet=") => return Err(word),
            _ => continue,
        };
        if word.starts_with(b"wasm_run=") {
            opts.run_now = flag;
        } else {
            opts.quiet = flag;
        }
    }
    Ok(opts)
}

#[no_mangle]
pub extern "C" fn vmfork_main(info: &'static BootInfo) -> ! {
    let boot_tsc = rdtsc();
    io::probe_console();
    let boot = match boot::read(info) {
        Ok(b) => b,
        Err(why) => {
            say!("vmfork-wasm: panic: bad boot parameters: {}", why);
            crash(PANIC_GUEST_FATAL)
        }
    };
    let opts = match parse_cmdline(boot.cmdline) {
        Ok(o) => o,
        Err(word) => {
            say!(
                "vmfork-wasm: error: bad command line word {} (wasm_run and quiet take 0 or 1)",
                core::str::from_utf8(word).unwrap_or("(not UTF-8)")
            );
            exit(EXIT_BAD_CMDLINE)
        }
    };
    let Some(module) = cpu::initrd(info) else {
        say!(
            "vmfork-wasm: error: no module: boot with --initrd MODULE.cwasm (made by vmfork-wasm)"
        );
        exit(EXIT_NO_MODULE)
    };
    // Everything between the image and the module is the guest's: the
    // wasm stack and the allocator's heap.
    let start = info.image_end.next_multiple_of(heap::PAGE as u64);
    let end = boot
        .memmap
        .ram_end_from(start)
        .map_or(start, |ram_end| ram_end.min(module.0));
    let Some(layout) = heap::init(start, end) else {
        say!(
            "vmfork-wasm: error: the RAM between the image end {:#x} and the module at {:#x}, less the function mailbox at {:#x}..{:#x}, is too little: give the VM more memory",
            start,
            module.0,
            abi::MAILBOX_START,
            abi::MAILBOX_END
        );
        exit(EXIT_NO_ROOM)
    };
    if !opts.quiet {
        say!(
            "vmfork-wasm: boot proto={} ram={}MiB module={}KiB at {:#x} heap={}MiB",
            boot.proto,
            boot::mib(boot.memmap.ram_bytes()),
            module.1 >> 10,
            module.0,
            layout.heap_bytes >> 20
        );
    }
    let job = job::Job {
        module,
        opts,
        boot_tsc,
    };
    // Wasmtime and the module get a stack of their own: the ring-3 stack
    // of ring0/boot.S is smaller than the wasm stack limit.
    cpu::call_on_stack(layout.stack_top, run::main, job)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    match info.location() {
        Some(at) => say!(
            "vmfork-wasm: panic: {} at {}:{}",
            info.message(),
            at.file(),
            at.line()
        ),
        None => say!("vmfork-wasm: panic: {}", info.message()),
    }
    crash(PANIC_GUEST_FATAL)
}

// The toolchain's prebuilt `alloc` is compiled for unwinding and keeps
// references to these two in its cleanup paths. This guest aborts on
// panic, so nothing ever unwinds and neither is reached; they exist only
// so that the image links.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    say!("vmfork-wasm: panic: unwinding reached in an abort-on-panic guest");
    crash(PANIC_GUEST_FATAL)
}

#[no_mangle]
extern "C" fn rust_eh_personality() {}
