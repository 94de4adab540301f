//! A containerd daemon of a test's own (Debian's, with its own root, state,
//! socket and config), `ctr` against it, and Wasm OCI image archives built
//! in the test: shared by tests/containerd.rs (`ctr run`) and tests/cri.rs
//! (the CRI plugin). Not a test target.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::oci::{image_archive, Entry};
use crate::{finish, vmfork_bin, Run, Scratch};

/// The runtime type containerd knows the vmfork shim by.
pub const RUNTIME: &str = "io.containerd.vmfork.v1";

/// The built shim: next to the vmfork binary of the same profile.
pub fn shim_bin() -> PathBuf {
    let bin = vmfork_bin().with_file_name("containerd-shim-vmfork-v1");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --release -p vmfork-shim`)",
        bin.display()
    );
    bin
}

/// A containerd daemon of the test's own, stopped on drop.
pub struct Containerd {
    child: Child,
    /// The gRPC socket's path (CRI is served there too when enabled).
    pub socket: String,
    /// The namespace `ctr` works in.
    namespace: &'static str,
    log: PathBuf,
}

impl Containerd {
    /// Starts containerd with the shim on its `PATH`, the shim's state in
    /// `state_dir`, `ctr` in `namespace`, and `config` added to its config
    /// file after `root` and `state` (top-level keys, then any tables).
    pub fn start(
        scratch: &Scratch,
        state_dir: &Path,
        namespace: &'static str,
        config: &str,
    ) -> Containerd {
        Containerd::start_with_env(scratch, state_dir, namespace, config, &[])
    }

    /// [`Containerd::start`] with `env` added to the daemon's environment
    /// (the shim inherits it).
    pub fn start_with_env(
        scratch: &Scratch,
        state_dir: &Path,
        namespace: &'static str,
        config: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Containerd {
        let bin_dir = scratch.path("bin");
        std::fs::create_dir_all(&bin_dir).expect("bin dir");
        std::os::unix::fs::symlink(shim_bin(), bin_dir.join("containerd-shim-vmfork-v1"))
            .expect("symlink shim");
        std::os::unix::fs::symlink(vmfork_bin(), bin_dir.join("vmfork")).expect("symlink vmfork");
        let socket = scratch.str("containerd.sock");
        let config_path = scratch.path("config.toml");
        std::fs::write(
            &config_path,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\n{config}\n\
                 [grpc]\n  address = \"{socket}\"\n\
                 [ttrpc]\n  address = \"{socket}.ttrpc\"\n",
                scratch.str("root"),
                scratch.str("state"),
            ),
        )
        .expect("write config");
        let log = scratch.path("containerd.log");
        let log_file = std::fs::File::create(&log).expect("containerd log");
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .env("PATH", path)
            .env("VMFORK_SHIM_STATE_DIR", state_dir)
            .env("VMFORK_BIN", bin_dir.join("vmfork"))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log fd"))
            .stderr(log_file)
            .spawn()
            .expect("spawn containerd (scripts/setup-host.sh installs it)");
        let mut daemon = Containerd {
            child,
            socket,
            namespace,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let run = daemon.ctr(&["version"]);
            if run.status == 0 {
                break;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("containerd exited ({status}): {}", daemon.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer within 30 s: {run}\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.args(["-a", &self.socket, "-n", self.namespace])
            .args(args)
            .stdin(Stdio::null());
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Run {
        let start = Instant::now();
        let output = self.command(args).output().expect("spawn ctr");
        finish(output, start)
    }

    /// `ctr ARGS`, failed with containerd's log if it takes over `limit`.
    pub fn ctr_within(&self, args: &[&str], limit: Duration) -> Run {
        let start = Instant::now();
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctr");
        while child.try_wait().expect("try_wait").is_none() {
            if start.elapsed() > limit {
                let _ = child.kill();
                let run = finish(child.wait_with_output().expect("output"), start);
                panic!("ctr {args:?} hung: {run}\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        finish(child.wait_with_output().expect("output"), start)
    }

    /// `ctr task ls` status of `id` ("" when there is no such task).
    pub fn task_status(&self, id: &str) -> String {
        let run = self.ctr(&["task", "ls"]);
        run.stdout
            .lines()
            .find(|line| line.split_whitespace().next() == Some(id))
            .and_then(|line| line.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    }

    /// The ids `ctr KIND ls -q` lists (KIND: containers, tasks, images).
    pub fn ids(&self, kind: &str) -> Vec<String> {
        let run = self.ctr(&[kind, "ls", "-q"]);
        assert_eq!(run.status, 0, "ctr {kind} ls: {run}");
        run.stdout.lines().map(str::to_string).collect()
    }

    /// `ctr images import` of `archive`, written to `scratch/file` first.
    pub fn import(&self, scratch: &Scratch, file: &str, archive: &[u8]) {
        let path = scratch.path(file);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(archive))
            .expect("write archive");
        let run = self.ctr(&["images", "import", &path.to_string_lossy()]);
        assert_eq!(run.status, 0, "import {file}: {run}\n{}", self.log_text());
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SIGTERM first: containerd leaves its state tidy on a clean stop.
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) with our own child's pid; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An OCI image archive (what `ctr images import` reads) of one layer
/// holding `files` (mode 755), whose config has `entrypoint` and
/// `PATH=/`, named `name`.
pub fn oci_archive(name: &str, files: &[(&str, &[u8])], entrypoint: &[&str]) -> Vec<u8> {
    let layer: Vec<Entry> = files
        .iter()
        .map(|(path, bytes)| Entry::File(path, bytes, 0o755))
        .collect();
    image_archive(
        name,
        &[&layer],
        serde_json::json!({ "Entrypoint": entrypoint, "Env": ["PATH=/"] }),
    )
}

/// A WASI command module of C `source`, built with clang and wasi-libc.
pub fn compile_wasi(scratch: &Scratch, name: &str, source: &str) -> Vec<u8> {
    let src = scratch.path(&format!("{name}.c"));
    let out = scratch.path(&format!("{name}.wasm"));
    std::fs::write(&src, source).expect("write module source");
    crate::compile_wasi_file(&src, &out);
    std::fs::read(&out).expect("read the module")
}
