//! Helpers for the integration tests: run the real `vmfork` binary against
//! the real /dev/kvm and look at what it printed.

#[path = "support/containerd.rs"]
pub mod containerd;
#[path = "support/cri.rs"]
pub mod cri;
#[path = "support/oci.rs"]
pub mod oci;
pub mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The vmfork binary built for the same profile as these tests
/// (`target/<profile>/vmfork`), or `$VMFORK_BIN`.
pub fn vmfork_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("VMFORK_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("vmfork");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release -p vmfork` or scripts/test.sh)",
        bin.display()
    );
    bin
}

pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// The JSON object on the last line of stdout.
    pub fn json(&self) -> serde_json::Value {
        let last = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("last stdout line is not JSON ({e}): {last:?}\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} after {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.elapsed, self.stdout, self.stderr
        )
    }
}

/// A finished process's output as a Run, timed from `start`.
pub fn finish(output: Output, start: Instant) -> Run {
    Run {
        status: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// Runs `vmfork ARGS...` to completion.
/// `vmfork ARGS` with extra environment `envs`, killed (and the test
/// failed) if still running after `limit`: for runs where a hang is the
/// bug being looked for.
pub fn vmfork_within(args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Run {
    let start = Instant::now();
    let mut child = Command::new(vmfork_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmfork");
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let run = finish(child.wait_with_output().expect("output"), start);
            panic!("vmfork hung (killed after {limit:?}) with {envs:?}: {run}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    finish(child.wait_with_output().expect("output"), start)
}

/// What [`sigterm_after_line`] saw: all of stderr, the exit status, and
/// the time from the signal to the exit.
pub struct Interrupted {
    pub stderr: String,
    pub status: Option<i32>,
    pub after_signal: Duration,
}

/// Spawns `vmfork ARGS` with extra environment `envs`, waits for a line
/// on its stderr that contains `needle` (the event the caller wants the
/// signal to follow), sends it SIGTERM and waits for it to exit.
pub fn sigterm_after_line(args: &[&str], envs: &[(&str, &str)], needle: &str) -> Interrupted {
    use std::io::{BufRead, BufReader, Read};
    let mut child = Command::new(vmfork_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmfork");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).expect("stderr");
        assert!(n > 0, "vmfork ended before printing {needle:?}: {seen}");
        seen.push_str(&line);
        if line.contains(needle) {
            break;
        }
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid; no memory involved.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    stderr.read_to_string(&mut seen).expect("stderr");
    let status = child.wait().expect("wait").code();
    Interrupted {
        stderr: seen,
        status,
        after_signal: signalled.elapsed(),
    }
}

/// C `src` compiled to a WASI command module at `out`, with Debian's clang
/// and wasi-libc.
pub fn compile_wasi_file(src: &Path, out: &Path) {
    let status = Command::new("clang")
        .args(["--target=wasm32-wasi", "--sysroot=/usr", "-O2", "-o"])
        .arg(out)
        .arg(src)
        .status()
        .expect("running clang (scripts/setup-host.sh installs it)");
    assert!(status.success(), "clang {}", src.display());
}

pub fn vmfork(args: &[&str]) -> Run {
    let start = Instant::now();
    let output = Command::new(vmfork_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("spawn vmfork");
    finish(output, start)
}

/// `vmfork template build --mem MEM --cmdline CMDLINE --out OUT`, asserted
/// to succeed; returns OUT.
pub fn build_template(out: &str, mem: &str, cmdline: &str) -> String {
    let run = vmfork(&[
        "template",
        "build",
        "--mem",
        mem,
        "--cmdline",
        cmdline,
        "--out",
        out,
    ]);
    assert_eq!(run.status, 0, "{run}");
    out.to_string()
}

/// Runs `vmfork ARGS...` as the unprivileged user 65534 (nobody), with no
/// supplementary groups: what a user without access to root-only device
/// nodes sees.
pub fn vmfork_as_nobody(args: &[&str]) -> Run {
    let bin = vmfork_bin().display().to_string();
    let mut all = vec!["--reuid=65534", "--regid=65534", "--clear-groups", &bin];
    all.extend_from_slice(args);
    command("setpriv", &all)
}

/// Runs any command to completion (for wrappers like unshare).
pub fn command(program: &str, args: &[&str]) -> Run {
    let start = Instant::now();
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    finish(output, start)
}

/// A fresh scratch directory under the system temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "vmfork-test-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn str(&self, name: &str) -> String {
        self.path(name).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Exit statuses of vmfork (see `vmfork --help`).
pub mod exit {
    pub const USAGE: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const KVM_UNAVAILABLE: i32 = 4;
    pub const KERNEL_UNREADABLE: i32 = 6;
    pub const KERNEL_FORMAT: i32 = 7;
    pub const MEMORY_TOO_SMALL: i32 = 8;
    pub const IMAGE: i32 = 9;
    pub const GUEST_SHUTDOWN: i32 = 10;
    pub const KVM_INTERNAL_ERROR: i32 = 11;
    pub const GUEST_CRASH: i32 = 12;
    pub const GUEST_EXIT_STATUS: i32 = 13;
    pub const TIMEOUT: i32 = 14;
    pub const TEMPLATE: i32 = 16;
    pub const CONTROL: i32 = 17;
    pub const SECCOMP: i32 = 18;
    pub const ISOLATION: i32 = 19;
    pub const PAGE_SERVER: i32 = 20;
    pub const ROOTFS_CHANGED: i32 = 21;
    pub const FUNCTION_INIT: i32 = 27;
}

/// One of the cached Linux guest artifacts (`kind` linux: vmlinux,
/// bzImage; rootfs: rootfs), built or found in ~/.cache/vmfork by
/// vmfork-guest-artifacts, which sits next to the vmfork binary.
pub fn guest_artifact(kind: &str, key: &str) -> PathBuf {
    let tool = vmfork_bin().with_file_name("vmfork-guest-artifacts");
    let output = std::process::Command::new(&tool)
        .arg(kind)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", tool.display()));
    assert!(
        output.status.success(),
        "{} {kind} failed (run scripts/build-linux-guest.sh): {}",
        tool.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| PathBuf::from(v))
        .unwrap_or_else(|| panic!("no {key}= in the output of {} {kind}", tool.display()))
}

/// What one of scripts/NAME (a cache-filling script such as
/// distro-kernel.sh or build-lambda-fn.sh) prints: the path it built or
/// found.
pub fn script_path(name: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}

/// A distribution's kernel and its initrd (Debian's, prepared and cached by
/// scripts/distro-kernel.sh, which scripts/test-svm.sh runs on the host
/// before the rig boots): (vmlinuz, initrd.img).
pub fn distro_kernel() -> (PathBuf, PathBuf) {
    let dir = script_path("distro-kernel.sh");
    (dir.join("vmlinuz"), dir.join("initrd.img"))
}

/// Whether this host's KVM is PVM (guest ring 0 emulated).
pub fn host_is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Asserts an error run: exact status, one line on stderr naming `needle`,
/// and no panic or backtrace.
pub fn assert_clean_error(run: &Run, status: i32, needle: &str) {
    assert_eq!(run.status, status, "{run}");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one stderr line: {run}");
    assert!(lines[0].starts_with("vmfork: "), "{run}");
    assert!(
        run.stderr.to_lowercase().contains(&needle.to_lowercase()),
        "stderr should mention {needle:?}: {run}"
    );
    assert!(!run.stderr.contains("panicked"), "{run}");
}

/// The value of `key=` in a guest console line such as the `pong` line.
pub fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .unwrap_or_else(|| panic!("{key}= missing in {line:?}"))
}

/// Every `vmfork-guest: pong` line a run printed.
pub fn pongs(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter(|l| l.contains("vmfork-guest: pong"))
        .map(str::to_string)
        .collect()
}

/// Waits (30 s at most) for a socket or file another process creates.
pub fn wait_for_path(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !Path::new(path).exists() {
        assert!(Instant::now() < deadline, "{path} never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
}
