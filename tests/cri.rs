//! The kubelet's path to `containerd-shim-vmfork-v1`: containerd's CRI
//! plugin (Debian's containerd, started here with the plugin on, runtime
//! handler `vmfork`, a local `sandbox_image` and no CNI), driven over CRI
//! gRPC on containerd's socket as the kubelet drives it. A host-network
//! pod runs a Wasm image; its log, exit code and teardown are checked.
//! See docs/kubernetes.md.

use std::path::Path;
use std::time::{Duration, Instant};

use vmfork_tests::containerd::{compile_wasi, oci_archive, sha256_hex, shim_bin, Containerd};
use vmfork_tests::cri::{
    container_state, namespace_mode, sandbox_state, Client, ContainerConfig, ContainerMetadata,
    ImageSpec, KeyValue, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata,
};
use vmfork_tests::{vmfork, Scratch};

/// The namespace containerd's CRI plugin keeps its images and containers in.
const NAMESPACE: &str = "k8s.io";
const PAUSE_IMAGE: &str = "docker.io/vmfork/pause:latest";
const IMAGE: &str = "docker.io/vmfork/pod-hello:latest";

/// A WASI command: its argv and $GREETING on stdout, a line on stderr,
/// and status 7.
const MODULE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    const char *greeting = getenv("GREETING");
    printf("hello from a pod argv0=%s", argv[0]);
    for (int i = 1; i < argc; i++) printf(" %s", argv[i]);
    printf("\nGREETING=%s\n", greeting ? greeting : "(unset)");
    fprintf(stderr, "a line on stderr\n");
    return 7;
}
"#;

/// The CRI plugin's part of containerd's config: the `vmfork` runtime
/// handler, the sandbox image this test imports, and CNI directories of
/// the test's own (the plugin creates and watches its conf_dir; a
/// host-network pod never calls CNI, so both stay empty). A runtimes
/// table replaces the default one, runc included, so the default runtime
/// is named too (a node would keep its runc entry).
fn cri_config(scratch: &Scratch) -> String {
    format!(
        "[plugins.\"io.containerd.grpc.v1.cri\"]\n\
         \x20 sandbox_image = \"{PAUSE_IMAGE}\"\n\
         \x20 stream_server_address = \"127.0.0.1\"\n\
         \x20 stream_server_port = \"0\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
         \x20 bin_dir = \"{}\"\n\
         \x20 conf_dir = \"{}\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
         \x20 default_runtime_name = \"vmfork\"\n\
         [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.vmfork]\n\
         \x20 runtime_type = \"io.containerd.vmfork.v1\"\n",
        scratch.str("cni/bin"),
        scratch.str("cni/net.d"),
    )
}

/// Debian's docker-registry on a free loopback port, killed on drop.
struct Registry {
    child: std::process::Child,
    addr: String,
}

impl Registry {
    fn start(scratch: &Scratch) -> Registry {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = scratch.path("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n",
                scratch.str("registry-storage")
            ),
        )
        .expect("registry config");
        let child = std::process::Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn docker-registry (scripts/setup-host.sh installs it)");
        let registry = Registry { child, addr };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.addr).is_err() {
            assert!(Instant::now() < deadline, "docker-registry never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        registry
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns Some, failing the test with `what` and
/// containerd's log after `limit`.
fn poll<T>(
    daemon: &Containerd,
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}\n{}",
            daemon.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The CRI client, once the plugin answers (it loads after the socket
/// is up).
fn connect(daemon: &Containerd) -> Client {
    let mut client = Client::connect(&daemon.socket).expect("connect to containerd's socket");
    poll(daemon, "CRI Version", Duration::from_secs(30), || {
        client.version().ok()
    });
    client
}

/// Imports `archive` into k8s.io and waits until the CRI plugin's image
/// store has it (it learns of imports from containerd's events).
fn import(daemon: &Containerd, client: &mut Client, scratch: &Scratch, name: &str, archive: &[u8]) {
    daemon.import(
        scratch,
        &format!("{}.tar", sha256_hex(name.as_bytes())),
        archive,
    );
    poll(
        daemon,
        &format!("CRI sees {name}"),
        Duration::from_secs(30),
        || client.image_status(name).ok().flatten(),
    );
}

/// The local pause image `sandbox_image` names. It is never run (the
/// sandbox is no process), but the CRI plugin needs it on the node.
fn import_pause(daemon: &Containerd, client: &mut Client, scratch: &Scratch) {
    let pause = oci_archive(
        PAUSE_IMAGE,
        &[("pause", b"vmfork pod sandbox\n")],
        &["/pause"],
    );
    import(daemon, client, scratch, PAUSE_IMAGE, &pause);
}

fn pod_config(scratch: &Scratch, name: &str) -> PodSandboxConfig {
    let log_directory = scratch.path(&format!("pods/{name}"));
    std::fs::create_dir_all(&log_directory).expect("pod log directory");
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.to_string_lossy().into_owned(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                // The node's network: no CNI plugin exists here.
                namespace_options: Some(NamespaceOption {
                    network: namespace_mode::NODE,
                    pid: namespace_mode::CONTAINER,
                    ipc: namespace_mode::POD,
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_config(name: &str, image: &str, args: &[&str], log_path: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
        }),
        args: args.iter().map(|a| a.to_string()).collect(),
        envs: vec![KeyValue {
            key: "GREETING".into(),
            value: "from-cri".into(),
        }],
        log_path: log_path.into(),
        ..Default::default()
    }
}

/// The pid in a verbose status's `info` JSON.
fn info_pid(info: &std::collections::HashMap<String, String>) -> u32 {
    let json: serde_json::Value =
        serde_json::from_str(info.get("info").expect("verbose info")).expect("info is JSON");
    let pid = json["pid"].as_u64().expect("info has a pid");
    u32::try_from(pid).expect("pid fits u32")
}

/// After RemovePodSandbox: no task or container is left in containerd,
/// and the pod's shim has exited.
fn assert_pod_gone(daemon: &Containerd, state: &Path) {
    assert_eq!(daemon.ids("tasks"), Vec::<String>::new(), "tasks left");
    assert_eq!(
        daemon.ids("containers"),
        Vec::<String>::new(),
        "containers left"
    );
    poll(
        daemon,
        "the pod's shim to exit",
        Duration::from_secs(20),
        || shims_of(state).is_empty().then_some(()),
    );
}

/// Pids of this test's running shims: the shim binary, with this test's
/// shim state directory in its environment.
fn shims_of(state: &Path) -> Vec<u32> {
    let exe = shim_bin().canonicalize().expect("shim path");
    let marker = format!("VMFORK_SHIM_STATE_DIR={}", state.display());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let proc_dir = Path::new("/proc").join(pid.to_string());
            std::fs::read_link(proc_dir.join("exe")).ok().as_deref() == Some(exe.as_path())
                && std::fs::read(proc_dir.join("environ"))
                    .map(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                    .unwrap_or(false)
        })
        .collect()
}

/// (stream, text) of each line of a CRI container log
/// ("TIMESTAMP STREAM TAG TEXT", TAG F for a full line).
fn log_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(4, ' ');
            let (_time, stream, tag) = (parts.next()?, parts.next()?, parts.next()?);
            (tag == "F").then(|| (stream.to_string(), parts.next().unwrap_or("").to_string()))
        })
        .collect()
}

#[test]
fn a_pod_runs_a_wasm_container_through_containerds_cri_plugin() {
    let scratch = Scratch::new("cri");
    let state = scratch.path("shim-state");
    let module = compile_wasi(&scratch, "pod", MODULE_C);
    let daemon = Containerd::start(&scratch, &state, NAMESPACE, &cri_config(&scratch));
    let mut client = connect(&daemon);
    let version = client.version().expect("CRI Version");
    assert_eq!(version.runtime_api_version, "v1", "{version:?}");

    import_pause(&daemon, &mut client, &scratch);
    let app = oci_archive(IMAGE, &[("pod.wasm", &module)], &["/pod.wasm"]);
    import(&daemon, &mut client, &scratch, IMAGE, &app);
    let limit = Duration::from_secs(60);

    let pod = pod_config(&scratch, "wasm-pod");
    let start = Instant::now();
    let sandbox = client
        .run_pod_sandbox(&pod, "vmfork")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", daemon.log_text()));
    let status = client
        .pod_sandbox_status(&sandbox)
        .expect("PodSandboxStatus");
    let sandbox_status = status.status.clone().expect("sandbox status");
    assert_eq!(sandbox_status.state, sandbox_state::READY, "{status:?}");
    assert_eq!(sandbox_status.runtime_handler, "vmfork");
    // The sandbox's pid is the shim that holds it: it runs nothing else.
    let shim_pid = info_pid(&status.info);
    assert_eq!(shims_of(&state), vec![shim_pid], "one shim for the pod");
    assert_eq!(daemon.task_status(&sandbox), "RUNNING");

    let config = container_config("hello", IMAGE, &["a", "b"], "hello.log");
    let id = client
        .create_container(&sandbox, &config, &pod)
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", daemon.log_text()));
    client
        .start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", daemon.log_text()));
    // The container joined the pod's shim rather than starting its own.
    assert_eq!(shims_of(&state), vec![shim_pid], "the pod's shim");
    let exited = poll(&daemon, "the container's exit", limit, || {
        let status = client.container_status(&id).ok()?.status?;
        (status.state == container_state::EXITED).then_some(status)
    });
    let ran_in = start.elapsed();
    assert_eq!(exited.exit_code, 7, "{exited:?}");
    let log_path = Path::new(&pod.log_directory).join("hello.log");
    assert_eq!(exited.log_path, log_path.to_string_lossy());
    let want = [
        ("stdout", "hello from a pod argv0=/pod.wasm a b"),
        ("stdout", "GREETING=from-cri"),
        ("stderr", "a line on stderr"),
    ];
    let lines = poll(&daemon, "the container's log", limit, || {
        let lines = log_lines(&std::fs::read_to_string(&log_path).ok()?);
        (lines.len() >= want.len()).then_some(lines)
    });
    for (stream, text) in want {
        assert!(
            lines.iter().any(|(s, t)| s == stream && t == text),
            "{stream} {text:?} not in {}: {lines:?}",
            log_path.display()
        );
    }
    assert!(
        !lines.iter().any(|(_, t)| t.contains("clone 1:")),
        "{lines:?}"
    );
    // One template for the module, built on this first run.
    let cached: Vec<String> = std::fs::read_dir(state.join("templates"))
        .expect("template cache")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(cached, vec![sha256_hex(&module)]);

    // A second container of the same pod finds the template cached.
    let again = container_config("again", IMAGE, &["c"], "again.log");
    let id2 = client
        .create_container(&sandbox, &again, &pod)
        .expect("CreateContainer again");
    client.start_container(&id2).expect("StartContainer again");
    let exited2 = poll(&daemon, "the second container's exit", limit, || {
        let status = client.container_status(&id2).ok()?.status?;
        (status.state == container_state::EXITED).then_some(status)
    });
    assert_eq!(exited2.exit_code, 7, "{exited2:?}");
    let builds = std::fs::read_to_string(state.join("builds.log")).expect("builds.log");
    assert_eq!(builds.lines().count(), 1, "{builds}");

    // Teardown as the kubelet does it: the sandbox stops (its task is
    // killed and deleted), then the pod and its containers go.
    client
        .stop_pod_sandbox(&sandbox)
        .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", daemon.log_text()));
    let stopped = client
        .pod_sandbox_status(&sandbox)
        .expect("PodSandboxStatus");
    assert_eq!(
        stopped.status.map(|s| s.state),
        Some(sandbox_state::NOTREADY)
    );
    client
        .remove_pod_sandbox(&sandbox)
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", daemon.log_text()));
    assert!(client.pod_sandbox_status(&sandbox).is_err(), "pod left");
    assert_eq!(client.list_containers().expect("ListContainers"), vec![]);
    assert_eq!(client.list_pod_sandboxes().expect("ListPodSandbox"), vec![]);
    // The shim ends with its last task, and takes its socket with it.
    assert_pod_gone(&daemon, &state);
    let socket = format!(
        "/run/containerd/s/{}",
        sha256_hex(format!("{}/{NAMESPACE}/{sandbox}", daemon.socket).as_bytes())
    );
    assert!(!Path::new(&socket).exists(), "shim socket {socket} left");
    eprintln!("pod run to exit in {ran_in:?}");
}

#[test]
fn cri_refuses_what_the_node_cannot_run_with_clear_errors() {
    let scratch = Scratch::new("cri-errors");
    let state = scratch.path("shim-state");
    let daemon = Containerd::start(&scratch, &state, NAMESPACE, &cri_config(&scratch));
    let mut client = connect(&daemon);
    import_pause(&daemon, &mut client, &scratch);
    let pod = pod_config(&scratch, "bad-pod");

    // A RuntimeClass handler the node has not configured.
    let err = client
        .run_pod_sandbox(&pod, "no-such-handler")
        .expect_err("an unknown runtime handler");
    assert!(
        err.message()
            .contains("no runtime for \"no-such-handler\" is configured"),
        "{err}"
    );

    let sandbox = client
        .run_pod_sandbox(&pod, "vmfork")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", daemon.log_text()));

    // An image the node does not have (and cannot pull: no network).
    let absent = "docker.io/vmfork/absent:latest";
    let config = container_config("absent", absent, &[], "absent.log");
    let err = client
        .create_container(&sandbox, &config, &pod)
        .expect_err("an image the node lacks");
    assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
    assert!(err.message().contains(absent), "{err}");

    // An image whose entrypoint is not Wasm is a Linux image, which
    // needs the guest kernel: none is configured here, and the shim's
    // reason reaches the CRI client at StartContainer (CreateContainer
    // makes no task).
    let config = container_config("pause-as-app", PAUSE_IMAGE, &[], "pause.log");
    let id = client
        .create_container(&sandbox, &config, &pod)
        .expect("CreateContainer of a non-Wasm image");
    let err = client
        .start_container(&id)
        .expect_err("a Linux image without a guest kernel");
    assert!(
        err.message()
            .contains("a Linux image needs the guest kernel"),
        "{err}"
    );

    client.stop_pod_sandbox(&sandbox).expect("StopPodSandbox");
    client
        .remove_pod_sandbox(&sandbox)
        .expect("RemovePodSandbox");
    assert_pod_gone(&daemon, &state);
}

/// A node pre-warmed as docs/kubernetes.md describes: the module's
/// template, built elsewhere and pushed to a registry, is pulled straight
/// into the shim's cache, and the pod's container clones it with no build.
#[test]
fn a_node_prewarmed_from_a_registry_runs_its_first_pod_without_a_build() {
    let scratch = Scratch::new("cri-prewarm");
    let state = scratch.path("shim-state");
    let module = compile_wasi(&scratch, "pod", MODULE_C);
    let sha = sha256_hex(&module);

    // Elsewhere (CI, another node): build and push.
    let registry = Registry::start(&scratch);
    let built = scratch.str("built");
    let run = vmfork(&[
        "template",
        "build",
        "--wasm",
        &scratch.str("pod.wasm"),
        "--quiet",
        "--out",
        &built,
    ]);
    assert_eq!(run.status, 0, "{run}");
    let reference = format!("{}/fn/pod-template:{sha}", registry.addr);
    let run = vmfork(&["template", "push", &built, &reference]);
    assert_eq!(run.status, 0, "{run}");
    // On the node, before any pod: pull into the cache.
    std::fs::create_dir_all(state.join("templates")).expect("cache dir");
    let cached = state.join("templates").join(&sha);
    let run = vmfork(&[
        "template",
        "pull",
        &reference,
        "--out",
        &cached.to_string_lossy(),
    ]);
    assert_eq!(run.status, 0, "{run}");

    let daemon = Containerd::start(&scratch, &state, NAMESPACE, &cri_config(&scratch));
    let mut client = connect(&daemon);
    import_pause(&daemon, &mut client, &scratch);
    let app = oci_archive(IMAGE, &[("pod.wasm", &module)], &["/pod.wasm"]);
    import(&daemon, &mut client, &scratch, IMAGE, &app);
    let pod = pod_config(&scratch, "warm-pod");
    let sandbox = client
        .run_pod_sandbox(&pod, "vmfork")
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", daemon.log_text()));
    let config = container_config("warm", IMAGE, &["w"], "warm.log");
    let id = client
        .create_container(&sandbox, &config, &pod)
        .expect("CreateContainer");
    client
        .start_container(&id)
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", daemon.log_text()));
    let exited = poll(
        &daemon,
        "the container's exit",
        Duration::from_secs(60),
        || {
            let status = client.container_status(&id).ok()?.status?;
            (status.state == container_state::EXITED).then_some(status)
        },
    );
    assert_eq!(exited.exit_code, 7, "{exited:?}");
    let log_path = Path::new(&pod.log_directory).join("warm.log");
    let lines = poll(
        &daemon,
        "the container's log",
        Duration::from_secs(60),
        || {
            let lines = log_lines(&std::fs::read_to_string(&log_path).ok()?);
            (!lines.is_empty()).then_some(lines)
        },
    );
    assert!(
        lines
            .iter()
            .any(|(s, t)| s == "stdout" && t == "hello from a pod argv0=/pod.wasm w"),
        "{lines:?}"
    );
    // The pulled template was used: the shim built nothing.
    assert!(
        !state.join("builds.log").exists(),
        "the shim built a template: {:?}",
        std::fs::read_to_string(state.join("builds.log"))
    );
    client.stop_pod_sandbox(&sandbox).expect("StopPodSandbox");
    client
        .remove_pod_sandbox(&sandbox)
        .expect("RemovePodSandbox");
}
