//! Templates on real VMs: build, restore (twice), snapshot a restored VM,
//! diff snapshots, and every way a damaged template must be refused.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmfork_tests::{
    assert_clean_error, exit, field, vmfork, vmfork_bin, vmfork_within, Run, Scratch,
};

fn build(scratch: &Scratch, name: &str, cmdline: &str) -> Run {
    let out = scratch.str(name);
    let run = vmfork(&[
        "template",
        "build",
        "--cmdline",
        cmdline,
        "--mem",
        "64M",
        "--out",
        &out,
        "--json",
        "--timeout",
        "30",
    ]);
    assert_eq!(run.status, 0, "{run}");
    run
}

fn pong_line(run: &Run) -> String {
    run.stdout
        .lines()
        .find(|l| l.contains("vmfork-guest: pong"))
        .unwrap_or_else(|| panic!("no pong line: {run}"))
        .to_string()
}

fn restore(dir: &str) -> Run {
    vmfork(&[
        "restore",
        dir,
        "--exit-on-ready",
        "--json",
        "--timeout",
        "30",
    ])
}

/// The guest continued: no new boot banner, the boot nonce from before the
/// snapshot, and an acknowledgement measured as restore_us.
fn assert_continued(run: &Run, nonce: &str) -> String {
    assert_eq!(run.status, 0, "{run}");
    assert!(
        !run.stdout.contains("vmfork-guest: boot"),
        "the guest rebooted: {run}"
    );
    let pong = pong_line(run);
    assert_eq!(field(&pong, "boot_nonce"), nonce, "{run}");
    let json = run.json();
    assert!(json["restore_us"].as_u64().is_some(), "{run}");
    assert_eq!(json["dirty_logging"], false, "{run}");
    pong
}

fn boot_nonce(build: &Run) -> String {
    let init = build
        .stdout
        .lines()
        .find(|l| l.contains("vmfork-guest: init"))
        .unwrap_or_else(|| panic!("no init line: {build}"));
    field(init, "boot_nonce").to_string()
}

#[test]
fn build_then_restore_round_trip_and_twice() {
    let scratch = Scratch::new("roundtrip");
    let built = build(&scratch, "t", "touch_mib=4");
    let json = built.json();
    assert!(
        json["state_bytes"].as_u64().is_some_and(|b| b > 0),
        "{built}"
    );
    assert_eq!(json["memory_bytes"].as_u64(), Some(64 << 20), "{built}");
    assert!(
        json["memory_on_disk_bytes"].as_u64().unwrap_or(u64::MAX) < (32 << 20),
        "zero pages should be holes: {built}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scratch.path("t/template.json")).expect("manifest"))
            .expect("manifest json");
    for key in [
        "format_version",
        "vcpus",
        "mem_size",
        "memory_regions",
        "kernel",
        "host",
        "created_unix_ms",
    ] {
        assert!(!manifest[key].is_null(), "manifest lacks {key}: {manifest}");
    }
    let nonce = boot_nonce(&built);
    let first = assert_continued(&restore(&scratch.str("t")), &nonce);
    let second = assert_continued(&restore(&scratch.str("t")), &nonce);
    assert_eq!(
        field(&first, "n"),
        field(&second, "n"),
        "same template, same state"
    );
}

struct LiveVm {
    child: Child,
    socket: String,
}

impl LiveVm {
    fn restore(template: &str, socket: String) -> LiveVm {
        let mut child = Command::new(vmfork_bin())
            .args(["restore", template, "--api-sock", &socket, "--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn restore");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !std::path::Path::new(&socket).exists() {
            assert!(Instant::now() < deadline, "api socket never appeared");
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(e) = child.stderr.take() {
                    let _ = BufReader::new(e).read_line(&mut err);
                }
                panic!("restore exited with {status}: {err}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        LiveVm { child, socket }
    }

    fn ctl(&self, args: &[&str]) -> Run {
        let mut full = vec!["ctl", self.socket.as_str()];
        full.extend_from_slice(args);
        vmfork(&full)
    }

    fn stop(mut self) {
        let run = self.ctl(&["stop"]);
        assert_eq!(run.status, 0, "{run}");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "restore exited with {status}");
    }
}

#[test]
fn snapshot_of_a_restored_vm_restores() {
    let scratch = Scratch::new("resnap");
    let built = build(&scratch, "t", "touch_mib=2");
    let nonce = boot_nonce(&built);
    let vm = LiveVm::restore(&scratch.str("t"), scratch.str("api.sock"));
    let run = vm.ctl(&["ping"]);
    assert_eq!(run.status, 0, "{run}");
    let run = vm.ctl(&["snapshot", "--out", &scratch.str("t2")]);
    assert_eq!(run.status, 0, "{run}");
    vm.stop();
    // Restored once (n=1), pinged (n=2), then snapshotted: the restore of
    // the second template continues from there.
    let pong = assert_continued(&restore(&scratch.str("t2")), &nonce);
    assert_eq!(field(&pong, "n"), "3", "{pong}");
}

#[test]
fn diff_snapshot_plus_base_equals_full_snapshot() {
    let scratch = Scratch::new("diff");
    let built = build(&scratch, "base", "touch_mib=8");
    let nonce = boot_nonce(&built);
    let vm = LiveVm::restore(&scratch.str("base"), scratch.str("api.sock"));
    assert_eq!(vm.ctl(&["ping"]).status, 0);
    assert_eq!(vm.ctl(&["pause"]).status, 0);
    let diff = vm.ctl(&["snapshot", "--diff", "--out", &scratch.str("d")]);
    assert_eq!(diff.status, 0, "{diff}");
    let full = vm.ctl(&["snapshot", "--out", &scratch.str("f")]);
    assert_eq!(full.status, 0, "{full}");
    assert_eq!(vm.ctl(&["resume"]).status, 0);
    vm.stop();

    let diff_json: serde_json::Value = serde_json::from_str(diff.stdout.trim()).expect("json");
    let full_json: serde_json::Value = serde_json::from_str(full.stdout.trim()).expect("json");
    let dirty = diff_json["dirty_pages"].as_u64().expect("dirty_pages");
    assert!(
        dirty > 0 && dirty < 256,
        "a ping dirties a few pages, not {dirty}"
    );
    assert!(
        diff_json["memory_written_bytes"].as_u64() < full_json["memory_written_bytes"].as_u64(),
        "{diff_json} vs {full_json}"
    );
    // Byte for byte, base + diff is the full snapshot's memory.
    let flat = scratch.str("d.flat");
    let run = vmfork(&["template", "flatten", &scratch.str("d"), "--out", &flat]);
    assert_eq!(run.status, 0, "{run}");
    let flat_bytes = std::fs::read(&flat).expect("flat");
    let full_bytes = std::fs::read(scratch.path("f/memory")).expect("full memory");
    assert!(
        flat_bytes == full_bytes,
        "diff+base memory differs from the full snapshot's"
    );
    // And both resume to the same guest state.
    // Every field carried in guest memory matches; `random` and
    // `host_time_ms` are fresh on each restore by design, and `ticks` is
    // left out: with a timer (`timer_hz=N`) it may gain one while the pong
    // line prints.
    let from_diff = assert_continued(&restore(&scratch.str("d")), &nonce);
    let from_full = assert_continued(&restore(&scratch.str("f")), &nonce);
    for key in ["n", "boot_nonce", "checksum", "clone"] {
        assert_eq!(
            field(&from_diff, key),
            field(&from_full, key),
            "{key}: {from_diff} vs {from_full}"
        );
    }
}

fn corrupt_copy(scratch: &Scratch, edit: impl FnOnce(&std::path::Path)) -> String {
    let src = scratch.path("t");
    let dst = scratch.path(&format!("bad{}", std::process::id() ^ rand_suffix()));
    std::fs::create_dir(&dst).expect("mkdir");
    for f in ["template.json", "state", "memory"] {
        std::fs::copy(src.join(f), dst.join(f)).expect("copy");
    }
    edit(&dst);
    dst.to_string_lossy().into_owned()
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

#[test]
fn damaged_templates_are_refused_clearly() {
    let scratch = Scratch::new("corrupt");
    build(&scratch, "t", "touch_mib=1");
    let state_len = std::fs::metadata(scratch.path("t/state"))
        .expect("state")
        .len() as usize;

    // A flipped bit anywhere in the payload: checksum error.
    let dir = corrupt_copy(&scratch, |d| {
        let mut s = std::fs::read(d.join("state")).expect("read");
        s[state_len / 2] ^= 0x10;
        std::fs::write(d.join("state"), s).expect("write");
    });
    assert_clean_error(&restore(&dir), exit::TEMPLATE, "checksum");

    // A truncated memory file: refused before it is mapped or copied, by
    // every way a template's memory is used (a mapping of it would raise
    // SIGBUS past the end).
    let dir = corrupt_copy(&scratch, |d| {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("memory"))
            .expect("open");
        f.set_len(4096 * 10).expect("truncate");
    });
    assert_clean_error(&restore(&dir), exit::TEMPLATE, "truncated");
    for backend in ["file", "memfd", "uffd"] {
        let run = vmfork(&["clone", &dir, "-n", "1", "--backend", backend]);
        assert_clean_error(&run, exit::TEMPLATE, "truncated");
    }

    // A wrong format version in the manifest names both versions.
    let dir = corrupt_copy(&scratch, |d| {
        let text = std::fs::read_to_string(d.join("template.json")).expect("read");
        let mut m: serde_json::Value = serde_json::from_str(&text).expect("json");
        m["format_version"] = serde_json::json!(999);
        std::fs::write(d.join("template.json"), m.to_string()).expect("write");
    });
    let run = restore(&dir);
    assert_clean_error(&run, exit::TEMPLATE, "999");
    assert!(run.stderr.contains("version 5"), "{run}");

    // A manifest that is consistent in itself but not with the state it
    // sits beside (here, the state file's size) is refused too.
    let dir = corrupt_copy(&scratch, |d| {
        let text = std::fs::read_to_string(d.join("template.json")).expect("read");
        let mut m: serde_json::Value = serde_json::from_str(&text).expect("json");
        m["state_bytes"] = serde_json::json!(m["state_bytes"].as_u64().unwrap_or(0) + 1);
        std::fs::write(d.join("template.json"), m.to_string()).expect("write");
    });
    assert_clean_error(&restore(&dir), exit::TEMPLATE, "state is");

    // A wrong version inside the state header, with a valid checksum (as a
    // future vmfork would write it), also names both versions.
    let dir = corrupt_copy(&scratch, |d| {
        let mut s = std::fs::read(d.join("state")).expect("read");
        s[8..12].copy_from_slice(&77u32.to_le_bytes());
        let body = s.len() - 8;
        let crc = crc64fast_nvme::Digest::new();
        let mut crc = crc;
        crc.write(&s[..body]);
        let sum = crc.sum64().to_le_bytes();
        s[body..].copy_from_slice(&sum);
        std::fs::write(d.join("state"), s).expect("write");
    });
    let run = restore(&dir);
    assert_clean_error(&run, exit::TEMPLATE, "77");

    // An oversized length field: refused at once, no huge allocation.
    let dir = corrupt_copy(&scratch, |d| {
        let mut s = std::fs::read(d.join("state")).expect("read");
        s[20..28].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        std::fs::write(d.join("state"), s).expect("write");
    });
    let run = restore(&dir);
    assert_clean_error(&run, exit::TEMPLATE, "limit");
    assert!(run.elapsed < Duration::from_secs(5), "{run}");

    // Not a template at all.
    let run = restore(&scratch.str("nothing-here"));
    assert_clean_error(&run, exit::TEMPLATE, "nothing-here");
}

fn mkfifo(path: &std::path::Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

#[test]
fn symlinked_and_fifo_template_files_are_refused_at_once() {
    let scratch = Scratch::new("special");
    build(&scratch, "t", "touch_mib=1");
    let limit = Duration::from_secs(20);
    for file in ["state", "memory", "template.json"] {
        // A symlink to the very file it replaces: refused all the same,
        // since a template file is opened only as itself.
        let dir = corrupt_copy(&scratch, |d| {
            std::fs::remove_file(d.join(file)).expect("rm");
            std::os::unix::fs::symlink(scratch.path("t").join(file), d.join(file))
                .expect("symlink");
        });
        let run = vmfork_within(&["restore", &dir, "--exit-on-ready"], &[], limit);
        assert_clean_error(&run, exit::TEMPLATE, "symbolic link");
        // A FIFO nobody writes: opening it for reading would wait forever.
        let dir = corrupt_copy(&scratch, |d| {
            std::fs::remove_file(d.join(file)).expect("rm");
            mkfifo(&d.join(file));
        });
        for args in [
            vec!["restore", &dir, "--exit-on-ready"],
            vec!["clone", &dir, "-n", "1"],
        ] {
            let run = vmfork_within(&args, &[], limit);
            assert_clean_error(
                &run,
                exit::TEMPLATE,
                &format!("{file} is not a regular file"),
            );
            assert!(run.elapsed < Duration::from_secs(5), "{run}");
        }
    }
}

#[test]
fn a_diff_is_refused_against_any_base_but_its_own() {
    let scratch = Scratch::new("diff-base");
    build(&scratch, "base", "touch_mib=2");
    let vm = LiveVm::restore(&scratch.str("base"), scratch.str("api.sock"));
    assert_eq!(vm.ctl(&["ping"]).status, 0);
    assert_eq!(vm.ctl(&["pause"]).status, 0);
    let diff = vm.ctl(&["snapshot", "--diff", "--out", &scratch.str("d")]);
    assert_eq!(diff.status, 0, "{diff}");
    assert_eq!(vm.ctl(&["resume"]).status, 0);
    vm.stop();
    let run = restore(&scratch.str("d"));
    assert_eq!(run.status, 0, "the diff on its own base: {run}");
    let manifest = |dir: &str| -> serde_json::Value {
        let text = std::fs::read(scratch.path(dir).join("template.json")).expect("manifest");
        serde_json::from_slice(&text).expect("json")
    };
    let recorded = manifest("d")["base_sha256"]
        .as_str()
        .expect("base_sha256")
        .to_string();
    assert_eq!(recorded.len(), 64, "{recorded}");

    // Another template named as the base (the path is only a hint).
    build(&scratch, "other", "touch_mib=2");
    let dir = scratch.path("d-elsewhere");
    std::fs::create_dir(&dir).expect("mkdir");
    for f in ["state", "memory"] {
        std::fs::copy(scratch.path("d").join(f), dir.join(f)).expect("copy");
    }
    let mut m = manifest("d");
    m["base"] = serde_json::json!(scratch.str("other"));
    std::fs::write(dir.join("template.json"), m.to_string()).expect("write");
    let run = restore(&dir.to_string_lossy());
    assert_clean_error(&run, exit::TEMPLATE, "not the template it was made from");

    // The base rebuilt at its own path: same command line, same size, a
    // different build; the diff's pages on it would be a VM that never was.
    std::fs::remove_dir_all(scratch.path("base")).expect("rm base");
    build(&scratch, "base", "touch_mib=2");
    let run = restore(&scratch.str("d"));
    assert_clean_error(&run, exit::TEMPLATE, "rebuilt or replaced");
    assert!(run.stderr.contains(&recorded[..12]), "{run}");
    let run = vmfork(&["clone", &scratch.str("d"), "-n", "1"]);
    assert_clean_error(&run, exit::TEMPLATE, "rebuilt or replaced");
}

#[test]
fn killed_template_build_leaves_nothing_loadable() {
    let scratch = Scratch::new("killed");
    let out = scratch.str("t");
    // A 1 GiB touched heap makes the memory write long enough to kill it
    // part-way.
    let mut child = Command::new(vmfork_bin())
        .args([
            "template",
            "build",
            "--mem",
            "1200M",
            "--cmdline",
            "touch_mib=1024",
            "--out",
            &out,
            "--timeout",
            "60",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn build");
    let stdout = child.stdout.take().expect("stdout");
    for line in BufReader::new(stdout).lines() {
        if line.expect("line").contains("vmfork-guest: READY") {
            break;
        }
    }
    // Kill it while it writes the memory file: once the hidden partial
    // directory's `memory` has blocks on disk and its `state` (written
    // after the memory) does not exist yet.
    use std::os::unix::fs::MetadataExt;
    let partial = scratch.path(&format!(".t.partial-{}", child.id()));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let memory_blocks = std::fs::metadata(partial.join("memory")).map_or(0, |m| m.blocks());
        if memory_blocks > 0 {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the build ended ({status}) before it was seen writing memory");
        }
        assert!(
            Instant::now() < deadline,
            "{} never got memory written",
            partial.display()
        );
        std::thread::yield_now();
    }
    child.kill().expect("kill");
    let _ = child.wait();
    assert!(
        !partial.join("state").exists(),
        "the build wrote its state before it was killed: not killed part-way"
    );
    assert!(
        !scratch.path("t").exists(),
        "a killed build must not leave the target"
    );
    assert_clean_error(&restore(&out), exit::TEMPLATE, "t");
    // The partial directory a SIGKILL leaves behind is not loadable either.
    let left: Vec<_> = std::fs::read_dir(&scratch.0)
        .expect("ls")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(left, vec![partial.clone()], "what the killed build left");
    for path in left {
        let run = restore(&path.to_string_lossy());
        assert_eq!(run.status, exit::TEMPLATE, "{run}");
    }
}
