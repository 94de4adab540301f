//! Templates and clones of the Linux guest (our 6.12 kernel, the DAX
//! rootfs and its agent), and commands run in clones through the exec
//! protocol. They need hardware virtualization: scripts/test-svm.sh runs
//! them in the SVM rig. On this PVM host a Linux template build ends at
//! the kernel's first XSAVE, with exit status 11 and the clear message.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vmfork_tests::{assert_clean_error, exit, guest_artifact, host_is_pvm, vmfork, Run, Scratch};

/// Builds a Linux template in `scratch`; None on PVM, where the build's
/// clean exit-11 failure is what is checked instead.
fn linux_template(scratch: &Scratch) -> Option<String> {
    linux_template_on(scratch, &guest_artifact("rootfs", "rootfs"))
}

fn linux_template_on(scratch: &Scratch, rootfs: &std::path::Path) -> Option<String> {
    let kernel = guest_artifact("linux", "vmlinux");
    let out = scratch.str("tpl");
    let run = vmfork(&[
        "template",
        "build",
        "--kernel",
        &kernel.to_string_lossy(),
        "--rootfs",
        &rootfs.to_string_lossy(),
        "--mem",
        "256M",
        "--timeout",
        "120",
        "--quiet",
        "--out",
        &out,
    ]);
    if host_is_pvm() {
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
        assert!(run.stderr.contains("VMX/SVM"), "{run}");
        return None;
    }
    assert_eq!(run.status, 0, "{run}");
    Some(out)
}

/// Each clone's stdout lines, by clone id, from `clone N: line` output.
fn by_clone(run: &Run) -> BTreeMap<u64, Vec<String>> {
    let mut lines: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in run.stdout.lines() {
        let (id, rest) = line
            .strip_prefix("clone ")
            .and_then(|l| l.split_once(": "))
            .unwrap_or_else(|| panic!("unprefixed output line {line:?}: {run}"));
        let id = id.parse().unwrap_or_else(|_| panic!("bad id in {line:?}"));
        lines.entry(id).or_default().push(rest.to_string());
    }
    lines
}

fn now_us() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i128)
}

/// The acceptance test: 20 clones each print 16 bytes of
/// /dev/urandom, their clone id and their clock through `vmfork clone
/// -- CMD`; the bytes and ids are all distinct and every clock is within
/// 50 ms of the host's while the clones ran.
#[test]
fn twenty_clones_run_a_command_and_are_unique_and_on_time() {
    let scratch = Scratch::new("linux-clones");
    let Some(tpl) = linux_template(&scratch) else {
        return;
    };
    let script = "echo rand=$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \\n'); \
                  echo id=$(cat /run/vmfork/clone-id); \
                  touch /tmp/now; echo clock=$(stat -c '%Y %y' /tmp/now)";
    let before = now_us();
    let run = vmfork(&["clone", &tpl, "-n", "20", "--", "sh", "-c", script]);
    let after = now_us();
    assert_eq!(run.status, 0, "{run}");
    let clones = by_clone(&run);
    assert_eq!(clones.len(), 20, "{run}");
    let (mut randoms, mut ids) = (HashSet::new(), HashSet::new());
    for (id, lines) in &clones {
        let get = |key: &str| {
            lines
                .iter()
                .find_map(|l| l.strip_prefix(key))
                .unwrap_or_else(|| panic!("clone {id}: no {key} line in {lines:?}"))
                .trim()
                .to_string()
        };
        let rand = get("rand=");
        assert_eq!(rand.len(), 32, "clone {id}: {rand}");
        randoms.insert(rand);
        let own: u64 = get("id=").parse().expect("numeric clone id");
        assert_eq!(own, *id, "the clone id file names the clone");
        ids.insert(own);
        // `%Y %y`: seconds, then "date hh:mm:ss.nnnnnnnnn zone" (the
        // mtime of a file just touched: the guest's clock, to its tick).
        let clock = get("clock=");
        let words: Vec<&str> = clock.split_whitespace().collect();
        assert_eq!(words.len(), 4, "clone {id}: {clock:?}");
        let secs: i128 = words[0].parse().expect("seconds");
        let frac = words[2].split_once('.').map_or("0", |(_, f)| f);
        let micros: i128 = format!("{frac:0<6}")[..6].parse().expect("fraction");
        let guest = secs * 1_000_000 + micros;
        assert!(
            guest >= before - 50_000 && guest <= after + 50_000,
            "clone {id}: clock {guest} us is not within 50 ms of the host's run [{before}, {after}]"
        );
    }
    assert_eq!(randoms.len(), 20, "urandom repeats across clones: {run}");
    assert_eq!(ids.len(), 20);
}

/// A file a clone writes in its tmpfs stays its own: every clone writes
/// one named after itself, waits long enough for its neighbours (started
/// one at a time, each after the previous resumed) to have written
/// theirs, and lists /tmp.
#[test]
fn a_clones_tmpfs_is_its_own() {
    let scratch = Scratch::new("linux-tmpfs");
    let Some(tpl) = linux_template(&scratch) else {
        return;
    };
    let script = "touch /tmp/from-$(cat /run/vmfork/clone-id); sleep 3; ls /tmp";
    let run = vmfork(&["clone", &tpl, "-n", "3", "--", "sh", "-c", script]);
    assert_eq!(run.status, 0, "{run}");
    let clones = by_clone(&run);
    assert_eq!(clones.len(), 3, "{run}");
    for (id, lines) in clones {
        let files: Vec<&String> = lines.iter().filter(|l| l.starts_with("from-")).collect();
        assert_eq!(files, [&format!("from-{id}")], "clone {id} sees {lines:?}");
    }
}

/// Exit statuses, stderr, stdin, environment and working directory go
/// through the protocol; a failing command's status becomes vmfork's, and
/// a program that does not exist is reported, not hung on.
#[test]
fn exec_carries_status_streams_stdin_env_and_cwd() {
    let scratch = Scratch::new("linux-exec");
    let Some(tpl) = linux_template(&scratch) else {
        return;
    };
    let input = scratch.path("stdin");
    std::fs::write(&input, "from the host\n").expect("stdin file");
    let run = vmfork(&[
        "clone",
        &tpl,
        "--env",
        "GREETING=hello",
        "--cwd",
        "/proc",
        "--stdin",
        &input.to_string_lossy(),
        "--",
        "sh",
        "-c",
        "echo $GREETING $(pwd); cat; echo oops >&2; exit 3",
    ]);
    assert_eq!(run.status, 3, "{run}");
    assert!(run.stdout.contains("clone 1: hello /proc"), "{run}");
    assert!(run.stdout.contains("clone 1: from the host"), "{run}");
    assert!(run.stderr.contains("clone 1: oops"), "{run}");
    assert!(run.stderr.contains("exited with status 3"), "{run}");

    let run = vmfork(&["clone", &tpl, "--", "/no/such/program"]);
    assert_eq!(run.status, 127, "{run}");
    assert!(run.stderr.contains("could not start"), "{run}");

    let run = vmfork(&["clone", &tpl, "--exec-timeout", "1", "--", "sleep", "30"]);
    assert_eq!(run.status, 124, "{run}");
    assert!(run.stderr.contains("timed out"), "{run}");
    assert!(run.elapsed < Duration::from_secs(25), "{run}");
}

/// SIGTERM while the clones run a command stops them at once: vmfork
/// exits 128 + 15 with one line, without waiting for the command or its
/// --exec-timeout, and without a line per clone.
#[test]
fn a_stop_signal_while_clones_run_a_command_stops_them() {
    let scratch = Scratch::new("linux-interrupt");
    let Some(tpl) = linux_template(&scratch) else {
        return;
    };
    // The progress line for the last clone is the event: both clones are
    // up, and each was handed its command before it resumed.
    let run = vmfork_tests::sigterm_after_line(
        &[
            "clone",
            &tpl,
            "-n",
            "2",
            "--exec-timeout",
            "600",
            "--",
            "sleep",
            "600",
        ],
        &[],
        "2/2",
    );
    let seen = &run.stderr;
    assert_eq!(run.status, Some(128 + libc::SIGTERM), "{seen}");
    assert!(
        seen.contains("vmfork: interrupted by SIGTERM; stopped 2 of 2 clones"),
        "{seen}"
    );
    assert!(
        !seen.contains("clone 1:") && !seen.contains("clone 2:"),
        "{seen}"
    );
    // Far inside the command's own deadline; under TCG a stop takes a few
    // seconds at most.
    assert!(
        run.after_signal < Duration::from_secs(60),
        "took {:?}: {seen}",
        run.after_signal
    );
}

/// A Linux template is bound to its rootfs image and to its own files: a
/// changed image and a truncated `state` are both refused with one line,
/// before any VM runs.
#[test]
fn a_changed_rootfs_or_truncated_state_is_refused() {
    let scratch = Scratch::new("linux-refuse");
    let image = scratch.path("rootfs.ext4");
    std::fs::copy(guest_artifact("rootfs", "rootfs"), &image).expect("copy rootfs");
    let Some(tpl) = linux_template_on(&scratch, &image) else {
        return;
    };
    let run = vmfork(&["clone", &tpl, "--", "true"]);
    assert_eq!(run.status, 0, "{run}");
    // A truncated state file, then the same file whole again.
    let state = std::path::Path::new(&tpl).join("state");
    let bytes = std::fs::read(&state).expect("state");
    std::fs::write(&state, &bytes[..bytes.len() / 2]).expect("truncate state");
    let run = vmfork(&["clone", &tpl, "--", "true"]);
    assert_clean_error(&run, exit::TEMPLATE, "state");
    std::fs::write(&state, &bytes).expect("restore state");
    let run = vmfork(&["clone", &tpl, "--", "true"]);
    assert_eq!(run.status, 0, "{run}");
    // Same bytes, new inode: a replaced image is a different one.
    let copy = scratch.path("copy.ext4");
    std::fs::copy(&image, &copy).expect("copy");
    std::fs::rename(&copy, &image).expect("replace");
    for args in [vec!["restore", &tpl], vec!["clone", &tpl, "--", "true"]] {
        let run = vmfork(&args);
        assert_clean_error(&run, exit::ROOTFS_CHANGED, "rootfs");
    }
}

/// Every clone backend, with and without VM shells, starts Linux clones
/// that run a command and know their id; the rootfs slot is shared, so a
/// clone's private memory stays far below the image's size.
#[test]
fn every_backend_with_and_without_shells_runs_linux_clones() {
    let scratch = Scratch::new("linux-backends");
    let Some(tpl) = linux_template(&scratch) else {
        return;
    };
    for backend in ["memfd", "file", "uffd"] {
        for shells in [false, true] {
            let mut args = vec!["clone", &tpl, "-n", "2", "--backend", backend, "--json"];
            if shells {
                args.push("--shells");
            }
            args.extend(["--", "cat", "/run/vmfork/clone-id"]);
            let run = vmfork(&args);
            assert_eq!(run.status, 0, "{backend} shells={shells}: {run}");
            let ids: Vec<&str> = run
                .stdout
                .lines()
                .filter(|l| l.starts_with("clone "))
                .collect();
            assert_eq!(
                ids,
                ["clone 1: 1", "clone 2: 2"],
                "{backend} shells={shells}: {run}"
            );
            let json = run.json();
            let private = json["private_kib_per_clone"].as_u64().expect("private_kib");
            assert!(
                private < 16 << 10,
                "{backend}: {private} KiB private per clone"
            );
        }
    }
}
