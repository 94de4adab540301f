//! `--jail DIR --uid U --gid G`: run the VMM in its own mount, PID and
//! network namespaces, with DIR as its root, as U:G with no capabilities.
//! docs/security.md explains what this does and does not protect.
//!
//! Order matters: the PID namespace applies to children only, so the
//! process forks after unsharing it and the child (PID 1 inside) runs the
//! VMM while the parent relays signals and the exit status. The child
//! builds its root (device nodes, /proc) while still root, pivots into
//! it, and drops privileges last, so nothing it does afterwards can undo
//! the jail.
//!
//! What runs as root touches only a tree nobody else can change: the jail
//! directory and every directory above it must be root's and writable by
//! no one else (a sticky one such as /tmp may be, above it), which
//! `validate` checks (exit status 24 otherwise). Inside, every step works
//! relative to a descriptor opened with O_NOFOLLOW (`dev`, `proc`, the
//! device names), so no symlink left in the jail is ever followed, and
//! the pivot needs no directory of its own (pivot_root(".", ".")).

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub struct JailSpec {
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// Device nodes a VMM needs: KVM always, userfaultfd for the uffd backend
/// (created only when the host has it): host path, name in the jail's /dev.
const DEVICES: &[(&str, &CStr, bool)] = &[
    ("/dev/kvm", c"kvm", true),
    ("/dev/userfaultfd", c"userfaultfd", false),
];

fn os_err(what: &str) -> Error {
    Error::Isolation(format!("jail: {what}: {}", std::io::Error::last_os_error()))
}

fn cstr(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidArgument(format!("{} contains a NUL byte", path.display())))
}

/// Checks everything that can be checked before forking.
pub fn validate(spec: &JailSpec) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::InvalidArgument(
            "--jail needs root (it creates namespaces and device nodes, then drops to --uid/--gid)"
                .into(),
        ));
    }
    if spec.uid == 0 || spec.gid == 0 {
        return Err(Error::InvalidArgument(
            "--uid and --gid must not be 0: the jail exists to drop root".into(),
        ));
    }
    let meta = std::fs::metadata(&spec.root)
        .map_err(|e| Error::InvalidArgument(format!("--jail {}: {e}", spec.root.display())))?;
    if !meta.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--jail {}: not a directory",
            spec.root.display()
        )));
    }
    let canonical = spec
        .root
        .canonicalize()
        .map_err(|e| Error::InvalidArgument(format!("--jail {}: {e}", spec.root.display())))?;
    if canonical == Path::new("/") {
        return Err(Error::InvalidArgument(
            "--jail /: the jail root must be a directory of its own".into(),
        ));
    }
    check_owned_by_root(&canonical)
}

/// Root builds device nodes and mounts in the jail: someone else able to
/// change the directory, or one above it, could swap a part of it for a
/// symlink meanwhile. So the directory must be root's and writable by no
/// one else, and so must every directory above it, except that a sticky
/// one (such as /tmp) may be writable: nobody else can rename or remove
/// what root owns there.
fn check_owned_by_root(canonical: &Path) -> Result<()> {
    let refuse = |why: String| Error::UnsafeJail(format!("--jail {}: {why}", canonical.display()));
    for (i, dir) in canonical.ancestors().enumerate() {
        // canonicalize resolved every symlink: none is left to follow.
        let meta = std::fs::symlink_metadata(dir).map_err(|e| refuse(e.to_string()))?;
        let mode = meta.mode();
        let what = if i == 0 {
            "it".to_string()
        } else {
            dir.display().to_string()
        };
        if meta.uid() != 0 {
            return Err(refuse(format!(
                "{what} belongs to uid {}, not root (the jail and the directories above it must be root's)",
                meta.uid()
            )));
        }
        let sticky = mode & 0o1000 != 0;
        if mode & 0o022 != 0 && (i == 0 || !sticky) {
            return Err(refuse(format!(
                "{what} is writable by group or others (mode {:o}; chmod go-w)",
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

/// Enters the jail. Callers read what they need of /sys and /proc/cpuinfo
/// (the host's virtualization kind) first: it is out of sight inside. Returns in the jailed child; the parent never returns
/// (it exits with the child's status).
pub fn enter(spec: &JailSpec) -> Result<()> {
    validate(spec)?;
    let root = spec
        .root
        .canonicalize()
        .map_err(|e| Error::InvalidArgument(format!("--jail {}: {e}", spec.root.display())))?;
    // SAFETY: unshare only changes this process's namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(os_err("unshare(CLONE_NEWPID)"));
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: vmfork enters the jail before it starts any thread (the
    // dispatcher calls this first), so the child is a complete copy.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(os_err("fork"));
    }
    if pid > 0 {
        relay(pid);
    }
    // The VMM must not outlive the process its owner waits on and signals.
    // SAFETY: prctl on this process; SIGKILL is a valid signal.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if let Err(e) = build_and_drop(spec, &root) {
        eprintln!("vmfork: error: {e}");
        // SAFETY: _exit ends the child without running the parent's
        // atexit handlers or flushing its copied buffers twice.
        unsafe { libc::_exit(e.exit_code()) };
    }
    Ok(())
}

/// The parent: forward SIGINT/SIGTERM (blocked since main) to the child,
/// and exit with its status once it ends.
fn relay(child: libc::pid_t) -> ! {
    // SAFETY: signal-set functions write only the local set; the mask
    // change affects this thread only, which is the whole parent.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child, writing a local.
        let done = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if done == child {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
            std::process::exit(code);
        }
        if done < 0 {
            std::process::exit(1);
        }
        let mut sig = 0;
        // SAFETY: sigwait on a valid set of signals this thread blocks.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 && sig != libc::SIGCHLD {
            // SAFETY: kill to our own child.
            unsafe { libc::kill(child, sig) };
        }
    }
}

fn build_and_drop(spec: &JailSpec, root: &Path) -> Result<()> {
    // SAFETY: unshare changes only this (single-threaded) process.
    if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET) } != 0 {
        return Err(os_err("unshare(CLONE_NEWNS | CLONE_NEWNET)"));
    }
    // Keep our mounts from propagating back to the host's namespace.
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)?;
    // pivot_root needs the new root to be a mount point. `validate` made
    // sure nobody but root can change the path meanwhile.
    mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC)?;
    // The bind mount's top: from here on, everything is relative to it.
    let root_dir = open_dir(None, &cstr(root)?, "the jail directory")?;
    let dev = subdir(&root_dir, c"dev", 0o755)?;
    make_devices(spec, &dev)?;
    drop(dev);
    let proc_dir = subdir(&root_dir, c"proc", 0o555)?;
    // A fresh /proc shows only this PID namespace; vmfork reads its own
    // /proc/self (pagemap for diff snapshots, status for memory figures).
    // It goes on the directory just opened, named through the host's
    // /proc/self/fd: a path into the jail would be resolved again.
    let proc_target = PathBuf::from(format!("/proc/self/fd/{}", proc_dir.as_raw_fd()));
    mount(
        Some(Path::new("proc")),
        &proc_target,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    drop(proc_dir);
    pivot(&root_dir)?;
    drop_privileges(spec)
}

/// Opens the directory `name` (relative to `at`, or a path) as an O_PATH
/// descriptor, refusing a symlink in its last part.
fn open_dir(at: Option<&OwnedFd>, name: &CStr, what: &str) -> Result<OwnedFd> {
    let at = at.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: openat with a NUL-terminated name; the descriptor is ours.
    let fd = unsafe { libc::openat(at, name.as_ptr(), flags) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ELOOP) | Some(libc::ENOTDIR) => Error::UnsafeJail(format!(
                "jail: {what} is a symlink or not a directory; refusing to follow it"
            )),
            _ => Error::Isolation(format!("jail: opening {what}: {e}")),
        });
    }
    // SAFETY: openat just returned this descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The directory `name` in `root`, made if missing. One that exists must
/// be a real directory, root's and writable by no one else.
fn subdir(root: &OwnedFd, name: &CStr, mode: libc::mode_t) -> Result<OwnedFd> {
    let shown = format!("/{} in the jail", name.to_string_lossy());
    // SAFETY: mkdirat relative to a directory descriptor we hold.
    if unsafe { libc::mkdirat(root.as_raw_fd(), name.as_ptr(), mode) } != 0
        && std::io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST)
    {
        return Err(os_err(&format!("mkdir {shown}")));
    }
    let dir = open_dir(Some(root), name, &shown)?;
    // SAFETY: fstat into a zeroed local struct.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(dir.as_raw_fd(), &mut st) != 0 {
            return Err(os_err(&format!("stat {shown}")));
        }
        st
    };
    if st.st_uid != 0 || st.st_mode & 0o022 != 0 {
        return Err(Error::UnsafeJail(format!(
            "jail: {shown} must be root's and writable by no one else (uid {}, mode {:o})",
            st.st_uid,
            st.st_mode & 0o7777
        )));
    }
    Ok(dir)
}

fn mount(source: Option<&Path>, target: &Path, fstype: Option<&str>, flags: u64) -> Result<()> {
    let source = source.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|f| CString::new(f).unwrap_or_default());
    // SAFETY: all pointers are NUL-terminated strings that outlive the
    // call, or null where mount(2) allows it.
    let rc = unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(os_err(&format!("mount {}", target.display())));
    }
    Ok(())
}

/// Creates the device nodes in the jail's /dev (`dev`) with the host's
/// numbers, owned by the jailed user and accessible to it alone.
fn make_devices(spec: &JailSpec, dev: &OwnedFd) -> Result<()> {
    for &(host_path, name, required) in DEVICES {
        let meta = match std::fs::metadata(host_path) {
            Ok(m) => m,
            Err(e) if required => {
                return Err(Error::KvmUnavailable(e));
            }
            Err(_) => continue,
        };
        let shown = format!("/dev/{} in the jail", name.to_string_lossy());
        let dev = dev.as_raw_fd();
        // SAFETY: unlinkat, mknodat and fchownat relative to a directory
        // descriptor we hold, with a constant NUL-terminated name.
        // unlinkat removes a symlink itself, never its target, and
        // AT_SYMLINK_NOFOLLOW keeps fchownat off one (none can appear in
        // between: the directory is root's alone).
        unsafe {
            // A node left by an earlier run may have other numbers or
            // owner.
            if libc::unlinkat(dev, name.as_ptr(), 0) != 0
                && std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT)
            {
                return Err(os_err(&format!("removing the old {shown}")));
            }
            if libc::mknodat(dev, name.as_ptr(), libc::S_IFCHR | 0o600, meta.rdev()) != 0 {
                return Err(os_err(&format!("mknod {shown}")));
            }
            let nofollow = libc::AT_SYMLINK_NOFOLLOW;
            if libc::fchownat(dev, name.as_ptr(), spec.uid, spec.gid, nofollow) != 0 {
                return Err(os_err(&format!("chown {shown}")));
            }
        }
    }
    Ok(())
}

/// Makes `root` (the bind mount's top) the root: pivot_root(".", ".")
/// stacks the old root on the new one, and detaching it leaves nothing
/// of the host reachable by path. No directory for the old root is made.
fn pivot(root: &OwnedFd) -> Result<()> {
    let (dot, slash) = (c".", c"/");
    // SAFETY: fchdir to a directory descriptor we hold; pivot_root,
    // umount2 and chdir with constant NUL-terminated paths.
    unsafe {
        if libc::fchdir(root.as_raw_fd()) != 0 {
            return Err(os_err("chdir into the jail"));
        }
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0 {
            return Err(os_err("pivot_root"));
        }
        if libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(os_err("umount the old root"));
        }
        if libc::chdir(slash.as_ptr()) != 0 {
            return Err(os_err("chdir /"));
        }
    }
    Ok(())
}

fn drop_privileges(spec: &JailSpec) -> Result<()> {
    // SAFETY: each call changes only this process's credentials or
    // capability sets; failures are checked.
    unsafe {
        // Empty the bounding set while we still have CAP_SETPCAP, so no
        // later exec could regain anything.
        let mut cap = 0;
        while libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) >= 0 {
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                return Err(os_err("drop the capability bounding set"));
            }
            cap += 1;
        }
        if libc::setgroups(0, std::ptr::null()) != 0 {
            return Err(os_err("setgroups"));
        }
        if libc::setresgid(spec.gid, spec.gid, spec.gid) != 0 {
            return Err(os_err("setresgid"));
        }
        // Leaving uid 0 clears the permitted, effective and ambient sets.
        if libc::setresuid(spec.uid, spec.uid, spec.uid) != 0 {
            return Err(os_err("setresuid"));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(os_err("PR_SET_NO_NEW_PRIVS"));
        }
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim);
    if eff != Some("0000000000000000") {
        return Err(Error::Isolation(format!(
            "jail: capabilities remain after dropping to {}:{} (CapEff {})",
            spec.uid,
            spec.gid,
            eff.unwrap_or("unknown")
        )));
    }
    Ok(())
}
