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

use std::ffi::CString;
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
/// (created only when the host has it).
const DEVICES: &[(&str, bool)] = &[("/dev/kvm", true), ("/dev/userfaultfd", false)];

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
    if spec.root.canonicalize().ok().as_deref() == Some(Path::new("/")) {
        return Err(Error::InvalidArgument(
            "--jail /: the jail root must be a directory of its own".into(),
        ));
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
    // pivot_root needs the new root to be a mount point.
    mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC)?;
    make_devices(spec, root)?;
    let proc_dir = root.join("proc");
    std::fs::create_dir_all(&proc_dir).map_err(|e| jail_io("mkdir proc", e))?;
    // A fresh /proc shows only this PID namespace; vmfork reads its own
    // /proc/self (pagemap for diff snapshots, status for memory figures).
    mount(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
    )?;
    pivot(root)?;
    drop_privileges(spec)
}

fn jail_io(what: &str, e: std::io::Error) -> Error {
    Error::Isolation(format!("jail: {what}: {e}"))
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

/// Creates the device nodes inside the jail with the host's numbers,
/// owned by the jailed user and accessible to it alone.
fn make_devices(spec: &JailSpec, root: &Path) -> Result<()> {
    let dev = root.join("dev");
    std::fs::create_dir_all(&dev).map_err(|e| jail_io("mkdir dev", e))?;
    for &(host_path, required) in DEVICES {
        let meta = match std::fs::metadata(host_path) {
            Ok(m) => m,
            Err(e) if required => {
                return Err(Error::KvmUnavailable(e));
            }
            Err(_) => continue,
        };
        let inside = root.join(host_path.trim_start_matches('/'));
        // A node left by an earlier run may have other numbers or owner.
        let _ = std::fs::remove_file(&inside);
        let path = cstr(&inside)?;
        // SAFETY: mknod/chown on a NUL-terminated path we own.
        unsafe {
            if libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, meta.rdev()) != 0 {
                return Err(os_err(&format!("mknod {}", inside.display())));
            }
            if libc::chown(path.as_ptr(), spec.uid, spec.gid) != 0 {
                return Err(os_err(&format!("chown {}", inside.display())));
            }
        }
    }
    Ok(())
}

fn pivot(root: &Path) -> Result<()> {
    let old = root.join(".old-root");
    std::fs::create_dir_all(&old).map_err(|e| jail_io("mkdir .old-root", e))?;
    let (root_c, old_c) = (cstr(root)?, cstr(&old)?);
    // SAFETY: pivot_root with two NUL-terminated paths; root is a mount
    // point (bind-mounted above) and old is below it.
    if unsafe { libc::syscall(libc::SYS_pivot_root, root_c.as_ptr(), old_c.as_ptr()) } != 0 {
        return Err(os_err("pivot_root"));
    }
    let slash = c"/";
    let old_inside = c"/.old-root";
    // SAFETY: chdir/umount2/rmdir on constant NUL-terminated paths.
    unsafe {
        if libc::chdir(slash.as_ptr()) != 0 {
            return Err(os_err("chdir /"));
        }
        // Detach the host's tree: after this nothing outside the jail is
        // reachable by path.
        if libc::umount2(old_inside.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(os_err("umount the old root"));
        }
        libc::rmdir(old_inside.as_ptr());
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
