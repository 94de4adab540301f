//! seccomp: every vmfork thread runs under its allow-list by default
//! (docs/seccomp.md). A forbidden system call from a vCPU thread ends
//! vmfork with one clear line and exit status 18, never silently; a
//! `--no-seccomp` run says that it is unfiltered.
//!
//! The violation comes from a test hook: the hidden
//! `--test-seccomp-violation` makes every vCPU thread call socket(2) right
//! after it installed its filter, as a compromised device model would.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmfork_tests::{assert_clean_error, exit, vmfork, vmfork_bin, wait_for_path, Scratch};

const WARNING: &str = "vmfork: warning: seccomp filters disabled (debugging only)";
/// What the test hook prints when its forbidden call went through unfiltered
/// (isolation/src/seccomp/mod.rs `UNFILTERED_VIOLATION`).
const UNFILTERED: &str = "vmfork: test hook: socket(2) went through on a vCPU thread (no filters)";
const VCPU_VIOLATION: &str =
    "seccomp: thread vcpu0 (vcpu list) made forbidden system call 41 (socket)";
/// The same, from a runner thread kept between VMs (`clone`, `serve`),
/// named for no one vCPU.
const RUNNER_VIOLATION: &str =
    "seccomp: thread vcpu (vcpu list) made forbidden system call 41 (socket)";

#[test]
fn a_forbidden_call_from_a_vcpu_thread_stops_vmfork() {
    let run = vmfork(&[
        "boot",
        "--exit-on-ready",
        "--quiet",
        "--test-seccomp-violation",
    ]);
    assert_clean_error(&run, exit::SECCOMP, VCPU_VIOLATION);
    assert!(run.stderr.contains("exit status 18"), "{run}");
}

/// One test per deny rule the hook can break: the thread, its list and the
/// call the report names. vCPU threads write only to the console (and
/// their interrupt eventfds); serve's HTTP threads run no KVM ioctl,
/// start no thread and open nothing.
#[test]
fn a_vcpu_thread_writes_only_to_its_console() {
    let run = vmfork(&[
        "boot",
        "--exit-on-ready",
        "--quiet",
        "--test-seccomp-violation=vcpu-write",
    ]);
    assert_clean_error(
        &run,
        exit::SECCOMP,
        "seccomp: thread vcpu0 (vcpu list) made forbidden system call 1 (write)",
    );
    // Its console output still goes through: stdout is allowed.
    let run = vmfork(&["boot", "--exit-on-ready"]);
    assert_eq!(run.status, 0, "{run}");
    assert!(run.stdout.contains("READY"), "{run}");
    let run = vmfork(&[
        "boot",
        "--exit-on-ready",
        "--quiet",
        "--no-seccomp",
        "--test-seccomp-violation=vcpu-write",
    ]);
    assert_eq!(run.status, 0, "{run}");
    assert!(
        run.stderr
            .contains("test hook: vcpu-write went through on a vcpu thread (no filters)"),
        "{run}"
    );
}

/// Under the kernel's default open-file limit (4096), which this host's
/// root may not raise, interrupt eventfds go to 1024 and up instead of
/// 8192: VMs still run, and a vCPU's write elsewhere is still refused.
#[test]
fn a_low_open_file_limit_lowers_the_eventfd_floor_not_the_rule() {
    let low = |extra: &[&str]| {
        let out = Command::new("prlimit")
            .arg("--nofile=1024:4096")
            .arg(vmfork_bin())
            .args(["boot", "--exit-on-ready", "--quiet"])
            .args(extra)
            .output()
            .expect("prlimit");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, stderr) = low(&[]);
    assert_eq!(status, Some(0), "{stderr}");
    let (status, stderr) = low(&["--test-seccomp-violation=vcpu-write"]);
    assert_eq!(status, Some(exit::SECCOMP), "{stderr}");
    assert!(
        stderr.contains("made forbidden system call 1 (write)"),
        "{stderr}"
    );
}

/// `serve`'s HTTP threads break one rule each; the server ends with the
/// report before it listens.
fn serve_breaking(rule: &str, call: &str) {
    let hook = format!("--test-seccomp-violation={rule}");
    let run = vmfork(&["serve", "--listen", "127.0.0.1:0", &hook]);
    assert_clean_error(
        &run,
        exit::SECCOMP,
        &format!("seccomp: thread tokio-rt-worker (http list) made forbidden system call {call}"),
    );
}

#[test]
fn http_threads_run_no_kvm_ioctl() {
    serve_breaking("http-kvm", "16 (ioctl)");
}

#[test]
fn http_threads_start_no_thread_with_clone3() {
    serve_breaking("http-clone3", "435 (clone3)");
}

#[test]
fn http_threads_start_no_thread_with_clone() {
    serve_breaking("http-clone", "56 (clone)");
}

#[test]
fn http_threads_open_no_file() {
    serve_breaking("http-open", "257 (openat)");
}

#[test]
fn vcpus_of_restored_vms_and_clones_are_filtered_too() {
    let scratch = Scratch::new("seccomp-restore");
    let tpl = scratch.str("tpl");
    let build = vmfork(&["template", "build", "--cmdline", "quiet=1", "--out", &tpl]);
    assert_eq!(build.status, 0, "{build}");
    let run = vmfork(&[
        "restore",
        &tpl,
        "--exit-on-ready",
        "--test-seccomp-violation",
    ]);
    assert_clean_error(&run, exit::SECCOMP, VCPU_VIOLATION);
    for backend in ["memfd", "uffd"] {
        let run = vmfork(&[
            "clone",
            &tpl,
            "-n",
            "2",
            "--backend",
            backend,
            "--test-seccomp-violation",
        ]);
        assert_clean_error(&run, exit::SECCOMP, RUNNER_VIOLATION);
    }
}

#[test]
fn no_seccomp_warns_and_lets_the_same_call_through() {
    let run = vmfork(&[
        "boot",
        "--exit-on-ready",
        "--quiet",
        "--no-seccomp",
        "--test-seccomp-violation",
    ]);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(
        run.stderr.trim_end(),
        format!("{WARNING}\n{UNFILTERED}"),
        "{run}"
    );
    // Without the hook, a filtered run prints nothing about seccomp.
    let run = vmfork(&["boot", "--exit-on-ready", "--quiet"]);
    assert_eq!(run.status, 0, "{run}");
    assert!(!run.stderr.contains("seccomp"), "{run}");
}

/// Each thread of `pid`: (name, seccomp mode, filters stacked on it) from
/// /proc (mode 2 is filter mode).
fn thread_filters(pid: u32) -> Vec<(String, u32, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read tasks");
    let mut threads = Vec::new();
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // ended meanwhile
        };
        let field = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        threads.push((
            field("Name:"),
            field("Seccomp:").parse().unwrap_or(0),
            field("Seccomp_filters:").parse().unwrap_or(0),
        ));
    }
    threads.sort();
    threads
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(args: &[&str]) -> Running {
    Running(
        Command::new(vmfork_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vmfork"),
    )
}

/// Waits until every name in `names` is among `pid`'s threads.
fn wait_for_threads(pid: u32, names: &[&str]) -> Vec<(String, u32, u32)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let threads = thread_filters(pid);
        // A thread is named before its first instruction and installs its
        // own list right after: until then it shows only the inherited one.
        // (Without filters, under --no-seccomp, there is nothing to wait for.)
        let filtered = threads.iter().any(|(t, _, f)| t == "vmfork" && *f > 0);
        let settled = !filtered
            || threads
                .iter()
                .all(|(t, _, f)| t == "vmfork" || t.starts_with("kvm-") || *f >= 2);
        if settled && names.iter().all(|n| threads.iter().any(|(t, _, _)| t == n)) {
            return threads;
        }
        assert!(
            Instant::now() < deadline,
            "threads {names:?} never all ran: {threads:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_thread_of_a_running_vm_is_filtered_by_default() {
    let scratch = Scratch::new("seccomp-threads");
    let sock = scratch.str("api.sock");
    let vm = spawn(&["boot", "--quiet", "--api-sock", &sock]);
    wait_for_path(&sock);
    let threads = wait_for_threads(vm.0.id(), &["vmfork", "vcpu0", "api", "signals"]);
    for (name, mode, filters) in &threads {
        assert_eq!(*mode, 2, "{name} is not filtered: {threads:?}");
        // The main thread has its own list; vmfork's other threads stack
        // their own on the one they inherited. (KVM's kernel threads, such
        // as kvm-nx-lpage-recovery, inherit their creator's.)
        let expected = match name.as_str() {
            "vmfork" => 1,
            kvm if kvm.starts_with("kvm-") => continue,
            _ => 2,
        };
        assert_eq!(*filters, expected, "{name}: {threads:?}");
    }
    let stop = vmfork(&["ctl", &sock, "stop"]);
    assert_eq!(stop.status, 0, "{stop}");
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered() {
    let scratch = Scratch::new("seccomp-off");
    let sock = scratch.str("api.sock");
    let vm = spawn(&["boot", "--quiet", "--no-seccomp", "--api-sock", &sock]);
    wait_for_path(&sock);
    let threads = wait_for_threads(vm.0.id(), &["vmfork", "vcpu0", "api", "signals"]);
    assert!(threads.iter().all(|(_, mode, _)| *mode == 0), "{threads:?}");
    let stop = vmfork(&["ctl", &sock, "stop"]);
    assert_eq!(stop.status, 0, "{stop}");
}

#[test]
fn every_thread_of_serve_is_filtered_by_default() {
    let scratch = Scratch::new("seccomp-serve");
    let tpl = scratch.str("echo");
    let build = vmfork(&[
        "template",
        "build",
        "--function",
        "echo",
        "--cmdline",
        "quiet=1 timer_hz=0",
        "--mem",
        "32M",
        "--out",
        &tpl,
    ]);
    assert_eq!(build.status, 0, "{build}");
    let template = format!("echo={tpl}");
    let mut server = spawn(&[
        "serve",
        "--template",
        &template,
        "--listen",
        "127.0.0.1:0",
        "--warm",
        "1",
    ]);
    let stdout = server.0.stdout.take().expect("serve stdout");
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("serve's first line");
    assert!(first.contains("listening on"), "{first}");
    let threads = wait_for_threads(
        server.0.id(),
        &["vmfork", "tokio-rt-worker", "reaper", "invoker"],
    );
    for (name, mode, filters) in &threads {
        assert_eq!(*mode, 2, "{name} is not filtered: {threads:?}");
        // Each kind on the main thread's list: HTTP threads, invokers
        // (VM work) and reapers stack one; a vCPU runner one more when an
        // invoker started it.
        let expected = match name.as_str() {
            "vmfork" => 1,
            "vcpu" if *filters == 3 => 3,
            kvm if kvm.starts_with("kvm-") => continue,
            _ => 2,
        };
        assert_eq!(*filters, expected, "{name}: {threads:?}");
    }
}
