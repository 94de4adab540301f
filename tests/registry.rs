//! `vmfork template push` and `pull` against a real registry: Debian's
//! docker-registry (scripts/setup-host.sh installs it), started per test
//! on a free loopback port with storage of its own, and killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmfork_tests::{assert_clean_error, build_template, finish, vmfork, vmfork_bin, Run, Scratch};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// The registry's exit statuses (README and `vmfork --help`).
const REGISTRY: i32 = 25;
const REGISTRY_AUTH: i32 = 26;

struct Registry {
    child: Child,
    addr: String,
    storage: PathBuf,
}

impl Registry {
    /// Starts a registry under `scratch/name`; with `htpasswd`, one that
    /// wants basic auth for everything.
    fn start(scratch: &Scratch, name: &str, htpasswd: Option<&Path>) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: apt-get install docker-registry (scripts/setup-host.sh)"
        );
        let storage = scratch.path(&format!("{name}-storage"));
        // The kernel picks a free port; the registry binds it right after.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let auth = htpasswd.map_or(String::new(), |file| {
            format!(
                "auth:\n  htpasswd:\n    realm: vmfork-test\n    path: {}\n",
                file.display()
            )
        });
        let config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
             http:\n  addr: {addr}\n{auth}",
            storage.display()
        );
        let config_path = scratch.path(&format!("{name}.yml"));
        std::fs::write(&config_path, config).expect("registry config");
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Registry {
            child,
            addr,
            storage,
        };
        registry.wait_ready(if htpasswd.is_some() { 401 } else { 200 });
        registry
    }

    /// Polls `GET /v2/` until the registry answers it as it should.
    fn wait_ready(&mut self, expected: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.v2_status() {
                assert_eq!(status, expected, "GET /v2/ on {}", self.addr);
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("docker-registry exited with {status} before answering");
            }
            assert!(Instant::now() < deadline, "docker-registry never answered");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn v2_status(&self) -> Option<u16> {
        let mut stream = TcpStream::connect(&self.addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        reply.split_whitespace().nth(1)?.parse().ok()
    }

    /// `PUT /v2/REPO/manifests/TAG`, asserted to be accepted.
    fn put_manifest(&self, repo: &str, tag: &str, body: &[u8]) {
        let mut stream = TcpStream::connect(&self.addr).expect("connect");
        let head = format!(
            "PUT /v2/{repo}/manifests/{tag} HTTP/1.0\r\nHost: {}\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        stream.write_all(head.as_bytes()).expect("write");
        stream.write_all(body).expect("write");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read");
        assert!(reply.split_whitespace().nth(1) == Some("201"), "{reply}");
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// Where the registry keeps the blob `digest` (`sha256:HEX`).
    fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vmfork ARGS` with `stdin` written to its standard input and extra
/// environment `envs`.
fn vmfork_with(args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> Run {
    let start = Instant::now();
    let mut child = Command::new(vmfork_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vmfork");
    let mut input = child.stdin.take().expect("stdin");
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    finish(child.wait_with_output().expect("output"), start)
}

fn template(scratch: &Scratch) -> String {
    build_template(&scratch.str("tpl"), "32M", "quiet=1")
}

fn push(dir: &str, reference: &str) -> Run {
    vmfork(&["template", "push", dir, reference, "--json"])
}

/// Pushes `dir` to `reference` and returns the OCI manifest as the
/// registry stores it (a blob too, under the digest push printed).
fn push_and_read_manifest(registry: &Registry, dir: &str, reference: &str) -> serde_json::Value {
    let run = push(dir, reference);
    assert_eq!(run.status, 0, "{run}");
    let digest = run.json()["digest"].as_str().expect("digest").to_string();
    serde_json::from_slice(&std::fs::read(registry.blob_path(&digest)).expect("manifest"))
        .expect("manifest json")
}

#[test]
fn push_then_pull_gives_a_template_that_clones() {
    let scratch = Scratch::new("registry-roundtrip");
    let registry = Registry::start(&scratch, "reg", None);
    let dir = template(&scratch);
    let reference = registry.reference("fn/echo:v1");

    let run = push(&dir, &reference);
    assert_eq!(run.status, 0, "{run}");
    let pushed = run.json();
    assert_eq!(pushed["layers"], 3, "{run}");
    let digest = pushed["digest"].as_str().expect("digest").to_string();
    // The memory layer is compressed: 32 MiB of guest RAM, mostly zero.
    assert!(
        pushed["bytes"].as_u64().is_some_and(|b| b < 8 << 20),
        "{run}"
    );

    let text = vmfork(&["template", "push", &dir, &reference]);
    assert_eq!(text.status, 0, "{text}");
    assert!(
        text.stdout
            .starts_with(&format!("pushed {dir} to {reference} (sha256:")),
        "{text}"
    );

    let out = scratch.str("pulled");
    let run = vmfork(&["template", "pull", &reference, "--out", &out, "--json"]);
    assert_eq!(run.status, 0, "{run}");
    let pulled = run.json();
    assert_eq!(pulled["digest"], digest.as_str(), "{run}");
    assert_eq!(pulled["memory_bytes"], 32 << 20, "{run}");
    // Written sparse: far less on disk than the 32 MiB apparent.
    let on_disk = pulled["memory_on_disk_bytes"].as_u64().expect("on disk");
    assert!(on_disk < 24 << 20, "{run}");
    for file in ["template.json", "state", "memory"] {
        let a = std::fs::read(Path::new(&dir).join(file)).expect("original");
        let b = std::fs::read(Path::new(&out).join(file)).expect("pulled");
        assert!(a == b, "{file} differs after the round trip");
    }

    // Clones of the pulled template restore it: no cold boot.
    let run = vmfork(&["clone", &out, "-n", "3", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(run.json()["clones"], 3, "{run}");
    assert!(!run.stdout.contains("vmfork-guest: boot"), "{run}");

    // By digest too, into another directory.
    let by_digest = format!("{}@{digest}", registry.reference("fn/echo"));
    let out2 = scratch.str("pulled2");
    let run = vmfork(&["template", "pull", &by_digest, "--out", &out2]);
    assert_eq!(run.status, 0, "{run}");
    // And never over an existing directory.
    let run = vmfork(&["template", "pull", &reference, "--out", &out]);
    assert_clean_error(&run, vmfork_tests::exit::TEMPLATE, "already exists");
}

#[test]
fn a_missing_tag_is_a_registry_error_and_leaves_nothing() {
    let scratch = Scratch::new("registry-missing");
    let registry = Registry::start(&scratch, "reg", None);
    let dir = template(&scratch);
    assert_eq!(push(&dir, &registry.reference("fn/echo:v1")).status, 0);
    let out = scratch.str("pulled");
    let run = vmfork(&[
        "template",
        "pull",
        &registry.reference("fn/echo:nope"),
        "--out",
        &out,
    ]);
    assert_clean_error(&run, REGISTRY, "manifest unknown");
    assert!(!Path::new(&out).exists());
    // A REF that is not one is the command line's error.
    let run = vmfork(&["template", "pull", "Not A Ref", "--out", &out]);
    assert_clean_error(&run, vmfork_tests::exit::INVALID_ARGUMENT, "Not A Ref");
}

#[test]
fn a_corrupt_blob_fails_its_digest_and_leaves_no_output() {
    let scratch = Scratch::new("registry-corrupt");
    let registry = Registry::start(&scratch, "reg", None);
    let dir = template(&scratch);
    let reference = registry.reference("fn/echo:v1");
    // The registry stores the OCI manifest as a blob too: find the memory
    // layer's blob through it, and flip bytes in its middle.
    let manifest = push_and_read_manifest(&registry, &dir, &reference);
    let memory = manifest["layers"][2]["digest"].as_str().expect("layer");
    let path = registry.blob_path(memory);
    let mut blob = std::fs::read(&path).expect("blob");
    let middle = blob.len() / 2;
    for b in &mut blob[middle..middle + 16] {
        *b ^= 0xa5;
    }
    std::fs::write(&path, &blob).expect("corrupt the blob");

    let out = scratch.str("pulled");
    let run = vmfork(&["template", "pull", &reference, "--out", &out]);
    assert_clean_error(&run, REGISTRY, "digest mismatch");
    assert!(!Path::new(&out).exists(), "{run}");
    // Nor any partial directory beside it.
    let leftovers: Vec<_> = std::fs::read_dir(&scratch.0)
        .expect("ls")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("pulled"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn basic_auth_is_refused_without_credentials_and_works_with_them() {
    let scratch = Scratch::new("registry-auth");
    let hash = bcrypt::hash_with_result("s3cret-pass", 4)
        .expect("bcrypt")
        .format_for_version(bcrypt::Version::TwoY);
    let htpasswd = scratch.path("htpasswd");
    std::fs::write(&htpasswd, format!("ci:{hash}\n")).expect("htpasswd");
    let registry = Registry::start(&scratch, "auth", Some(&htpasswd));
    let dir = template(&scratch);
    let reference = registry.reference("fn/echo:v1");

    let run = push(&dir, &reference);
    assert_clean_error(&run, REGISTRY_AUTH, "authentication refused");
    let run = vmfork_with(
        &[
            "template",
            "push",
            &dir,
            &reference,
            "--username",
            "ci",
            "--password-stdin",
        ],
        "wrong\n",
        &[],
    );
    assert_clean_error(&run, REGISTRY_AUTH, "authentication refused");

    let run = vmfork_with(
        &[
            "template",
            "push",
            &dir,
            &reference,
            "--username",
            "ci",
            "--password-stdin",
        ],
        "s3cret-pass\n",
        &[],
    );
    assert_eq!(run.status, 0, "{run}");
    assert!(!run.stdout.contains("s3cret") && !run.stderr.contains("s3cret"));

    let out = scratch.str("pulled");
    let run = vmfork(&["template", "pull", &reference, "--out", &out]);
    assert_clean_error(&run, REGISTRY_AUTH, "authentication refused");
    assert!(!Path::new(&out).exists());
    let run = vmfork_with(
        &["template", "pull", &reference, "--out", &out],
        "",
        &[
            ("VMFORK_REGISTRY_USERNAME", "ci"),
            ("VMFORK_REGISTRY_PASSWORD", "s3cret-pass"),
        ],
    );
    assert_eq!(run.status, 0, "{run}");
    assert!(Path::new(&out).join("memory").exists());
}

#[test]
fn a_diff_template_is_refused() {
    let scratch = Scratch::new("registry-diff");
    let registry = Registry::start(&scratch, "reg", None);
    let dir = template(&scratch);
    let sock = scratch.str("api.sock");
    let mut vm = Command::new(vmfork_bin())
        .args(["restore", &dir, "--api-sock", &sock, "--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn restore");
    vmfork_tests::wait_for_path(&sock);
    let ctl = |args: &[&str]| {
        let mut full = vec!["ctl", sock.as_str()];
        full.extend_from_slice(args);
        vmfork(&full)
    };
    assert_eq!(ctl(&["pause"]).status, 0);
    let diff = scratch.str("diff");
    let run = ctl(&["snapshot", "--diff", "--out", &diff]);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(ctl(&["stop"]).status, 0);
    let _ = vm.wait();

    let run = push(&diff, &registry.reference("fn/diff:v1"));
    assert_clean_error(&run, REGISTRY, "pushing diffs is not supported yet");
    // Nothing reached the registry.
    let repo = registry
        .storage
        .join("docker/registry/v2/repositories/fn/diff");
    assert!(!repo.exists(), "{}", repo.display());
}

#[test]
fn a_manifest_that_is_not_a_template_s_is_refused() {
    let scratch = Scratch::new("registry-tampered");
    let registry = Registry::start(&scratch, "reg", None);
    let dir = template(&scratch);
    let reference = registry.reference("fn/echo:v1");
    let original = push_and_read_manifest(&registry, &dir, &reference);
    // Stored under new tags through the registry, so that it serves each
    // with its own, consistent digest: only vmfork's checks can refuse it.
    let out = scratch.str("pulled");
    let pull_edited = |tag: &str, edit: &dyn Fn(&mut serde_json::Value)| {
        let mut manifest = original.clone();
        edit(&mut manifest);
        registry.put_manifest(
            "fn/echo",
            tag,
            &serde_json::to_vec(&manifest).expect("json"),
        );
        vmfork(&[
            "template",
            "pull",
            &registry.reference(&format!("fn/echo:{tag}")),
            "--out",
            &out,
        ])
    };

    let run = pull_edited("media", &|m| {
        m["layers"][2]["mediaType"] = "application/vnd.oci.image.layer.v1.tar".into()
    });
    assert_clean_error(&run, REGISTRY, "not a vmfork template");
    assert!(!Path::new(&out).exists());

    // A memory layer far bigger than 32 MiB of guest RAM can compress to
    // is refused before a byte of it is fetched.
    let run = pull_edited("huge", &|m| m["layers"][2]["size"] = (1u64 << 40).into());
    assert_clean_error(&run, REGISTRY, "more than the");
    assert!(!Path::new(&out).exists());

    let run = pull_edited("same", &|_| {});
    assert_eq!(run.status, 0, "the unedited manifest pulls: {run}");
}

#[test]
fn a_rootfs_template_is_refused() {
    let scratch = Scratch::new("registry-rootfs");
    let registry = Registry::start(&scratch, "reg", None);
    // All the VMM checks of an image: whole 2 MiB units, an ext4 magic and
    // a 4 KiB block size in the superblock (the embedded guest never
    // reads it).
    let image = scratch.path("rootfs.img");
    let mut bytes = vec![0u8; 4 << 20];
    bytes[1024 + 24..1024 + 28].copy_from_slice(&2u32.to_le_bytes());
    bytes[1024 + 56..1024 + 58].copy_from_slice(&0xef53u16.to_le_bytes());
    std::fs::write(&image, &bytes).expect("image");
    let dir = scratch.str("tpl");
    let image = image.to_string_lossy();
    let run = vmfork(&[
        "template",
        "build",
        "--rootfs",
        &image,
        "--cmdline",
        "quiet=1",
        "--mem",
        "32M",
        "--out",
        &dir,
    ]);
    assert_eq!(run.status, 0, "{run}");

    let run = push(&dir, &registry.reference("fn/rootfs:v1"));
    assert_clean_error(
        &run,
        REGISTRY,
        "pushing rootfs templates is not supported yet",
    );
    let repo = registry
        .storage
        .join("docker/registry/v2/repositories/fn/rootfs");
    assert!(!repo.exists(), "{}", repo.display());
}
