//! Filter construction, checked without killing the test process: lists are
//! compiled with an errno action instead of the trap and applied to a
//! throwaway thread (a filter without TSYNC binds only that thread).

use std::collections::BTreeSet;

use super::*;

fn calls(kind: ThreadKind) -> BTreeSet<libc::c_long> {
    List::for_kind(kind)
        .map(|l| l.calls().collect())
        .unwrap_or_default()
}

#[test]
fn every_list_compiles_within_the_kernels_limits() {
    // BPF_MAXINSNS per program; MAX_INSNS_PER_PATH (32768) over the chain
    // of a thread, each filter counting 4 more. The longest chain is a
    // vCPU started by `serve`: main, invoker, vCPU.
    let mut lens = Vec::new();
    for kind in ThreadKind::ALL {
        let program = compile(kind, SeccompAction::Trap);
        assert!(program.is_ok(), "{}: {:?}", kind.name(), program.err());
        let len = program.map_or(0, |p| p.len());
        assert!(len > 0 && len < 4096, "{}: {len} instructions", kind.name());
        lens.push((kind, len));
    }
    let len = |k: ThreadKind| lens.iter().find(|(x, _)| *x == k).map_or(0, |(_, n)| *n);
    let chain = len(ThreadKind::Launcher)
        + len(ThreadKind::Vmm)
        + len(ThreadKind::Invoker)
        + len(ThreadKind::Vcpu)
        + 5 * 4;
    assert!(chain < 32768, "{chain}");
}

#[test]
fn embedded_programs_are_what_the_lists_compile_to() {
    // build.rs compiled them from the same lists; a list, ioctl number or
    // seccompiler change that reached one and not the other fails here.
    for kind in ThreadKind::ALL {
        let compiled = compile(kind, SeccompAction::Trap);
        assert!(compiled.is_ok(), "{}: {:?}", kind.name(), compiled.err());
        let compiled = compiled.unwrap_or_default();
        let embedded = programs::program(kind, lists::VCPU_FD_FLOOR);
        assert!(
            embedded == compiled.as_slice(),
            "{}: the embedded program ({} instructions) differs from the compiled one ({})",
            kind.name(),
            embedded.len(),
            compiled.len()
        );
    }
}

#[test]
fn embedded_vcpu_programs_for_lower_floors_are_what_the_list_compiles_to() {
    for &floor in &lists::VCPU_FD_FLOORS[1..] {
        let compiled = compile_at(ThreadKind::Vcpu, floor, SeccompAction::Trap);
        assert!(compiled.is_ok(), "{floor}: {:?}", compiled.err());
        let compiled = compiled.unwrap_or_default();
        let embedded = programs::program(ThreadKind::Vcpu, floor);
        assert!(embedded == compiled.as_slice(), "vcpu at {floor}");
        // And it differs from the default floor's: the floor is in it.
        assert!(embedded != programs::program(ThreadKind::Vcpu, lists::VCPU_FD_FLOOR));
    }
}

#[test]
fn every_list_lies_within_the_main_threads() {
    // Threads inherit the main thread's filter, so a call only their own
    // list has would be refused anyway: a list that claims it is wrong.
    let vmm = calls(ThreadKind::Vmm);
    let launcher = calls(ThreadKind::Launcher);
    assert!(vmm.is_subset(&launcher));
    for kind in ThreadKind::ALL {
        if kind == ThreadKind::Launcher {
            continue;
        }
        let extra: Vec<_> = calls(kind).difference(&vmm).copied().collect();
        assert!(extra.is_empty(), "{}: {extra:?}", kind.name());
    }
}

#[test]
fn only_the_launcher_starts_programs() {
    for kind in ThreadKind::ALL {
        let execs = calls(kind).contains(&libc::SYS_execve);
        assert_eq!(execs, kind == ThreadKind::Launcher, "{}", kind.name());
    }
}

#[test]
fn vcpu_threads_cannot_open_connect_spawn_or_map_code() {
    let vcpu = List::for_kind(ThreadKind::Vcpu);
    assert!(vcpu.is_ok());
    let Ok(vcpu) = vcpu else { return };
    for forbidden in [
        libc::SYS_socket,
        libc::SYS_connect,
        libc::SYS_open,
        libc::SYS_openat,
        libc::SYS_read,
        libc::SYS_execve,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_fork,
        libc::SYS_vfork,
        libc::SYS_ptrace,
        libc::SYS_process_vm_writev,
        libc::SYS_memfd_create,
        libc::SYS_userfaultfd,
        libc::SYS_mount,
        libc::SYS_seccomp,
        libc::SYS_prctl,
    ] {
        let name = names::name(forbidden).unwrap_or("?");
        assert!(!vcpu.calls().any(|c| c == forbidden), "vcpu allows {name}");
    }
    for limited in [libc::SYS_ioctl, libc::SYS_mmap, libc::SYS_mprotect] {
        assert!(vcpu.calls().any(|c| c == limited));
        assert!(!vcpu.allows_always(limited));
    }
}

#[test]
fn ioctl_numbers_match_the_kernel_headers() {
    // linux/kvm.h on x86_64, as strace prints them.
    assert_eq!(lists::KVM_RUN, 0xae80);
    assert_eq!(lists::KVM_GET_REGS, 0x8090_ae81);
    assert_eq!(lists::KVM_GET_SREGS, 0x8138_ae83);
    assert_eq!(crate::ioctls::UFFDIO_COPY, 0xc028_aa03);
}

/// Applies `kind`'s list (errno instead of the trap) to a new thread and
/// runs `probe` there.
fn under_filter<T: Send + 'static>(kind: ThreadKind, probe: fn() -> T) -> Option<T> {
    let program = compile(kind, SeccompAction::Errno(libc::EPERM as u32)).ok()?;
    std::thread::spawn(move || {
        seccompiler::apply_filter(&program).ok()?;
        Some(probe())
    })
    .join()
    .ok()
    .flatten()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

#[test]
fn a_vcpu_filter_refuses_what_its_list_lacks_and_allows_the_rest() {
    let results = under_filter(ThreadKind::Vcpu, || {
        // SAFETY: system calls on invalid or fresh descriptors and a fresh
        // anonymous mapping, unmapped again; nothing else is touched.
        unsafe {
            let socket = (libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0), errno());
            let open = (libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY), errno());
            let fionbio = (libc::ioctl(-1, libc::FIONBIO, &mut 0), errno());
            // Allowed: reaches the kernel, which says the fd is bad.
            let kvm_run = (libc::ioctl(-1, lists::KVM_RUN as libc::c_ulong), errno());
            let prot = libc::PROT_READ | libc::PROT_EXEC;
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            let code = libc::mmap(std::ptr::null_mut(), 4096, prot, flags, -1, 0);
            let code = (code == libc::MAP_FAILED, errno());
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            let data = libc::mmap(std::ptr::null_mut(), 4096, prot, flags, -1, 0);
            let data_ok = data != libc::MAP_FAILED;
            if data_ok {
                libc::munmap(data, 4096);
            }
            let write = libc::write(1, std::ptr::null(), 0);
            (socket, open, fionbio, kvm_run, code, data_ok, write)
        }
    });
    let Some((socket, open, fionbio, kvm_run, code, data_ok, write)) = results else {
        panic!("could not apply the vcpu filter to a test thread");
    };
    assert_eq!(socket, (-1, libc::EPERM));
    // Opens are answered EACCES ahead of the list (refuse.rs).
    assert_eq!(open, (-1, libc::EACCES));
    assert_eq!(fionbio, (-1, libc::EPERM));
    assert_eq!(kvm_run, (-1, libc::EBADF));
    assert_eq!(code, (true, libc::EPERM));
    assert!(data_ok);
    assert_eq!(write, 0);
}

#[test]
fn a_vcpu_writes_only_to_the_console_and_its_interrupt_lines() {
    let results = under_filter(ThreadKind::Vcpu, || {
        let floor = lists::VCPU_FD_FLOOR;
        let word = [0u8; 8];
        // SAFETY: zero- or 8-byte writes from a local buffer to
        // descriptors this test does not use (EBADF once allowed).
        unsafe {
            let w = |fd: i32, n: usize| (libc::write(fd, word.as_ptr().cast(), n), errno());
            [
                w(1, 0),
                w(2, 0),
                w(floor + 7, 8),
                // A socket or file below the floor: refused.
                w(0, 0),
                w(3, 8),
                w(floor - 1, 8),
                // Above the floor, anything but an eventfd's 8 bytes.
                w(floor + 7, 7),
                w(floor + 7, 9),
            ]
        }
    });
    let Some(r) = results else {
        panic!("could not apply the vcpu filter to a test thread");
    };
    assert_eq!(r[0].0, 0);
    assert_eq!(r[1].0, 0);
    assert_eq!(r[2], (-1, libc::EBADF));
    for refused in &r[3..] {
        assert_eq!(*refused, (-1, libc::EPERM), "{r:?}");
    }
}

#[test]
fn http_threads_run_no_kvm_ioctl_start_no_thread_and_open_nothing() {
    let results = under_filter(ThreadKind::Http, || {
        // SAFETY: calls on an invalid descriptor, a null clone_args and a
        // flags word clone(2) refuses; an opened file is closed at once.
        unsafe {
            let kvm = (libc::ioctl(-1, 0xAE00 as libc::c_ulong), errno());
            let clone3 = (libc::syscall(libc::SYS_clone3, 0usize, 0usize), errno());
            let flags = libc::CLONE_THREAD as libc::c_ulong;
            let clone = (libc::syscall(libc::SYS_clone, flags, 0usize), errno());
            let fd = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
            let open = (fd, errno());
            if fd >= 0 {
                libc::close(fd);
            }
            // Allowed: a write, tokio's FIONBIO.
            let write = (libc::write(-1, std::ptr::null(), 0), errno());
            [
                kvm,
                (clone3.0 as i32, clone3.1),
                (clone.0 as i32, clone.1),
                open,
                (write.0 as i32, write.1),
            ]
        }
    });
    let Some(r) = results else {
        panic!("could not apply the http filter to a test thread");
    };
    for refused in &r[..3] {
        assert_eq!(*refused, (-1, libc::EPERM), "{r:?}");
    }
    assert_eq!(r[3], (-1, libc::EACCES), "{r:?}");
    assert_eq!(r[4], (-1, libc::EBADF));
    let http = calls(ThreadKind::Http);
    for forbidden in [
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_openat,
        libc::SYS_open,
    ] {
        assert!(!http.contains(&forbidden), "http allows {forbidden}");
    }
}

#[test]
fn only_socket_owning_threads_may_create_sockets() {
    for kind in ThreadKind::ALL {
        let errno = under_filter(kind, || {
            // SAFETY: socket(2) with constant arguments, closed at once.
            unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let e = errno();
                if fd >= 0 {
                    libc::close(fd);
                    0
                } else {
                    e
                }
            }
        });
        let may = matches!(
            kind,
            ThreadKind::Vmm | ThreadKind::Launcher | ThreadKind::Holder
        );
        let expected = if may { 0 } else { libc::EPERM };
        assert_eq!(errno, Some(expected), "{}", kind.name());
    }
}

/// docs/seccomp.md has a row per group listing its calls, and a row per
/// thread type listing its groups; a list changed without its docs fails.
#[test]
fn docs_describe_every_group_and_thread_type() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/seccomp.md");
    let docs = std::fs::read_to_string(path).unwrap_or_default();
    let row = |name: &str| -> BTreeSet<String> {
        let start = format!("| `{name}` |");
        docs.lines()
            .find(|l| l.starts_with(&start))
            .map(|l| {
                l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                    .filter(|w| !w.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    let all_groups = [
        Group::Base,
        Group::Write,
        Group::ConsoleWrite,
        Group::ProcStatus,
        Group::Threads,
        Group::Files,
        Group::FileWrite,
        Group::Memfd,
        Group::Kvm,
        Group::Uffd,
        Group::NetOpen,
        Group::NetConn,
        Group::Report,
        Group::Spawn,
        Group::VcpuRun,
        Group::UffdServe,
        Group::ApiConn,
        Group::UnixServer,
        Group::SignalWait,
        Group::Teardown,
    ];
    for group in all_groups {
        let words = row(group.name());
        let list = List::for_groups(&[group]);
        assert!(list.is_ok());
        for call in list.iter().flat_map(List::calls) {
            let name = names::name(call).unwrap_or("?");
            assert!(
                words.contains(name),
                "docs/seccomp.md: the `{}` row lacks {name}",
                group.name()
            );
        }
    }
    for kind in ThreadKind::ALL {
        let words = row(kind.name());
        for group in kind.groups() {
            assert!(
                words.contains(group.name()),
                "docs/seccomp.md: the `{}` row lacks group {}",
                kind.name(),
                group.name()
            );
        }
    }
    assert!(names::number("socket") == Some(libc::SYS_socket));
}

/// The numbers in docs/seccomp.md, "Cost": what installing each list costs
/// a new thread (on top of the main thread's, as in vmfork), and what the
/// filters add to an ioctl (vCPU exits are ioctls). Run with
/// `cargo test --release -p vmfork-isolation --lib cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn cost() {
    use std::time::{Duration, Instant};
    let compiled = |kind| compile(kind, SeccompAction::Trap).unwrap_or_default();
    let start = Instant::now();
    for kind in ThreadKind::ALL {
        compiled(kind);
    }
    println!("compiling every list: {:?}", start.elapsed());
    let vmm = compiled(ThreadKind::Vmm);
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    // What a thread paid before build.rs compiled the lists: one compile
    // of its list, the first time a thread of its type started.
    for kind in [ThreadKind::Vmm, ThreadKind::Vcpu] {
        let times: Vec<_> = (0..200)
            .map(|_| {
                let start = Instant::now();
                compiled(kind);
                start.elapsed()
            })
            .collect();
        println!("compiling {}: {:?}", kind.name(), median(times));
    }
    // Whether a thread installs only `first` or `first` then `then`, the
    // time of its last install.
    let install = |first: &BpfProgram, then: Option<&BpfProgram>| {
        let (first, then) = (first.clone(), then.cloned());
        std::thread::spawn(move || {
            let start = Instant::now();
            let _ = seccompiler::apply_filter(&first);
            let Some(then) = then else {
                return start.elapsed();
            };
            let start = Instant::now();
            let _ = seccompiler::apply_filter(&then);
            start.elapsed()
        })
        .join()
        .unwrap_or_default()
    };
    let main: Vec<_> = (0..200).map(|_| install(&vmm, None)).collect();
    println!(
        "vmm on the main thread ({} instructions): {:?}",
        vmm.len(),
        median(main)
    );
    for kind in ThreadKind::ALL {
        let program = compiled(kind);
        let times: Vec<_> = (0..200).map(|_| install(&vmm, Some(&program))).collect();
        println!(
            "{} on a thread under vmm ({} instructions): {:?}",
            kind.name(),
            program.len(),
            median(times)
        );
    }
    let ioctls = |filters: Vec<BpfProgram>| {
        std::thread::spawn(move || {
            for f in &filters {
                let _ = seccompiler::apply_filter(f);
            }
            let n = 2_000_000u32;
            let start = Instant::now();
            for _ in 0..n {
                // SAFETY: KVM_RUN on an invalid fd: the kernel answers EBADF.
                unsafe { libc::ioctl(-1, lists::KVM_RUN as libc::c_ulong) };
            }
            start.elapsed() / n
        })
        .join()
        .unwrap_or_default()
    };
    for _ in 0..3 {
        println!(
            "ioctl(KVM_RUN): {:?} unfiltered, {:?} under vmm + vcpu",
            ioctls(Vec::new()),
            ioctls(vec![vmm.clone(), compiled(ThreadKind::Vcpu)])
        );
    }
}
