//! seccomp-BPF allow-lists, one per thread type (lists.rs), compiled to BPF
//! at build time (build.rs, programs.rs) and installed by each thread when
//! it starts, before it touches anything the guest controls. A thread inherits the filter of the thread
//! that spawned it and adds its own; the kernel allows a call only if every
//! filter on the thread does, so a thread's effective list is its own list
//! within the main thread's. A call outside the list is trapped: one line
//! on stderr and exit status 18 (report.rs). docs/seccomp.md has the lists,
//! the reasons and the measured cost.

mod lists;
mod names;
mod programs;
mod report;

pub use lists::{Group, List, ThreadKind};

use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

use crate::error::{Error, Result, EXIT_SECCOMP};

/// Off until `init` turns it on. The binary always calls `init`; library
/// users (unit tests, fuzzers) run unfiltered unless they do too.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// The test hook: vCPU threads make a forbidden call once filtered.
static TEST_VIOLATION: AtomicBool = AtomicBool::new(false);

/// What `--no-seccomp` prints.
pub const DISABLED_WARNING: &str = "vmfork: warning: seccomp filters disabled (debugging only)";

pub struct Options {
    /// False with `--no-seccomp`.
    pub enabled: bool,
    /// `--test-seccomp-violation` (hidden): see `violate`.
    pub test_violation: bool,
}

/// Process-wide preparation, on the main thread before any filter and any
/// other thread exists. No thread is filtered yet: each installs its own.
pub fn init(options: &Options) -> Result<()> {
    TEST_VIOLATION.store(options.test_violation, Ordering::Relaxed);
    if !options.enabled {
        eprintln!("{DISABLED_WARNING}");
        return Ok(());
    }
    pin_malloc_arena_limit();
    // Signal handlers are set up here, while rt_sigaction is allowed: no
    // list but the launcher's has it. (The vCPU kick handler is installed
    // by the caller first, for the same reason.)
    report::install_handler()?;
    ENABLED.store(true, Ordering::Release);
    Ok(())
}

/// Whether threads install filters (false with `--no-seccomp`).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Installs `kind`'s filter on the calling thread (no TSYNC: other threads
/// keep theirs).
pub fn install(kind: ThreadKind) -> Result<()> {
    if enabled() {
        let program = programs::program(kind);
        report::set_label(kind);
        seccompiler::apply_filter(program).map_err(|e| {
            Error::Seccomp(format!(
                "installing the {} filter: {e} (--no-seccomp runs without filters, for debugging only)",
                kind.name()
            ))
        })?;
    }
    // Also without filters: `--no-seccomp` must show the call going through.
    if kind == ThreadKind::Vcpu && TEST_VIOLATION.load(Ordering::Relaxed) {
        violate();
    }
    Ok(())
}

/// `install` for a thread that cannot hand an error back: a thread that
/// could not be filtered must not go on unfiltered, so the process ends
/// with the seccomp exit status. (It cannot happen once the main thread's
/// filter went on: same kernel, same kind of program.)
pub fn install_in_thread(kind: ThreadKind) {
    if let Err(e) = install(kind) {
        eprintln!("vmfork: error: {e}");
        // SAFETY: _exit ends the process at once, without running
        // destructors other threads may be using.
        unsafe { libc::_exit(EXIT_SECCOMP) };
    }
}

/// The test hook behind the hidden `--test-seccomp-violation`: a vCPU
/// thread that has just installed its filter makes a call the vCPU list
/// forbids (socket(2)), which must end the process with the seccomp report.
/// It runs where filters are installed, once per vCPU thread (runner
/// threads are made ahead and reused), never on the path of a clone.
fn violate() {
    // SAFETY: socket(2) with constant arguments; a descriptor it returns
    // (only possible without filters) is closed at once.
    let went_through = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    };
    // Without filters the call goes through; saying so lets a test tell
    // that from a hook that never ran.
    if went_through {
        eprintln!("{UNFILTERED_VIOLATION}");
    }
}

/// What the test hook prints when its forbidden call went through.
pub const UNFILTERED_VIOLATION: &str =
    "vmfork: test hook: socket(2) went through on a vCPU thread (no filters)";

/// glibc caps its malloc arenas the first time a thread needs a new one,
/// and may read /sys/devices/system/cpu/online to do it: in a thread whose
/// list has no openat. Setting the cap now, to glibc's own default of 8 per
/// CPU, means it never has to look.
fn pin_malloc_arena_limit() {
    // SAFETY: sysconf and mallopt take plain integers.
    unsafe {
        let cpus = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).clamp(1, 4096);
        libc::mallopt(libc::M_ARENA_MAX, (cpus * 8) as libc::c_int);
    }
}

/// Compiles `kind`'s list; calls outside it get `mismatch`. build.rs does
/// this with `SeccompAction::Trap` for the programs threads install
/// (programs.rs); at run time only the tests and measurements compile.
pub fn compile(kind: ThreadKind, mismatch: SeccompAction) -> Result<BpfProgram> {
    let rules = List::for_kind(kind)?.into_rules();
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .and_then(BpfProgram::try_from)
        .map_err(|e| Error::Seccomp(format!("compiling the {} list: {e}", kind.name())))?;
    Ok(filter)
}

#[cfg(test)]
mod tests;
