//! A WebAssembly function's template: the module checked and compiled on
//! the host, the Wasm guest (embedded in vmfork) booted with it as its
//! initrd, run to READY (instantiated, `wizer.initialize` done) and
//! snapshotted there. Every clone then answers EXEC by running `_start`.
//! `vmfork template build --wasm` and `serve`'s deploys both use this.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use vmfork_machine::boot::loader::{BootProtocol, KernelSource};
use vmfork_machine::control::StopLatch;
use vmfork_machine::devices::console::Console;
use vmfork_machine::exec::ExecEntry;
use vmfork_machine::machine::MachineConfig;
use vmfork_template::build::{build, Built};

use crate::Error;

/// The Wasm guest, built by build.rs (guest-wasm/build.sh).
pub static GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vmfork-guest-wasm.elf"));

/// Guest RAM below which the Wasm guest cannot hold its heap (it starts
/// at 8 MiB, above the mailbox) and a module.
pub const MIN_MEM: u64 = 16 << 20;

pub struct WasmTemplate<'a> {
    /// The module: WebAssembly binary or text.
    pub module: &'a [u8],
    /// `argv[0]` of every request (the module's name).
    pub name: &'a str,
    pub mem_size: u64,
    /// For the guest to reach READY (instantiation and `wizer.initialize`).
    pub timeout: Duration,
    /// Where the guest's console (and initialization output) goes.
    pub console: Console,
}

/// Builds `t`'s template at `out` (which must not exist). A module that is
/// not WebAssembly, imports what the guest lacks, or traps or exits while
/// initializing is [`Error`]'s module kind; anything else is the VM's.
pub fn build_template(
    t: WasmTemplate<'_>,
    out: &Path,
    on_latch: impl FnOnce(&StopLatch),
    step: impl Fn(&str),
) -> Result<Built, Error> {
    if t.mem_size < MIN_MEM {
        return Err(Error::Config(format!(
            "a Wasm function needs at least {} MiB of memory",
            MIN_MEM >> 20
        )));
    }
    step("compiling the module");
    let compiled = crate::precompile(t.module)?;
    // The guest gets the compiled module as its initrd, from a file beside
    // the template: the boot copies it into guest memory, after which the
    // file can go.
    let initrd = Scratch(out.with_extension("cwasm.tmp"));
    let mut file = std::fs::File::create(&initrd.0).map_err(vm_io)?;
    file.write_all(&compiled).map_err(vm_io)?;
    drop(file);
    let config = MachineConfig {
        kernel: KernelSource::Embedded(GUEST_ELF),
        initrd: Some(initrd.0.clone()),
        rootfs: None,
        mem_size: t.mem_size,
        vcpus: 1,
        cmdline: "quiet=1".into(),
        protocol: BootProtocol::Linux64,
        console: t.console,
        exit_on_ready: false,
        started: Instant::now(),
    };
    let exec = ExecEntry {
        argv: vec![t.name.to_string()],
        env: Vec::new(),
        cwd: None,
        lambda: None,
    };
    build(config, out, t.timeout, Some(exec), on_latch, step).map_err(|e| match e {
        // The guest ends itself before READY only when the module failed
        // to load or to initialize (docs/wasm.md has the statuses).
        vmfork_machine::error::Error::GuestExitStatus(code) => Error::Init(code),
        other => Error::Vm(other),
    })
}

/// A file removed when the build is over, however it ends.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn vm_io(e: std::io::Error) -> Error {
    Error::Vm(vmfork_machine::error::Error::Io(e))
}
