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
mod refuse;
mod report;
mod tree;

pub use lists::{Group, List, ThreadKind, VCPU_FD_FLOOR, VCPU_FD_FLOORS};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

use seccompiler::{BpfProgram, SeccompAction, TargetArch};

use crate::error::{Error, Result, EXIT_SECCOMP};

/// Off until `init` turns it on. The binary always calls `init`; library
/// users (unit tests, fuzzers) run unfiltered unless they do too.
static ENABLED: AtomicBool = AtomicBool::new(false);
/// Where interrupt eventfds go and vCPUs may write them: one of
/// `VCPU_FD_FLOORS`, chosen by `init` for the open-file limit.
static FLOOR: AtomicI32 = AtomicI32::new(VCPU_FD_FLOOR);
/// The test hook: which forbidden call (`Violation as u8`, 0 for none)
/// threads of its kind make once filtered.
static TEST_VIOLATION: AtomicU8 = AtomicU8::new(0);

/// What `--no-seccomp` prints.
pub const DISABLED_WARNING: &str = "vmfork: warning: seccomp filters disabled (debugging only)";

pub struct Options {
    /// False with `--no-seccomp`.
    pub enabled: bool,
    /// `--test-seccomp-violation[=RULE]` (hidden): see `violate`.
    pub test_violation: Option<Violation>,
}

/// The deny rules the test hook can break, one forbidden call each, made
/// by the first thread of the kind named right after its filter is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Violation {
    /// socket(2) on a vCPU thread.
    VcpuSocket = 1,
    /// write(2) to stdin (not the console) on a vCPU thread.
    VcpuWrite,
    /// A KVM ioctl on an HTTP thread.
    HttpKvm,
    /// clone3(2) on an HTTP thread.
    HttpClone3,
    /// clone(2) of a thread on an HTTP thread.
    HttpClone,
    /// openat(2) on an HTTP thread.
    HttpOpen,
}

impl Violation {
    pub const ALL: [Violation; 6] = [
        Violation::VcpuSocket,
        Violation::VcpuWrite,
        Violation::HttpKvm,
        Violation::HttpClone3,
        Violation::HttpClone,
        Violation::HttpOpen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Violation::VcpuSocket => "vcpu-socket",
            Violation::VcpuWrite => "vcpu-write",
            Violation::HttpKvm => "http-kvm",
            Violation::HttpClone3 => "http-clone3",
            Violation::HttpClone => "http-clone",
            Violation::HttpOpen => "http-open",
        }
    }

    pub fn parse(name: &str) -> Option<Violation> {
        Violation::ALL.into_iter().find(|v| v.name() == name)
    }

    fn thread(self) -> ThreadKind {
        match self {
            Violation::VcpuSocket | Violation::VcpuWrite => ThreadKind::Vcpu,
            _ => ThreadKind::Http,
        }
    }

    /// What the hook prints when the call went through (no filters).
    pub fn unfiltered(self) -> String {
        match self {
            Violation::VcpuSocket => UNFILTERED_VIOLATION.to_string(),
            v => format!(
                "vmfork: test hook: {} went through on a {} thread (no filters)",
                v.name(),
                v.thread().name()
            ),
        }
    }
}

/// Process-wide preparation, on the main thread before any filter and any
/// other thread exists. No thread is filtered yet: each installs its own.
pub fn init(options: &Options) -> Result<()> {
    TEST_VIOLATION.store(
        options.test_violation.map_or(0, |v| v as u8),
        Ordering::Relaxed,
    );
    if !options.enabled {
        eprintln!("{DISABLED_WARNING}");
        return Ok(());
    }
    pin_malloc_arena_limit();
    FLOOR.store(make_room_above_vcpu_fd_floor(), Ordering::Relaxed);
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
        // glibc gives a thread its malloc arena on its first allocation or
        // free, and past 8 arenas that first reads
        // /sys/devices/system/cpu/online (get_nprocs), an openat no list
        // but the main thread's allows: a reaper whose first free came
        // after its filter ended serve with exit 18 on SIGTERM. So every
        // thread allocates once here, while it still may.
        drop(std::hint::black_box(Box::new(0u64)));
        let program = programs::program(kind, vcpu_fd_floor());
        report::set_label(kind);
        seccompiler::apply_filter(program).map_err(|e| {
            Error::Seccomp(format!(
                "installing the {} filter: {e} (--no-seccomp runs without filters, for debugging only)",
                kind.name()
            ))
        })?;
    }
    // Also without filters: `--no-seccomp` must show the call going through.
    let hook = TEST_VIOLATION.load(Ordering::Relaxed);
    if let Some(v) = Violation::ALL.into_iter().find(|v| *v as u8 == hook) {
        if v.thread() == kind {
            violate(v);
        }
    }
    Ok(())
}

/// Where this process puts interrupt eventfds (see `to_vcpu_fd_range`).
pub fn vcpu_fd_floor() -> i32 {
    FLOOR.load(Ordering::Relaxed)
}

/// Moves `fd` to the lowest free descriptor at or above `vcpu_fd_floor()`,
/// the only ones a vCPU thread may write to besides stdout and stderr (8
/// bytes at a time: an eventfd's counter). The serial interrupt's eventfd
/// goes there: vCPU threads ring it. Without filters a failure leaves
/// `fd` where it is. (`init` made room above the floor where it could.)
pub fn to_vcpu_fd_range(fd: OwnedFd) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the new one is ours.
    let floor = vcpu_fd_floor();
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    if moved < 0 {
        if !enabled() {
            return Ok(fd);
        }
        return Err(Error::Seccomp(format!(
            "moving an interrupt eventfd to descriptor {floor} or above: {} (vCPU threads write only there; the open-file limit, ulimit -Hn, must be above {floor})",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fcntl just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
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

/// The test hook behind the hidden `--test-seccomp-violation[=RULE]`: a
/// thread of the kind the rule is about, having just installed its
/// filter, makes the call the rule forbids, which must end the process
/// with the seccomp report. It runs where filters are installed, once per
/// thread (runner threads are made ahead and reused), never on the path of
/// a clone or a request. Every call is harmless when it goes through.
fn violate(v: Violation) {
    // SAFETY: each call takes constant arguments or a local buffer; a
    // descriptor one returns (only possible without filters) is closed at
    // once, and the clone calls carry arguments the kernel refuses.
    let went_through = unsafe {
        match v {
            Violation::VcpuSocket => {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                if fd >= 0 {
                    libc::close(fd);
                }
                fd >= 0
            }
            Violation::VcpuWrite => {
                // Zero bytes to stdin: nothing is written either way.
                libc::write(0, [0u8; 1].as_ptr().cast(), 0);
                true
            }
            Violation::HttpKvm => {
                // KVM_GET_API_VERSION on a bad descriptor: EBADF.
                libc::ioctl(-1, 0xAE00 as libc::c_ulong);
                true
            }
            Violation::HttpClone3 => {
                // A null clone_args: EFAULT or EINVAL.
                libc::syscall(libc::SYS_clone3, 0usize, 0usize);
                true
            }
            Violation::HttpClone => {
                // CLONE_THREAD without CLONE_SIGHAND: EINVAL.
                libc::syscall(libc::SYS_clone, libc::CLONE_THREAD as libc::c_ulong, 0usize);
                true
            }
            Violation::HttpOpen => {
                let fd = libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::close(fd);
                } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EACCES) {
                    // Refused without a SIGSYS (refuse.rs): reported as
                    // one, so the test sees the rule hold.
                    report::refused(libc::SYS_openat);
                }
                true
            }
        }
    };
    // Without filters the call goes through; saying so lets a test tell
    // that from a hook that never ran.
    if went_through {
        eprintln!("{}", v.unfiltered());
    }
}

/// What the test hook prints when its forbidden socket(2) went through.
pub const UNFILTERED_VIOLATION: &str =
    "vmfork: test hook: socket(2) went through on a vCPU thread (no filters)";

/// Interrupt eventfds live at the floor and above, so the open-file limit
/// must reach past it. Most hosts' hard limit does (systemd's is 524288);
/// a process started without a service manager gets the kernel's 4096
/// (the SVM rig's init, for one), which root with CAP_SYS_RESOURCE raises
/// here. Returns the highest floor with 1024 descriptors of room above it
/// under the resulting soft limit (the lowest floor if none has).
fn make_room_above_vcpu_fd_floor() -> i32 {
    const WANTED: libc::rlim_t = VCPU_FD_FLOOR as libc::rlim_t + 65536;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            0
        } else {
            let raised = libc::rlimit {
                rlim_cur: WANTED,
                rlim_max: WANTED,
            };
            // Raising the hard limit fails without CAP_SYS_RESOURCE (or
            // past fs.nr_open): then the soft one goes up to the hard one.
            if limit.rlim_max < WANTED && libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                WANTED
            } else {
                limit.rlim_cur = limit.rlim_max;
                libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
                let mut now = limit;
                libc::getrlimit(libc::RLIMIT_NOFILE, &mut now);
                now.rlim_cur
            }
        }
    };
    VCPU_FD_FLOORS
        .into_iter()
        .find(|&f| soft >= f as libc::rlim_t + 1024)
        .unwrap_or(VCPU_FD_FLOORS[VCPU_FD_FLOORS.len() - 1])
}

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
    compile_at(kind, VCPU_FD_FLOOR, mismatch)
}

/// `compile`, with a vCPU's eventfd writes from `floor` up.
pub fn compile_at(kind: ThreadKind, floor: i32, mismatch: SeccompAction) -> Result<BpfProgram> {
    let rules = List::for_kind_at(kind, floor)?.into_rules();
    let opens = rules.contains_key(&libc::SYS_openat) || rules.contains_key(&libc::SYS_open);
    let filter = tree::compile(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| Error::Seccomp(format!("compiling the {} list: {e}", kind.name())))?;
    Ok(if opens {
        filter
    } else {
        refuse::refuse_opens(filter)
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tree_tests;
