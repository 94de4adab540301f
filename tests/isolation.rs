//! The jail (namespaces, private root, unprivileged user, no capabilities)
//! and cgroup limits, on real VMs. These need root, as `--jail` does; CI
//! runs as root on the development host.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmfork_tests::server::{function_template, Server};
use vmfork_tests::{assert_clean_error, build_template, exit, vmfork, vmfork_bin, Scratch};

const NOBODY: &str = "65534";
/// A --jail directory root will not build in (docs/security.md).
const UNSAFE_JAIL: i32 = 24;

fn chown_nobody(path: &std::path::Path) {
    let chown = Command::new("chown")
        .args(["-R", "65534:65534", &path.display().to_string()])
        .status()
        .expect("chown");
    assert!(chown.success());
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn status_field(pid: u32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn ns(pid: &str, kind: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Where the open fds of `pid` point (empty once it is gone).
fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| std::fs::read_link(e.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Kills the jailed VMM's outer process (and so the VMM) if a test fails.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill to a process this test started; harmless if gone.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

#[test]
fn jailed_vmm_runs_unprivileged_in_its_own_namespaces_and_root() {
    assert!(is_root(), "the jail tests need root");
    let scratch = Scratch::new("jail");
    let root = scratch.str("root");
    std::fs::create_dir_all(&root).expect("jail dir");
    let mut parent = Command::new(vmfork_bin())
        .args(["boot", "--jail", &root, "--uid", NOBODY, "--gid", NOBODY])
        .args(["--cmdline", "timer_hz=0 touch_mib=1 work=0", "--quiet"])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn");
    let ppid = parent.id();
    let _reap = KillOnDrop(ppid);
    // The VMM is the parent's only child (PID 1 of the new namespace).
    let deadline = Instant::now() + Duration::from_secs(20);
    let child = loop {
        if let Some(&c) = children(ppid).first() {
            if status_field(c, "Uid:").starts_with(NOBODY) {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "no jailed child appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Look at it once it runs a guest: a VM and a vCPU open through the
    // jail's /dev/kvm, which it opens only after the jail is set up.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(fd_targets(child).iter().any(|f| f.contains("kvm-vm"))
        && fd_targets(child).iter().any(|f| f.contains("kvm-vcpu")))
    {
        assert!(
            Instant::now() < deadline,
            "the jailed VMM never opened a VM and a vCPU: {:?}",
            fd_targets(child)
        );
        assert!(
            parent.try_wait().expect("try_wait").is_none(),
            "the jailed VMM ended early"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let c = child.to_string();
    assert_eq!(status_field(child, "Uid:"), "65534\t65534\t65534\t65534");
    assert_eq!(status_field(child, "Gid:"), "65534\t65534\t65534\t65534");
    for caps in ["CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"] {
        assert_eq!(status_field(child, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(status_field(child, "NoNewPrivs:"), "1");
    // PID 1 in its own PID namespace.
    assert!(
        status_field(child, "NSpid:").ends_with("\t1"),
        "{}",
        status_field(child, "NSpid:")
    );
    for kind in ["mnt", "pid_for_children", "net"] {
        assert_ne!(ns(&c, kind), ns("self", kind), "{kind} namespace shared");
    }
    // Its root is the jail: the device nodes and /proc vmfork made, and
    // nothing of the host's tree.
    let jail_root = format!("/proc/{child}/root");
    assert!(std::path::Path::new(&jail_root).join("dev/kvm").exists());
    for host_only in ["etc", "usr", "tmp"] {
        assert!(
            !std::path::Path::new(&jail_root).join(host_only).exists(),
            "{host_only} is visible in the jail"
        );
    }
    // It is still running its guest.
    let fds = fd_targets(child);
    assert!(fds.iter().any(|f| f.contains("kvm-vm")), "{fds:?}");
    // SIGTERM to the outer process reaches the VMM, which stops cleanly.
    // SAFETY: kill to our own child.
    unsafe { libc::kill(ppid as i32, libc::SIGTERM) };
    let status = parent.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn jailed_restore_and_uffd_clones_use_paths_inside_the_jail() {
    assert!(is_root(), "the jail tests need root");
    let scratch = Scratch::new("jail-restore");
    let root = scratch.path("root");
    std::fs::create_dir_all(&root).expect("jail dir");
    build_template(
        &root.join("tpl").display().to_string(),
        "32M",
        "quiet=1 timer_hz=0 touch_mib=1",
    );
    // Templates are read by the unprivileged VMM; the jail itself stays
    // root's.
    chown_nobody(&root.join("tpl"));
    let root = root.display().to_string();
    let jail = ["--jail", &root, "--uid", NOBODY, "--gid", NOBODY];
    let mut args = vec!["restore", "/tpl", "--exit-on-ready", "--quiet"];
    args.extend(jail);
    let run = vmfork(&args);
    assert_eq!(run.status, 0, "{run}");
    let mut args = vec!["clone", "/tpl", "-n", "3", "--backend", "uffd", "--json"];
    args.extend(jail);
    let run = vmfork(&args);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(run.json()["clones"], 3, "{run}");
    // The host path is not visible inside.
    let mut args = vec!["restore", "/no/such/template", "--exit-on-ready"];
    args.extend(jail);
    assert_clean_error(&vmfork(&args), exit::TEMPLATE, "/no/such/template");
}

#[test]
fn bad_jail_requests_are_refused_before_anything_runs() {
    let scratch = Scratch::new("jail-bad");
    let file = scratch.path("file");
    std::fs::write(&file, b"x").expect("file");
    let file = file.display().to_string();
    let dir = scratch.str("");
    for (args, needle) in [
        (
            vec!["--jail", &file, "--uid", NOBODY, "--gid", NOBODY],
            "not a directory",
        ),
        (vec!["--jail", "/", "--uid", NOBODY, "--gid", NOBODY], "own"),
        (
            vec!["--jail", &dir, "--uid", "0", "--gid", NOBODY],
            "must not be 0",
        ),
    ] {
        let mut all = vec!["boot", "--exit-on-ready"];
        all.extend(args);
        assert_clean_error(&vmfork(&all), exit::INVALID_ARGUMENT, needle);
    }
    let run = vmfork(&["boot", "--jail", &dir, "--exit-on-ready"]);
    assert_clean_error(&run, exit::USAGE, "--uid");
    // Without root the jail cannot be built; say so rather than half-build it.
    let run =
        vmfork_tests::vmfork_as_nobody(&["boot", "--jail", &dir, "--uid", NOBODY, "--gid", NOBODY]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "needs root");
}

#[test]
fn cgroup_limits_apply_to_the_clone_group() {
    assert!(is_root(), "the cgroup tests need root");
    let scratch = Scratch::new("cgroup");
    let tpl = build_template(&scratch.str("tpl"), "32M", "quiet=1 timer_hz=0 touch_mib=1");
    let name = format!("vmfork-test-{}/group", std::process::id());
    let run = vmfork(&[
        "clone",
        &tpl,
        "-n",
        "4",
        "--json",
        "--cgroup",
        &name,
        "--memory-max",
        "1G",
        "--cpu-max",
        "150%",
        "--pids-max",
        "512",
    ]);
    assert_eq!(run.status, 0, "{run}");
    let cgroup = &run.json()["cgroup"];
    let version = cgroup["version"].as_str().unwrap_or_default().to_string();
    assert!(cgroup["setup_us"].as_u64().is_some(), "{run}");
    // The limits are where the kernel enforces them.
    let dirs: Vec<std::path::PathBuf> = cgroup["dirs"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|p| p.as_str())
                .map(Into::into)
                .collect()
        })
        .unwrap_or_default();
    assert!(!dirs.is_empty(), "{run}");
    let expect: &[(&str, &str)] = if version == "v2" {
        &[
            ("memory.max", "1073741824"),
            ("cpu.max", "150000 100000"),
            ("pids.max", "512"),
        ]
    } else {
        &[
            ("memory.limit_in_bytes", "1073741824"),
            ("cpu.cfs_quota_us", "150000"),
            ("pids.max", "512"),
        ]
    };
    for (file, value) in expect {
        let found = dirs
            .iter()
            .map(|d| d.join(file))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{file} in none of {dirs:?}"));
        let got = std::fs::read_to_string(&found).unwrap_or_default();
        assert_eq!(got.trim(), *value, "{}", found.display());
    }
    // A pids limit too small for the vCPU threads fails with a clear error.
    let tight = format!("vmfork-test-{}/tight", std::process::id());
    let run = vmfork(&[
        "clone",
        &tpl,
        "-n",
        "8",
        "--cgroup",
        &tight,
        "--pids-max",
        "4",
    ]);
    assert_ne!(run.status, 0, "{run}");
    assert!(!run.stderr.contains("panicked"), "{run}");
    assert_eq!(run.stderr.lines().count(), 1, "{run}");
    // Leave no cgroups behind (they are empty now): leaves, then parents.
    for dir in &dirs {
        let group_parent = dir.parent().map(std::path::Path::to_path_buf);
        let _ = std::fs::remove_dir(dir);
        if let Some(parent) = group_parent {
            let _ = std::fs::remove_dir(parent.join("tight"));
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[test]
fn bad_cgroup_requests_are_refused() {
    for (args, needle) in [
        (vec!["--cgroup", "../escape"], "relative path"),
        (vec!["--cgroup", "/abs"], "relative path"),
        (vec!["--cgroup", "ok", "--cpu-max", "fast"], "percentage"),
        (
            vec!["--cgroup", "ok", "--memory-max", "lots"],
            "--memory-max",
        ),
    ] {
        let mut all = vec!["boot", "--exit-on-ready"];
        all.extend(args);
        assert_clean_error(&vmfork(&all), exit::INVALID_ARGUMENT, needle);
    }
    let run = vmfork(&["boot", "--exit-on-ready", "--pids-max", "5"]);
    assert_clean_error(&run, exit::USAGE, "--cgroup");
}

/// The jail directory and where it lives must be root's alone, or root
/// would be building device nodes where someone else can swap paths.
#[test]
fn jail_directories_others_can_change_are_refused() {
    assert!(is_root(), "the jail tests need root");
    let scratch = Scratch::new("jail-unsafe");
    let jail = [
        "--uid",
        NOBODY,
        "--gid",
        NOBODY,
        "--exit-on-ready",
        "--quiet",
    ];
    let owned = scratch.path("owned");
    std::fs::create_dir_all(&owned).expect("dir");
    chown_nobody(&owned);
    let writable = scratch.path("writable");
    std::fs::create_dir_all(&writable).expect("dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&writable, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    // Below a directory someone else owns: they could rename it away.
    let below = scratch.path("owned/below");
    std::fs::create_dir_all(&below).expect("dir");
    for (dir, needle) in [
        (&owned, "belongs to uid 65534, not root"),
        (&writable, "writable by group or others"),
        (&below, "belongs to uid 65534"),
    ] {
        let dir = dir.display().to_string();
        let mut args = vec!["boot", "--jail", &dir];
        args.extend(jail);
        assert_clean_error(&vmfork(&args), UNSAFE_JAIL, needle);
    }
}

/// A symlink planted in the jail (here /dev, pointing at a directory of
/// the host's) is refused, and nothing is made or removed through it.
#[test]
fn jail_setup_follows_no_symlink() {
    assert!(is_root(), "the jail tests need root");
    let scratch = Scratch::new("jail-symlink");
    let root = scratch.path("root");
    std::fs::create_dir_all(&root).expect("dir");
    let elsewhere = scratch.path("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    std::fs::write(elsewhere.join("kvm"), b"host file").expect("file");
    std::os::unix::fs::symlink(&elsewhere, root.join("dev")).expect("symlink");
    let dir = root.display().to_string();
    let args = [
        "boot",
        "--jail",
        &dir,
        "--uid",
        NOBODY,
        "--gid",
        NOBODY,
        "--exit-on-ready",
    ];
    assert_clean_error(&vmfork(&args), UNSAFE_JAIL, "/dev in the jail is a symlink");
    let kept = std::fs::read(elsewhere.join("kvm")).unwrap_or_default();
    assert_eq!(kept, b"host file", "the symlink's target was touched");
    // The same for /proc, with /dev a real directory.
    std::fs::remove_file(root.join("dev")).expect("rm");
    std::os::unix::fs::symlink(&elsewhere, root.join("proc")).expect("symlink");
    assert_clean_error(
        &vmfork(&args),
        UNSAFE_JAIL,
        "/proc in the jail is a symlink",
    );
    assert!(
        !elsewhere.join("self").exists(),
        "proc was mounted through the symlink"
    );
}

/// `serve --jail`: the listener is bound on the host before the jail,
/// the templates are paths inside it, the server answers as the jailed
/// user in its own namespaces, with only the device nodes it needs.
#[test]
fn serve_runs_jailed_on_a_listener_bound_before_the_jail() {
    assert!(is_root(), "the jail tests need root");
    let scratch = Scratch::new("serve-jail");
    let root = scratch.path("root");
    std::fs::create_dir_all(&root).expect("jail dir");
    let tpl = function_template(&scratch, "root/echo", "echo");
    chown_nobody(std::path::Path::new(&tpl));
    std::fs::create_dir_all(root.join("state")).expect("state dir");
    chown_nobody(&root.join("state"));
    let dir = root.display().to_string();
    let server = Server::start(
        &[("echo", "/echo".to_string())],
        &[
            "--jail",
            &dir,
            "--uid",
            NOBODY,
            "--gid",
            NOBODY,
            "--state-dir",
            "/state",
        ],
    );
    let _kill = KillOnDrop(server.pid());
    let (code, _, body) = server.invoke("echo", b"from the jail");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"from the jail");
    let outer = server.pid();
    let child = children(outer);
    assert_eq!(child.len(), 1, "one jailed server: {child:?}");
    let child = child[0];
    assert!(status_field(child, "Uid:").starts_with("65534"), "{child}");
    assert_eq!(status_field(child, "CapEff:"), "0000000000000000");
    for kind in ["mnt", "net", "pid"] {
        assert_ne!(
            ns(&outer.to_string(), kind),
            ns(&child.to_string(), kind),
            "{kind}"
        );
    }
    let mut devs: Vec<String> = std::fs::read_dir(format!("/proc/{child}/root/dev"))
        .expect("the jail's /dev")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    devs.sort();
    devs.retain(|d| d != "userfaultfd");
    assert_eq!(devs, vec!["kvm".to_string()]);
    server.stop();
}

/// `serve --cgroup`: the server joins the group before any VM exists,
/// with its limits, and its VMs' memory is charged there. cgroup v2, or
/// v1 where the controllers are still bound to it (as on this host).
#[test]
fn serve_runs_in_its_cgroup() {
    assert!(is_root(), "the cgroup tests need root");
    let scratch = Scratch::new("serve-cgroup");
    let tpl = function_template(&scratch, "echo", "echo");
    let name = format!("vmfork-test-{}/serve", std::process::id());
    let server = Server::start(
        &[("echo", tpl)],
        &["--cgroup", &name, "--memory-max", "512M", "--warm", "1"],
    );
    let (code, _, body) = server.invoke("echo", b"in the group");
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    // Where the kernel says the server is: the memory controller's line
    // (v1) or the unified one (v2).
    let groups =
        std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid())).unwrap_or_default();
    let line = |controllers: &str| {
        groups.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, c, path) = (parts.next()?, parts.next()?, parts.next()?);
            (c == controllers).then(|| path.trim_start_matches('/').to_string())
        })
    };
    let (dir, file) = match line("memory") {
        Some(path) => (
            format!("/sys/fs/cgroup/memory/{path}"),
            "memory.limit_in_bytes",
        ),
        None => (
            format!("/sys/fs/cgroup/{}", line("").unwrap_or_default()),
            "memory.max",
        ),
    };
    assert!(dir.ends_with(&name), "{groups}");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap_or_default();
    assert_eq!(read(file).trim(), "536870912", "{dir}/{file}");
    let procs = read("cgroup.procs");
    assert!(
        procs.lines().any(|p| p.trim() == server.pid().to_string()),
        "{dir}: {procs:?}"
    );
    let usage = read("memory.usage_in_bytes") + &read("memory.current");
    assert!(usage.trim().parse::<u64>().unwrap_or(0) > 0, "{usage:?}");
    server.stop();
    let dir = std::path::PathBuf::from(dir);
    let _ = std::fs::remove_dir(&dir);
    if let Some(parent) = dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}
