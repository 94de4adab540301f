//! `containerd-shim-vmfork-v1` driven by `ctr` against a real containerd
//! (Debian's, started here with a config of its own): a Wasm image built
//! in the test as an OCI archive is imported and run with
//! `--runtime io.containerd.vmfork.v1`. See docs/containerd.md.

use std::io::Write;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use vmfork_tests::containerd::{compile_wasi, oci_archive, sha256_hex, Containerd, RUNTIME};
use vmfork_tests::{finish, Run, Scratch};

const NAMESPACE: &str = "vmfork";
/// Without the CRI plugin: `ctr` needs none of it.
const CONFIG: &str = "disabled_plugins = [\"io.containerd.grpc.v1.cri\"]";

/// A WASI command: prints a greeting with its argv and $GREETING; `exit`
/// exits 3, `loop` spins until killed, `cat` copies stdin to stdout.
const MODULE_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "hello";
    if (strcmp(mode, "exit") == 0) { fprintf(stderr, "exiting 3 on purpose\n"); return 3; }
    if (strcmp(mode, "loop") == 0) { volatile unsigned long n = 0; for (;;) n++; }
    if (strcmp(mode, "cat") == 0) {
        char buf[4096]; size_t n;
        while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
        return 0;
    }
    const char *greeting = getenv("GREETING");
    printf("hello from wasm argv0=%s", argv[0]);
    for (int i = 1; i < argc; i++) printf(" %s", argv[i]);
    printf("\nGREETING=%s\n", greeting ? greeting : "(unset)");
    fprintf(stderr, "a line on stderr\n");
    return 0;
}
"#;

fn compile_module(scratch: &Scratch) -> Vec<u8> {
    compile_wasi(scratch, "module", MODULE_C)
}

fn import(daemon: &Containerd, scratch: &Scratch, file: &str, archive: &[u8]) {
    daemon.import(scratch, file, archive);
}

fn run_args<'a>(image: &'a str, id: &'a str, rest: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["run", "--rm", "--runtime", RUNTIME];
    args.extend_from_slice(rest);
    args.push(image);
    args.push(id);
    args
}

/// `ctr run` of a looping module, killed with `ctr task kill KILL_ARGS`
/// once running; what that `ctr run` ended with.
fn run_and_kill(
    daemon: &Containerd,
    image: &str,
    id: &str,
    kill_args: &[&str],
    limit: Duration,
) -> Run {
    let mut args = run_args(image, id, &[]);
    args.extend(["/hello.wasm", "loop"]);
    let mut looping = daemon
        .command(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr run");
    let deadline = Instant::now() + limit;
    while daemon.task_status(id) != "RUNNING" {
        if Instant::now() > deadline || matches!(looping.try_wait(), Ok(Some(_))) {
            let _ = looping.kill();
            let run = finish(looping.wait_with_output().expect("output"), Instant::now());
            panic!("{id} never ran: {run}\n{}", daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed_at = Instant::now();
    let mut kill = vec!["task", "kill"];
    kill.extend_from_slice(kill_args);
    kill.push(id);
    let run = daemon.ctr(&kill);
    assert_eq!(run.status, 0, "{run}");
    while matches!(looping.try_wait(), Ok(None)) {
        if killed_at.elapsed() > Duration::from_secs(20) {
            let _ = looping.kill();
            panic!("ctr run of {id} still running 20 s after the kill");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    finish(looping.wait_with_output().expect("output"), killed_at)
}

#[test]
fn wasm_images_run_under_containerd_with_the_vmfork_shim() {
    let scratch = Scratch::new("containerd");
    let state = scratch.path("shim-state");
    let module = compile_module(&scratch);
    let daemon = Containerd::start(&scratch, &state, NAMESPACE, CONFIG);
    let limit = Duration::from_secs(60);

    let image = "docker.io/vmfork/hello:latest";
    import(
        &daemon,
        &scratch,
        "hello.tar",
        &oci_archive(image, &[("hello.wasm", &module)], &["/hello.wasm"]),
    );

    // The image's entrypoint alone.
    let run = daemon.ctr_within(&run_args(image, "plain-1", &[]), limit);
    assert_eq!(run.status, 0, "{run}\n{}", daemon.log_text());
    assert_eq!(
        run.stdout, "hello from wasm argv0=/hello.wasm\nGREETING=(unset)\n",
        "{run}"
    );

    // The module's stdout and stderr reach ctr, with its args and env.
    // (ctr's ARGS replace all of process.args, the entrypoint included.)
    let mut args = run_args(image, "hello-1", &["--env", "GREETING=hi"]);
    args.extend(["/hello.wasm", "a", "b"]);
    let run = daemon.ctr_within(&args, limit);
    assert_eq!(run.status, 0, "{run}\n{}", daemon.log_text());
    assert!(
        run.stdout
            .contains("hello from wasm argv0=/hello.wasm a b\nGREETING=hi\n"),
        "{run}"
    );
    assert!(run.stderr.contains("a line on stderr"), "{run}");
    assert!(!run.stdout.contains("clone 1:"), "{run}");

    // The module's exit status is ctr's.
    let mut args = run_args(image, "exit-1", &[]);
    args.extend(["/hello.wasm", "exit"]);
    let run = daemon.ctr_within(&args, limit);
    assert_eq!(run.status, 3, "{run}\n{}", daemon.log_text());
    assert!(run.stderr.contains("exiting 3 on purpose"), "{run}");

    // `ctr task kill` stops a module that would spin for ever: SIGTERM
    // (ctr's default) and SIGKILL, each reported as that signal.
    for (id, kill_args, status) in [
        ("loop-1", &[][..], 128 + libc::SIGTERM),
        ("loop-2", &["-s", "SIGKILL"][..], 128 + libc::SIGKILL),
    ] {
        let run = run_and_kill(&daemon, image, id, kill_args, limit);
        assert_eq!(run.status, status, "{id}: {run}");
        assert_eq!(daemon.task_status(id), "", "task {id} left behind");
    }

    // ctr's stdin is the module's.
    let mut args = run_args(image, "cat-1", &[]);
    args.extend(["/hello.wasm", "cat"]);
    let start = Instant::now();
    let mut cat = daemon
        .command(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ctr run");
    let text = "line one\nline two\n".repeat(1000);
    if let Some(mut stdin) = cat.stdin.take() {
        stdin.write_all(text.as_bytes()).expect("write ctr's stdin");
    }
    while matches!(cat.try_wait(), Ok(None)) {
        if start.elapsed() > limit {
            let _ = cat.kill();
            panic!("ctr run of cat-1 hung\n{}", daemon.log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = finish(cat.wait_with_output().expect("output"), start);
    assert_eq!(run.status, 0, "{run}");
    assert!(run.stdout == text, "stdin did not come back: {run}");

    // An entrypoint that is not Wasm makes a Linux image, which needs the
    // guest kernel: none is configured here, and create says so.
    let not_wasm = "notwasm.example/text:latest";
    import(
        &daemon,
        &scratch,
        "text.tar",
        &oci_archive(
            not_wasm,
            &[("readme.txt", b"not a module\n")],
            &["/readme.txt"],
        ),
    );
    let run = daemon.ctr_within(&run_args(not_wasm, "text-1", &[]), limit);
    assert_ne!(run.status, 0, "{run}");
    assert!(
        run.stderr.contains("a Linux image needs the guest kernel")
            && run.stderr.contains("VMFORK_SHIM_KERNEL"),
        "{run}"
    );

    // An image with no entrypoint and no args names no module.
    let empty = "docker.io/vmfork/no-entrypoint:latest";
    import(
        &daemon,
        &scratch,
        "empty.tar",
        &oci_archive(empty, &[("hello.wasm", &module)], &[]),
    );
    let run = daemon.ctr_within(&run_args(empty, "empty-1", &[]), limit);
    assert_ne!(run.status, 0, "{run}");
    assert!(run.stderr.contains("process.args[0]"), "{run}");

    // A module vmfork refuses (an import the Wasm guest lacks): the build
    // fails at create with vmfork's reason, and nothing enters the cache.
    let bad_module: &[u8] = &[
        0, b'a', b's', b'm', 1, 0, 0, 0, // magic, version
        1, 4, 1, 0x60, 0, 0, // type section: () -> ()
        2, 19, 1, 3, b'e', b'n', b'v', 11, b'h', b'o', b's', b't', b'_', b's', b'e', b'c', b'r',
        b'e', b't', 0, 0, // import section: env::host_secret, a function of type 0
    ];
    let bad = "docker.io/vmfork/bad-import:latest";
    import(
        &daemon,
        &scratch,
        "bad.tar",
        &oci_archive(bad, &[("bad.wasm", bad_module)], &["/bad.wasm"]),
    );
    let run = daemon.ctr_within(&run_args(bad, "bad-1", &[]), limit);
    assert_ne!(run.status, 0, "{run}");
    assert!(
        run.stderr.contains("vmfork template build --wasm") && run.stderr.contains("host_secret"),
        "{run}"
    );

    // Two creates of a new module at once: both run, and the cache gets
    // one template of it (the second build, if any, is dropped).
    let mut other_module = module.clone();
    other_module.extend_from_slice(&[0, 5, 4, b'n', b'o', b't', b'e']); // a custom section
    let other = "docker.io/vmfork/other:latest";
    import(
        &daemon,
        &scratch,
        "other.tar",
        &oci_archive(other, &[("hello.wasm", &other_module)], &["/hello.wasm"]),
    );
    let start = Instant::now();
    let racers: Vec<Child> = ["race-1", "race-2"]
        .iter()
        .map(|id| {
            daemon
                .command(&run_args(other, id, &[]))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn ctr run")
        })
        .collect();
    for mut racer in racers {
        while matches!(racer.try_wait(), Ok(None)) {
            if start.elapsed() > limit {
                let _ = racer.kill();
                panic!("a concurrent ctr run hung\n{}", daemon.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let run = finish(racer.wait_with_output().expect("output"), start);
        assert_eq!(run.status, 0, "{run}\n{}", daemon.log_text());
        assert!(run.stdout.starts_with("hello from wasm"), "{run}");
    }

    // One template per module, each built (renamed into place) once,
    // whatever the number of runs.
    let mut templates: Vec<String> = std::fs::read_dir(state.join("templates"))
        .expect("template cache")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    templates.sort();
    let mut expected = vec![sha256_hex(&module), sha256_hex(&other_module)];
    expected.sort();
    assert_eq!(templates, expected);
    let builds = std::fs::read_to_string(state.join("builds.log")).expect("builds.log");
    assert_eq!(builds.lines().count(), 2, "{builds}");
    for sha in &expected {
        assert_eq!(
            builds.lines().filter(|l| l.contains(sha.as_str())).count(),
            1,
            "{builds}"
        );
    }
    let tmp = std::fs::read_dir(state.join("tmp")).map_or(0, |d| d.count());
    assert_eq!(
        tmp,
        0,
        "build directories left in {}",
        state.join("tmp").display()
    );
}
