//! Injected failures (VMFORK_FAULT_INJECT, a test hook: clone/src/
//! fault_inject.rs): a uffd clone whose page server dies or stalls,
//! and a template holder that is killed or serves a rebuilt template, must
//! each end in a clear one-line error or success; never a hang, never a
//! clone on zero-filled memory, never a wrong template.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmfork_tests::{assert_clean_error, exit, finish, vmfork, vmfork_bin, wait_for_path, Run};
use vmfork_tests::{build_template, pongs, Scratch};
use vmfork_tests::{sigterm_after_line, vmfork_within};

fn template(scratch: &Scratch, name: &str) -> String {
    build_template(&scratch.str(name), "64M", "touch_mib=4")
}

/// `vmfork ARGS` with `VMFORK_FAULT_INJECT=spec`, killed (and failed) if it
/// is still running after `limit`: a hang is the bug these tests look for.
fn injected(spec: &str, args: &[&str], limit: Duration) -> Run {
    vmfork_within(args, &[("VMFORK_FAULT_INJECT", spec)], limit)
}

#[test]
fn a_dead_page_server_stops_its_clone_with_a_clear_error() {
    let scratch = Scratch::new("uffd-death");
    let dir = template(&scratch, "t");
    for spec in [
        "uffd-handler-exit-after=0",
        "uffd-handler-panic-after=3",
        "uffd-handler-exit-after=2,clone=3",
        "uffd-handler-panic-after=0,clone=2",
    ] {
        for shells in [false, true] {
            let mut args = vec!["clone", &dir, "-n", "4", "--backend", "uffd", "--json"];
            if shells {
                args.push("--shells");
            }
            let run = injected(spec, &args, Duration::from_secs(60));
            assert_clean_error(&run, exit::PAGE_SERVER, "userfaultfd page server died");
            // Exactly the clone whose handler died is named.
            let which = spec.split("clone=").nth(1).unwrap_or("1");
            assert!(
                run.stderr.contains(&format!("clone {which} stopped")),
                "{spec}: {run}"
            );
            assert!(run.stderr.contains("VMFORK_FAULT_INJECT"), "{run}");
        }
    }
    // Clones whose page servers live are unaffected: the same run without
    // the hook, and clones before the failed one, acknowledged (the
    // command only fails at clone 3 above, after 1 and 2 came up).
    let run = vmfork(&["clone", &dir, "-n", "4", "--backend", "uffd", "--json"]);
    assert_eq!(run.status, 0, "{run}");
    let json = run.json();
    assert_eq!(json["fds_after"], json["fds_before"], "{run}");
}

/// With `--processes`, the worker whose page server died prints the one
/// error line and the parent exits with its status, adding none.
#[test]
fn a_dead_page_server_in_a_worker_process_is_one_error_line() {
    let scratch = Scratch::new("uffd-death-procs");
    let dir = template(&scratch, "t");
    // 3 clones over 2 workers: the first worker has clones 1 and 2, the
    // second only clone 1, so only the first reaches clone 2.
    let run = injected(
        "uffd-handler-exit-after=0,clone=2",
        &[
            "clone",
            &dir,
            "-n",
            "3",
            "--backend",
            "uffd",
            "--processes",
            "2",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert_clean_error(&run, exit::PAGE_SERVER, "userfaultfd page server died");
    assert!(run.stderr.contains("clone 2 stopped"), "{run}");
}

#[test]
fn only_the_clone_whose_page_server_died_fails_and_others_still_answer() {
    let scratch = Scratch::new("uffd-others");
    let dir = template(&scratch, "t");
    // Clone 4 of 4 dies; clones 1-3 were up, print their pong lines, and
    // the error names clone 4 alone. (--json: no progress lines on stderr
    // for the clones that came up, so the error is its only line.)
    let run = injected(
        "uffd-handler-exit-after=1,clone=4",
        &[
            "clone",
            &dir,
            "-n",
            "4",
            "--backend",
            "uffd",
            "--console",
            "--json",
        ],
        Duration::from_secs(60),
    );
    assert_clean_error(&run, exit::PAGE_SERVER, "clone 4 stopped");
    let lines = pongs(&run);
    assert_eq!(lines.len(), 3, "clones 1-3 answered: {run}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("clone {}: ", i + 1)), "{run}");
    }
}

#[test]
fn a_stalled_page_server_ends_in_the_ack_timeout_not_a_hang() {
    let scratch = Scratch::new("uffd-stall");
    let dir = template(&scratch, "t");
    let run = injected(
        "uffd-handler-stall-after=1,clone=2",
        // (--json: no progress line for clone 1 beside the error.)
        &["clone", &dir, "-n", "3", "--backend", "uffd", "--json"],
        Duration::from_secs(60),
    );
    assert_clean_error(&run, exit::TIMEOUT, "clone 2 did not acknowledge");
}

/// SIGTERM while a clone is still coming up (here: its page server
/// stalled) stops every clone at once and exits 128 + 15 with one line,
/// instead of waiting out the 10 s acknowledgement timeout.
#[test]
fn a_stop_signal_while_clones_start_stops_them_at_once() {
    let scratch = Scratch::new("uffd-interrupt");
    let dir = template(&scratch, "t");
    // The progress line for clone 1 is the event: clone 2 starts right
    // after it and stalls.
    let run = sigterm_after_line(
        &["clone", &dir, "-n", "3", "--backend", "uffd"],
        &[("VMFORK_FAULT_INJECT", "uffd-handler-stall-after=1,clone=2")],
        "1/3",
    );
    let seen = &run.stderr;
    assert_eq!(run.status, Some(128 + libc::SIGTERM), "{seen}");
    assert!(
        seen.contains("vmfork: interrupted by SIGTERM; stopped 2 of 3 clones")
            || seen.contains("vmfork: interrupted by SIGTERM; stopped 1 of 3 clones"),
        "{seen}"
    );
    // Well inside the acknowledgement timeout the run would otherwise
    // have waited for.
    assert!(
        run.after_signal < Duration::from_secs(5),
        "took {:?} after SIGTERM: {seen}",
        run.after_signal
    );
    assert!(!seen.contains("did not acknowledge"), "{seen}");
}

#[test]
fn a_malformed_fault_injection_is_refused() {
    let scratch = Scratch::new("uffd-badspec");
    let dir = template(&scratch, "t");
    let run = injected(
        "uffd-handler-explode=1",
        &["clone", &dir, "--backend", "uffd"],
        Duration::from_secs(30),
    );
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "VMFORK_FAULT_INJECT");
}

fn spawn_holder(dir: &str, sock: &str) -> std::process::Child {
    let child = Command::new(vmfork_bin())
        .args(["template", "serve", dir, "--sock", sock])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("holder");
    wait_for_path(sock);
    child
}

#[test]
fn a_killed_holder_leaves_running_clones_alive_and_new_clients_a_clear_error() {
    let scratch = Scratch::new("holder-kill");
    let dir = template(&scratch, "t");
    let sock = scratch.str("holder.sock");
    let mut holder = spawn_holder(&dir, &sock);
    // A clone process that already has the memfd outlives the holder.
    let start = Instant::now();
    let clones = Command::new(vmfork_bin())
        .args(["clone", "--holder", &sock, "-n", "3", "--backend", "uffd"])
        .args(["--hold", "3", "--console", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("clones");
    // Once the clone process holds the memfd, the holder is not needed.
    let fds = format!("/proc/{}/fd", clones.id());
    let has_memfd = || {
        std::fs::read_dir(&fds)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_link(e.path())
                    .is_ok_and(|t| t.to_string_lossy().contains("memfd:vmfork-template"))
            })
    };
    while !has_memfd() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no memfd received"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    holder.kill().expect("SIGKILL the holder");
    let _ = holder.wait();
    let run = finish(clones.wait_with_output().expect("clones"), start);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(pongs(&run).len(), 3, "{run}");
    // The socket is left behind by SIGKILL: connecting is refused at once.
    assert!(std::path::Path::new(&sock).exists());
    let run = vmfork(&["clone", "--holder", &sock, "-n", "1"]);
    assert_clean_error(&run, exit::CONTROL, "cannot connect");
    assert!(run.elapsed < Duration::from_secs(10), "{run}");
}

#[test]
fn a_holder_of_a_rebuilt_template_is_refused() {
    let scratch = Scratch::new("holder-rebuilt");
    let dir = template(&scratch, "t");
    let sock = scratch.str("holder.sock");
    let mut holder = spawn_holder(&dir, &sock);
    assert_eq!(vmfork(&["clone", "--holder", &sock, "-n", "1"]).status, 0);
    // Same path, new build: the holder's memfd is the old build's memory,
    // which the new state must never run on.
    std::fs::remove_dir_all(&dir).expect("remove template");
    template(&scratch, "t");
    let run = vmfork(&["clone", "--holder", &sock, "-n", "1"]);
    assert_clean_error(&run, exit::CONTROL, "another build");
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn a_holder_run_by_another_user_is_refused() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: running the holder as another user needs root");
        return;
    }
    let scratch = Scratch::new("holder-peer");
    let dir = template(&scratch, "t");
    // A directory the other user may create its socket in.
    let socks = scratch.path("socks");
    std::fs::create_dir(&socks).expect("mkdir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socks, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let sock = socks.join("holder.sock").to_string_lossy().into_owned();
    let bin = vmfork_bin().display().to_string();
    let mut holder = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", &bin])
        .args(["template", "serve", &dir, "--sock", &sock])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("holder as nobody");
    wait_for_path(&sock);
    // The holder would choose this root client's template and memory.
    let run = vmfork(&["clone", "--holder", &sock, "-n", "1"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_clean_error(&run, exit::CONTROL, "runs as uid 65534");
    assert!(run.elapsed < Duration::from_secs(10), "{run}");
}
