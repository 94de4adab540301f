//! VMFork clones on real VMs: each clone is alive, unique and on the
//! host's clock, clone memory is a sealed template, and nothing leaks.

use vmfork_tests::{build_template, field, pongs, vmfork, Scratch};

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn template(scratch: &Scratch, cmdline: &str) -> String {
    build_template(&scratch.str("t"), "64M", cmdline)
}

/// With the guest's timer on (100 Hz) and off (its default): a template
/// with no LAPIC timer armed gets its clones' vCPU state restored ahead,
/// into the warm shell (clone/mod.rs, `prepare`).
#[test]
fn clones_are_unique_and_on_the_hosts_clock() {
    clones_are_unique_and_on_the_hosts_clock_with("touch_mib=2 timer_hz=100", false);
    clones_are_unique_and_on_the_hosts_clock_with("touch_mib=2", true);
}

fn clones_are_unique_and_on_the_hosts_clock_with(cmdline: &str, restored_ahead: bool) {
    let scratch = Scratch::new("unique");
    let dir = template(&scratch, cmdline);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(scratch.path("t/template.json")).expect("manifest"))
            .expect("json");
    let created_ms = manifest["created_unix_ms"]
        .as_u64()
        .expect("created_unix_ms");
    // The clones' clocks must be strictly after the template's creation:
    // wait until the host's clock has passed it, rather than for a while.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while now_unix_ms() <= created_ms {
        assert!(
            std::time::Instant::now() < deadline,
            "the host clock is behind the template's creation time {created_ms}"
        );
        std::thread::yield_now();
    }

    // Warm shells (--shells) ran a throwaway clone each before they were
    // reset in place: their clones must see none of it, so they print
    // what clones in fresh VMs print (the same `n`, counted in guest
    // memory), with ids and random numbers of their own.
    let mut pings = Vec::new();
    let mut run = None;
    for shells in [false, true] {
        let mut args = vec!["clone", &dir, "-n", "2", "--console", "--json"];
        if shells {
            args.push("--shells");
        }
        let this = vmfork(&args);
        assert_eq!(this.status, 0, "{this}");
        let lines = pongs(&this);
        assert_eq!(lines.len(), 2, "{this}");
        let ahead = if shells && restored_ahead { 2 } else { 0 };
        assert_eq!(this.json()["vcpus_restored_ahead"], ahead, "{this}");
        let (a, b) = (&lines[0], &lines[1]);
        assert_ne!(
            field(a, "clone"),
            field(b, "clone"),
            "ids must differ: {this}"
        );
        assert_ne!(
            field(a, "random"),
            field(b, "random"),
            "random numbers must differ: {this}"
        );
        // Same template: same boot, same application state.
        assert_eq!(field(a, "boot_nonce"), field(b, "boot_nonce"));
        assert_eq!(field(a, "checksum"), field(b, "checksum"));
        for line in [a, b] {
            let now: u64 = field(line, "host_time_ms").parse().expect("host_time_ms");
            assert!(
                now > created_ms,
                "clone clock {now} not after template creation {created_ms}"
            );
            pings.push(field(line, "n").to_string());
        }
        run = Some(this);
    }
    assert!(
        pings.windows(2).all(|w| w[0] == w[1]),
        "a clone saw guest memory of an earlier one: n = {pings:?}"
    );
    let run = run.expect("ran");
    let json = run.json();
    assert_eq!(json["clones"], 2);
    // F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
    assert_eq!(json["memfd_seals"], 15, "{run}");
}

#[test]
fn every_backend_with_and_without_shells_starts_live_clones_and_cleans_up() {
    let scratch = Scratch::new("backends");
    let dir = template(&scratch, "quiet=1 touch_mib=4");
    for backend in ["memfd", "file", "uffd"] {
        for shells in [false, true] {
            let mut args = vec![
                "clone",
                dir.as_str(),
                "-n",
                "20",
                "--backend",
                backend,
                "--floor",
                "--json",
            ];
            if shells {
                args.push("--shells");
            }
            let run = vmfork(&args);
            assert_eq!(run.status, 0, "{backend} shells={shells}: {run}");
            let json = run.json();
            assert_eq!(json["clones"], 20);
            for key in [
                "clone_p50_us",
                "clone_p99_us",
                "floor_us",
                "total_ms",
                "private_kib_per_clone",
            ] {
                assert!(json[key].as_f64().is_some(), "{key} missing: {run}");
            }
            // Every clone's fds, memfd and threads are gone afterwards.
            assert_eq!(json["fds_after"], json["fds_before"], "fd leak: {run}");
            // Untouched template pages are shared: a clone owns far less
            // than the 4 MiB heap plus code it runs on.
            let private = json["private_kib_per_clone"].as_u64().unwrap_or(u64::MAX);
            assert!(private < 1024, "{private} KiB private per clone: {run}");
        }
    }
}

/// The KVM floor costs 50 VMs, so only `--floor` measures it: without it
/// `floor_us` and `ratio_vs_floor` are null and the text line leaves it out.
#[test]
fn the_floor_is_measured_only_with_floor() {
    let scratch = Scratch::new("floor");
    let dir = template(&scratch, "quiet=1 touch_mib=1");
    let run = vmfork(&["clone", &dir, "-n", "2", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    let json = run.json();
    assert!(json["floor_us"].is_null(), "{run}");
    assert!(json["ratio_vs_floor"].is_null(), "{run}");
    assert_eq!(json["clones"], 2, "{run}");
    let run = vmfork(&["clone", &dir, "-n", "2", "--floor", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    let json = run.json();
    assert!(json["floor_us"].as_u64().is_some_and(|f| f > 0), "{run}");
    assert!(
        json["ratio_vs_floor"].as_f64().is_some_and(|r| r > 0.0),
        "{run}"
    );
    let run = vmfork(&["clone", &dir, "-n", "2"]);
    assert_eq!(run.status, 0, "{run}");
    assert!(run.stdout.contains("2 clones (memfd): p50 "), "{run}");
    assert!(!run.stdout.contains("KVM floor"), "{run}");
    let run = vmfork(&["clone", &dir, "-n", "2", "--floor"]);
    assert_eq!(run.status, 0, "{run}");
    assert!(run.stdout.contains("; KVM floor "), "{run}");
}

#[test]
fn clones_of_a_diff_template_see_the_diff() {
    let scratch = Scratch::new("clonediff");
    let dir = template(&scratch, "touch_mib=2");
    let sock = scratch.str("api.sock");
    let mut child = std::process::Command::new(vmfork_tests::vmfork_bin())
        .args(["restore", &dir, "--api-sock", &sock, "--quiet"])
        .spawn()
        .expect("restore");
    vmfork_tests::wait_for_path(&sock);
    assert_eq!(vmfork(&["ctl", &sock, "ping"]).status, 0);
    let d = scratch.str("d");
    assert_eq!(
        vmfork(&["ctl", &sock, "snapshot", "--diff", "--out", &d]).status,
        0
    );
    assert_eq!(vmfork(&["ctl", &sock, "stop"]).status, 0);
    assert!(child.wait().expect("wait").success());
    let run = vmfork(&["clone", &d, "-n", "2", "--console"]);
    assert_eq!(run.status, 0, "{run}");
    // Restored (n=1), pinged (n=2), snapshotted: clones continue at n=3.
    let lines = pongs(&run);
    assert_eq!(lines.len(), 2, "one pong per clone: {run}");
    for line in lines {
        assert_eq!(field(&line, "n"), "3", "{run}");
    }
}

#[test]
fn bad_clone_arguments_are_clear_errors() {
    let run = vmfork(&["clone", "/nonexistent-template", "-n", "2"]);
    vmfork_tests::assert_clean_error(&run, vmfork_tests::exit::TEMPLATE, "nonexistent-template");
    let run = vmfork(&["clone", "/tmp", "-n", "0"]);
    vmfork_tests::assert_clean_error(&run, vmfork_tests::exit::INVALID_ARGUMENT, "-n");
}

#[test]
fn uffd_clones_fault_lazily_and_prefetch_removes_the_faults() {
    let scratch = Scratch::new("uffd");
    let dir = template(&scratch, "quiet=1 touch_mib=4");
    let run = vmfork(&["clone", &dir, "-n", "10", "--backend", "uffd", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    let lazy = run.json();
    let faults = lazy["uffd_faults_per_clone"].as_u64().unwrap_or(0);
    assert!(
        faults > 0,
        "uffd clones must take first-touch faults: {run}"
    );
    assert_eq!(lazy["fds_after"], lazy["fds_before"], "{run}");

    // First --prefetch run records the working set beside the template...
    let run = vmfork(&[
        "clone",
        &dir,
        "-n",
        "10",
        "--backend",
        "uffd",
        "--prefetch",
        "--json",
    ]);
    assert_eq!(run.status, 0, "{run}");
    assert!(
        scratch.path("t/working-set").exists(),
        "no working set recorded: {run}"
    );
    // ...and later runs install it before resuming: the faults are gone but
    // for a page a clone touches only when the timing differs from the
    // recording clone's (seen once in a loaded CI run: one fault per clone
    // against 6 prefetched pages).
    let run = vmfork(&[
        "clone",
        &dir,
        "-n",
        "10",
        "--backend",
        "uffd",
        "--prefetch",
        "--json",
    ]);
    assert_eq!(run.status, 0, "{run}");
    let warm = run.json();
    assert!(warm["prefetch_pages"].as_u64().unwrap_or(0) > 0, "{run}");
    let warm_faults = warm["uffd_faults_per_clone"].as_u64().unwrap_or(u64::MAX);
    assert!(warm_faults <= 1 && warm_faults < faults, "{run}");
    assert_eq!(warm["fds_after"], warm["fds_before"], "{run}");
}

#[test]
fn prefetch_without_uffd_is_refused() {
    let scratch = Scratch::new("prefetch");
    let dir = template(&scratch, "quiet=1 touch_mib=1");
    let run = vmfork(&["clone", &dir, "--prefetch"]);
    vmfork_tests::assert_clean_error(&run, vmfork_tests::exit::INVALID_ARGUMENT, "--prefetch");
}

#[test]
fn clone_processes_share_a_template_holders_sealed_memfd() {
    let scratch = Scratch::new("holder");
    let dir = template(&scratch, "touch_mib=2");
    let sock = scratch.str("holder.sock");
    let mut holder = std::process::Command::new(vmfork_tests::vmfork_bin())
        .args(["template", "serve", &dir, "--sock", &sock])
        .spawn()
        .expect("holder");
    vmfork_tests::wait_for_path(&sock);
    let mut randoms = Vec::new();
    for backend in ["memfd", "uffd"] {
        let run = vmfork(&[
            "clone",
            "--holder",
            &sock,
            "-n",
            "2",
            "--backend",
            backend,
            "--console",
            "--json",
        ]);
        assert_eq!(run.status, 0, "{run}");
        assert_eq!(run.json()["memfd_seals"], 15, "{run}");
        randoms.extend(pongs(&run).iter().map(|l| field(l, "random").to_string()));
    }
    randoms.sort();
    randoms.dedup();
    assert_eq!(randoms.len(), 4, "every clone draws its own numbers");
    // SIGTERM ends the holder cleanly and removes its socket.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &holder.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    assert!(holder.wait().expect("wait").success());
    assert!(!std::path::Path::new(&sock).exists(), "socket left behind");
    let run = vmfork(&["clone", "--holder", &sock, "-n", "1"]);
    vmfork_tests::assert_clean_error(&run, vmfork_tests::exit::CONTROL, "holder");
}

#[test]
fn clones_spread_over_worker_processes() {
    let scratch = Scratch::new("procs");
    let dir = template(&scratch, "quiet=1 touch_mib=2 timer_hz=0");
    let run = vmfork(&["clone", &dir, "-n", "12", "--processes", "3", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    let json = run.json();
    assert_eq!(json["clones"], 12);
    assert_eq!(json["processes"], 3);
    assert_eq!(json["worker_fd_leaks"], 0, "{run}");
    assert!(
        json["clone_p50_us"].as_u64().is_some_and(|v| v > 0),
        "{run}"
    );
}

/// VM fds held by `pid`'s child processes (the workers' clones).
fn vms_in_children(pid: u32) -> usize {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .flat_map(|child| {
            std::fs::read_dir(format!("/proc/{child}/fd"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == "anon_inode:kvm-vm")
        })
        .count()
}

/// SIGTERM ends a `--processes` hold early, as it does without workers:
/// the workers stop their clones and the summary comes out, status 0.
#[test]
fn a_stop_signal_ends_a_hold_over_worker_processes() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let scratch = Scratch::new("procs-hold");
    let dir = template(&scratch, "quiet=1 touch_mib=2 timer_hz=0");
    let child = Command::new(vmfork_tests::vmfork_bin())
        .args([
            "clone",
            &dir,
            "-n",
            "4",
            "--processes",
            "2",
            "--hold",
            "600",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmfork clone");
    let pid = child.id();
    // Every clone's VM exists in a worker: the hold is under way, or about
    // to be (a signal that comes first waits, blocked, for the hold).
    let deadline = Instant::now() + Duration::from_secs(60);
    while vms_in_children(pid) < 4 {
        assert!(Instant::now() < deadline, "the clones never came up");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let signalled = Instant::now();
    let run = vmfork_tests::finish(child.wait_with_output().expect("wait"), signalled);
    assert_eq!(run.status, 0, "{run}");
    assert!(run.elapsed < Duration::from_secs(30), "{run}");
    let json = run.json();
    assert_eq!(json["clones"], 4, "{run}");
    assert_eq!(json["worker_fd_leaks"], 0, "{run}");
}
