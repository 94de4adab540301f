//! The allow-lists: which system calls each thread type may make, and with
//! which arguments. docs/seccomp.md explains every group; a unit test keeps
//! the two in step.
//!
//! A list is a union of groups. A system call allowed "always" by one group
//! stays allowed always even if another group allows it only for some
//! arguments. Argument checks compare the low 32 bits (`Dword`): every
//! argument checked here is an `int` or `unsigned int` to the kernel, or
//! (mmap/mprotect `prot`, clone flags) has all its meaningful bits there.

use std::collections::BTreeMap;

use libc::c_long;
use seccompiler::{SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};

use crate::error::{Error, Result};

/// The thread types vmfork runs; each installs its own list when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: loads kernels and templates, creates, restores,
    /// snapshots and tears down VMs, and owns each VM's control loop.
    Vmm,
    /// The main thread of `clone --processes`: `Vmm` plus starting worker
    /// processes (their start-up runs under this list until they install
    /// their own).
    Launcher,
    /// A vCPU: KVM_RUN and the port I/O devices (serial, ready port).
    Vcpu,
    /// A userfaultfd handler: fills a clone's pages on first touch.
    Uffd,
    /// The control socket (`--api-sock`): one request per connection.
    Api,
    /// `serve`'s tokio threads: HTTP on sockets that exist. No KVM, no
    /// new thread, no open: clones are made on `Invoker` threads.
    Http,
    /// `serve`'s VM work: creates, restores and starts each invocation's
    /// clone, resets recycled VMs and refills warm pools; no network.
    Invoker,
    /// The template holder: loads a template into a sealed memfd and hands
    /// it to clone processes over a Unix socket.
    Holder,
    /// Turns SIGINT/SIGTERM into a clean stop.
    Signals,
    /// Stops and closes finished VMs (`serve` reapers, clone teardown).
    Reaper,
    /// Only waits and flags (restore's --timeout, holder's stop).
    Watchdog,
    /// `serve`'s deploy builds: compiles a module and builds its template
    /// (boots a VM, writes files); no network.
    Builder,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 12] = [
        ThreadKind::Vmm,
        ThreadKind::Launcher,
        ThreadKind::Vcpu,
        ThreadKind::Uffd,
        ThreadKind::Api,
        ThreadKind::Http,
        ThreadKind::Invoker,
        ThreadKind::Holder,
        ThreadKind::Signals,
        ThreadKind::Reaper,
        ThreadKind::Watchdog,
        ThreadKind::Builder,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Launcher => "launcher",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Uffd => "uffd",
            ThreadKind::Api => "api",
            ThreadKind::Http => "http",
            ThreadKind::Invoker => "invoker",
            ThreadKind::Holder => "holder",
            ThreadKind::Signals => "signals",
            ThreadKind::Reaper => "reaper",
            ThreadKind::Watchdog => "watchdog",
            ThreadKind::Builder => "builder",
        }
    }

    /// The groups this thread type's list is made of (docs/seccomp.md).
    pub fn groups(self) -> &'static [Group] {
        use Group::*;
        match self {
            // Every other list lies within this one: threads inherit it.
            ThreadKind::Vmm => &[
                Base, Write, Threads, Files, FileWrite, Memfd, Kvm, Uffd, NetOpen, NetConn, Report,
                SignalWait,
            ],
            ThreadKind::Launcher => &[
                Base, Write, Threads, Files, FileWrite, Memfd, Kvm, Uffd, NetOpen, NetConn, Report,
                SignalWait, Spawn,
            ],
            // No write(2) but to the console and the serial interrupt.
            ThreadKind::Vcpu => &[Base, ConsoleWrite, VcpuRun],
            ThreadKind::Uffd => &[Base, Write, UffdServe],
            ThreadKind::Api => &[Base, Write, ApiConn],
            ThreadKind::Http => &[Base, Write, NetConn, ProcStatus],
            ThreadKind::Invoker => &[Base, Write, Threads, Files, Kvm],
            ThreadKind::Holder => &[Base, Write, Files, Memfd, UnixServer, Report],
            ThreadKind::Signals => &[Base, Write, SignalWait],
            ThreadKind::Reaper => &[Base, Write, Teardown],
            ThreadKind::Watchdog => &[Base, Write],
            ThreadKind::Builder => &[Base, Write, Threads, Files, FileWrite, Memfd, Kvm],
        }
    }
}

/// A set of system calls that serve one purpose; lists are unions of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Base,
    Write,
    ConsoleWrite,
    ProcStatus,
    Threads,
    Files,
    FileWrite,
    Memfd,
    Kvm,
    Uffd,
    NetOpen,
    NetConn,
    Report,
    Spawn,
    VcpuRun,
    UffdServe,
    ApiConn,
    UnixServer,
    SignalWait,
    Teardown,
}

impl Group {
    pub fn name(self) -> &'static str {
        match self {
            Group::Base => "base",
            Group::Write => "write",
            Group::ConsoleWrite => "console-write",
            Group::ProcStatus => "proc-status",
            Group::Threads => "threads",
            Group::Files => "files",
            Group::FileWrite => "file-write",
            Group::Memfd => "memfd",
            Group::Kvm => "kvm",
            Group::Uffd => "userfaultfd",
            Group::NetOpen => "net-open",
            Group::NetConn => "net-conn",
            Group::Report => "report",
            Group::Spawn => "spawn",
            Group::VcpuRun => "vcpu-run",
            Group::UffdServe => "uffd-serve",
            Group::ApiConn => "api-conn",
            Group::UnixServer => "unix-server",
            Group::SignalWait => "signal-wait",
            Group::Teardown => "teardown",
        }
    }

    /// Adds this group's calls to `l`; `floor` is where a vCPU's writes
    /// to interrupt eventfds may start (ConsoleWrite).
    fn add_to(self, l: &mut List, floor: i32) -> Result<()> {
        use libc::*;
        match self {
            Group::Base => {
                l.always(&[
                    // The allocator (arenas, large blocks, trimming) and
                    // thread stacks being freed.
                    SYS_munmap,
                    SYS_madvise,
                    SYS_brk,
                    SYS_mremap,
                    // Locks, condition variables, channels, sleeps, clocks.
                    SYS_futex,
                    SYS_sched_yield,
                    SYS_nanosleep,
                    SYS_clock_nanosleep,
                    SYS_clock_gettime,
                    SYS_gettimeofday,
                    SYS_restart_syscall,
                    // Returning from the vCPU kick handler; a thread's exit
                    // masks signals and drops its alternate signal stack.
                    SYS_rt_sigreturn,
                    SYS_rt_sigprocmask,
                    SYS_sigaltstack,
                    // Ending a thread or the process. (write(2) is a group
                    // of its own: vCPU threads may write only to the
                    // console and their interrupt lines.)
                    SYS_exit,
                    SYS_exit_group,
                    SYS_gettid,
                    SYS_getpid,
                    // The first HashMap of a thread seeds its hasher.
                    SYS_getrandom,
                ]);
                // Nothing maps code after start-up.
                l.when(SYS_mmap, arg_lacks(2, PROT_EXEC as u64)?);
                l.when(SYS_mprotect, arg_lacks(2, PROT_EXEC as u64)?);
                // abort() (a panic while panicking) signals its own thread.
                l.when(SYS_tgkill, arg_is(2, &[SIGABRT as u64])?);
            }
            Group::Write => {
                // Logs, sockets, files, tokio's and the irqchip's eventfds,
                // and the SIGSYS report.
                l.always(&[SYS_write]);
            }
            Group::ConsoleWrite => {
                // stdout (the guest console with Console::Stdout), stderr
                // (errors and the SIGSYS report), and 8-byte writes to the
                // serial interrupt's eventfd, which `vcpu_fd_range` moved
                // to a descriptor at or above VCPU_FD_FLOOR. Descriptors
                // are handed out lowest first, so a socket lands there only
                // once VCPU_FD_FLOOR descriptors are open, and even then
                // takes only 8-byte writes.
                l.when(SYS_write, arg_is(0, &[1, 2])?);
                l.when(
                    SYS_write,
                    vec![SeccompRule::new(vec![
                        SeccompCondition::new(
                            0,
                            SeccompCmpArgLen::Dword,
                            SeccompCmpOp::Ge,
                            floor as u64,
                        )
                        .map_err(bad)?,
                        SeccompCondition::new(2, SeccompCmpArgLen::Qword, SeccompCmpOp::Eq, 8)
                            .map_err(bad)?,
                    ])
                    .map_err(bad)?],
                );
            }
            Group::ProcStatus => {
                // /proc/self/status for /metrics' resident memory, from a
                // descriptor opened before the filter (no openat here).
                l.always(&[SYS_pread64]);
            }
            Group::Threads => {
                // clone3 passes its flags in memory BPF cannot read, so it
                // is allowed here as is; execve is what only Spawn has.
                l.always(&[
                    SYS_clone3,
                    SYS_rseq,
                    SYS_set_robust_list,
                    SYS_sched_getaffinity,
                ]);
                l.when(SYS_clone, arg_has(0, CLONE_THREAD as u64)?);
                // glibc installs its internal SIGSETXID handler (signal 33,
                // __SIGRTMIN + 1) when the process starts its first thread.
                l.when(SYS_rt_sigaction, arg_is(0, &[SIGSETXID])?);
                l.when(
                    SYS_prctl,
                    arg_is(0, &[PR_SET_NAME as u64, PR_SET_NO_NEW_PRIVS as u64])?,
                );
                // A new thread stacks its own, narrower filter.
                l.when(SYS_seccomp, arg_is(0, &[SECCOMP_SET_MODE_FILTER as u64])?);
            }
            Group::Files => {
                l.always(&[
                    SYS_read,
                    SYS_pread64,
                    SYS_readv,
                    SYS_lseek,
                    SYS_close,
                    SYS_fstat,
                    SYS_newfstatat,
                    SYS_statx,
                    SYS_readlink,
                    SYS_readlinkat,
                    SYS_getcwd,
                    SYS_getdents64,
                    // Whether a template's files are this user's.
                    SYS_geteuid,
                ]);
                // Opening only what exists: no O_CREAT, no O_TMPFILE.
                l.when(
                    SYS_openat,
                    arg_lacks(2, (O_CREAT | (O_TMPFILE & !O_DIRECTORY)) as u64)?,
                );
                l.when(
                    SYS_fcntl,
                    arg_is(
                        1,
                        &[
                            F_GETFD as u64,
                            F_SETFD as u64,
                            F_GETFL as u64,
                            F_SETFL as u64,
                            F_DUPFD_CLOEXEC as u64,
                        ],
                    )?,
                );
                // Finding a finished clone's written pages (clone/reset.rs).
                l.when(SYS_ioctl, arg_is(1, &[crate::ioctls::PAGEMAP_SCAN])?);
            }
            Group::FileWrite => {
                // Templates and snapshots: written into a hidden directory,
                // fsynced and renamed into place; removed on failure.
                l.always(&[
                    SYS_openat,
                    SYS_pwrite64,
                    SYS_writev,
                    SYS_ftruncate,
                    SYS_fallocate,
                    SYS_fsync,
                    SYS_fdatasync,
                    SYS_mkdir,
                    SYS_mkdirat,
                    SYS_rename,
                    SYS_renameat,
                    SYS_renameat2,
                    SYS_unlink,
                    SYS_unlinkat,
                    SYS_rmdir,
                    SYS_copy_file_range,
                    SYS_sendfile,
                ]);
            }
            Group::Memfd => {
                // A template's RAM as a sealed memfd (clone/memfd.rs).
                l.always(&[SYS_memfd_create, SYS_ftruncate, SYS_pwrite64]);
                l.when(
                    SYS_fcntl,
                    arg_is(1, &[F_ADD_SEALS as u64, F_GET_SEALS as u64])?,
                );
            }
            Group::Kvm => {
                // Every KVM ioctl (type 0xAE) on /dev/kvm, VM and vCPU fds,
                // and the eventfds wired to the irqchip. A VM's threads are
                // kicked out of KVM_RUN with SIGRTMIN.
                l.always(&[SYS_eventfd2]);
                l.when(SYS_ioctl, ioctl_type(KVMIO)?);
                l.when(SYS_tgkill, arg_is(2, &[SIGRTMIN() as u64])?);
            }
            Group::Uffd => {
                l.always(&[SYS_userfaultfd]);
                l.when(SYS_ioctl, ioctl_type(UFFDIO)?);
            }
            Group::NetOpen => {
                // Control sockets, holder sockets, `serve --listen`.
                l.when(
                    SYS_socket,
                    arg_is(0, &[AF_UNIX as u64, AF_INET as u64, AF_INET6 as u64])?,
                );
                l.always(&[SYS_bind, SYS_listen, SYS_connect]);
            }
            Group::NetConn => {
                l.always(&[
                    SYS_accept4,
                    SYS_read,
                    SYS_readv,
                    SYS_writev,
                    SYS_recvfrom,
                    SYS_recvmsg,
                    SYS_sendto,
                    SYS_sendmsg,
                    SYS_shutdown,
                    SYS_getsockname,
                    SYS_getpeername,
                    SYS_setsockopt,
                    SYS_getsockopt,
                    SYS_close,
                    SYS_poll,
                    SYS_ppoll,
                    // tokio's reactor and its wake-ups.
                    SYS_epoll_create1,
                    SYS_epoll_ctl,
                    SYS_epoll_wait,
                    SYS_epoll_pwait,
                    SYS_eventfd2,
                ]);
                l.when(SYS_ioctl, arg_is(1, &[FIONBIO])?);
            }
            Group::Report => {
                // isatty(): progress lines only go to a terminal; clone
                // --json reports the process's own page faults.
                l.when(SYS_ioctl, arg_is(1, &[TCGETS])?);
                l.always(&[SYS_getrusage]);
            }
            Group::Spawn => {
                // Worker processes (std::process::Command, i.e.
                // posix_spawn), then their start-up until they install
                // their own filter: the dynamic loader maps code.
                l.always(&[
                    SYS_clone,
                    SYS_vfork,
                    SYS_execve,
                    SYS_wait4,
                    SYS_pipe2,
                    SYS_dup2,
                    SYS_dup3,
                    SYS_rt_sigaction,
                    SYS_arch_prctl,
                    SYS_set_tid_address,
                    SYS_access,
                    SYS_prlimit64,
                    SYS_mmap,
                    SYS_mprotect,
                ]);
            }
            Group::VcpuRun => {
                // KVM_RUN, and the registers for a stop message's RIP. No
                // other ioctl, no open, no socket, no new thread or process.
                l.when(
                    SYS_ioctl,
                    arg_is(1, &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS])?,
                );
            }
            Group::UffdServe => {
                l.always(&[SYS_poll, SYS_ppoll, SYS_read, SYS_close]);
                l.when(SYS_ioctl, arg_is(1, &[crate::ioctls::UFFDIO_COPY])?);
            }
            Group::ApiConn => {
                l.always(&[
                    SYS_accept4,
                    SYS_read,
                    SYS_recvfrom,
                    SYS_sendto,
                    SYS_setsockopt,
                    SYS_close,
                ]);
            }
            Group::UnixServer => {
                l.when(SYS_socket, arg_is(0, &[AF_UNIX as u64])?);
                l.always(&[
                    SYS_bind,
                    SYS_listen,
                    SYS_accept4,
                    // A socket nobody answers on is stale: connect to tell.
                    SYS_connect,
                    SYS_sendmsg,
                    SYS_unlink,
                ]);
                l.when(SYS_ioctl, arg_is(1, &[FIONBIO])?);
            }
            Group::SignalWait => l.always(&[SYS_rt_sigtimedwait]),
            Group::Teardown => {
                l.always(&[SYS_close]);
                l.when(SYS_tgkill, arg_is(2, &[SIGRTMIN() as u64])?);
                // Recycling a finished clone's VM completes its vCPUs'
                // pending I/O (one KVM_RUN with immediate_exit set), reads
                // /proc/self/pagemap and refills written pages from the
                // template's memfd (fds opened before the filter).
                l.when(
                    SYS_ioctl,
                    arg_is(1, &[KVM_RUN, crate::ioctls::PAGEMAP_SCAN])?,
                );
                l.always(&[SYS_pread64]);
            }
        }
        Ok(())
    }
}

/// The lowest descriptor number of a vCPU thread's interrupt eventfds
/// (ConsoleWrite), highest first: the vCPU list is built for each, and a
/// process uses the highest its open-file limit leaves room above (8192
/// almost everywhere; 1024 under the kernel's default hard limit of 4096,
/// which only root may raise). Negative descriptors compare above it too:
/// write(2) fails on them with EBADF.
pub const VCPU_FD_FLOORS: [i32; 2] = [8192, 1024];
pub const VCPU_FD_FLOOR: i32 = VCPU_FD_FLOORS[0];

/// The ioctl "type" byte of KVM and of userfaultfd (linux/kvm.h,
/// linux/userfaultfd.h).
const KVMIO: u64 = 0xAE;
const UFFDIO: u64 = 0xAA;

/// glibc's internal signal for set*id() across threads (nptl/pthreadP.h).
const SIGSETXID: u64 = 33;

/// `_IOR(type, nr, size)` as the kernel's asm-generic/ioctl.h builds it.
const fn ior(ty: u64, nr: u64, size: usize) -> u64 {
    (2 << 30) | ((size as u64) << 16) | (ty << 8) | nr
}

pub(super) const KVM_RUN: u64 = (KVMIO << 8) | 0x80;
pub(super) const KVM_GET_REGS: u64 =
    ior(KVMIO, 0x81, std::mem::size_of::<kvm_bindings::kvm_regs>());
pub(super) const KVM_GET_SREGS: u64 =
    ior(KVMIO, 0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>());

/// What a list says about one system call.
#[derive(Debug)]
enum Allow {
    Always,
    /// Allowed when any of these rules (each an AND of conditions) holds.
    When(Vec<SeccompRule>),
}

/// A list under construction: system call number -> what is allowed.
#[derive(Debug, Default)]
pub struct List(BTreeMap<c_long, Allow>);

impl List {
    pub fn for_kind(kind: ThreadKind) -> Result<List> {
        List::for_kind_at(kind, VCPU_FD_FLOOR)
    }

    /// `kind`'s list with a vCPU's eventfd writes from `floor` up.
    pub fn for_kind_at(kind: ThreadKind, floor: i32) -> Result<List> {
        List::build(kind.groups(), floor)
    }

    pub fn for_groups(groups: &[Group]) -> Result<List> {
        List::build(groups, VCPU_FD_FLOOR)
    }

    fn build(groups: &[Group], floor: i32) -> Result<List> {
        let mut list = List::default();
        for group in groups {
            group.add_to(&mut list, floor)?;
        }
        Ok(list)
    }

    fn always(&mut self, calls: &[c_long]) {
        for &call in calls {
            self.0.insert(call, Allow::Always);
        }
    }

    fn when(&mut self, call: c_long, rules: Vec<SeccompRule>) {
        match self.0.entry(call).or_insert(Allow::When(Vec::new())) {
            Allow::Always => {}
            Allow::When(existing) => existing.extend(rules),
        }
    }

    /// Every system call this list allows in some form.
    pub fn calls(&self) -> impl Iterator<Item = c_long> + '_ {
        self.0.keys().copied()
    }

    pub fn allows_always(&self, call: c_long) -> bool {
        matches!(self.0.get(&call), Some(Allow::Always))
    }

    /// seccompiler's form: an empty rule chain means "always".
    pub fn into_rules(self) -> BTreeMap<c_long, Vec<SeccompRule>> {
        self.0
            .into_iter()
            .map(|(call, allow)| match allow {
                Allow::Always => (call, Vec::new()),
                Allow::When(rules) => (call, rules),
            })
            .collect()
    }
}

fn bad(e: seccompiler::BackendError) -> Error {
    Error::Seccomp(format!("building a filter: {e}"))
}

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule> {
    let condition = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(bad)?;
    SeccompRule::new(vec![condition]).map_err(bad)
}

/// Argument `arg` is one of `values`.
fn arg_is(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>> {
    values
        .iter()
        .map(|&v| condition(arg, SeccompCmpOp::Eq, v))
        .collect()
}

/// Argument `arg` has none of `bits` set.
fn arg_lacks(arg: u8, bits: u64) -> Result<Vec<SeccompRule>> {
    Ok(vec![condition(arg, SeccompCmpOp::MaskedEq(bits), 0)?])
}

/// Argument `arg` has all of `bits` set.
fn arg_has(arg: u8, bits: u64) -> Result<Vec<SeccompRule>> {
    Ok(vec![condition(arg, SeccompCmpOp::MaskedEq(bits), bits)?])
}

/// An ioctl request (argument 1) of ioctl type `ty`, whatever its number.
fn ioctl_type(ty: u64) -> Result<Vec<SeccompRule>> {
    Ok(vec![condition(1, SeccompCmpOp::MaskedEq(0xff00), ty << 8)?])
}
