//! Guests that misbehave on purpose (the default guest's `test=` modes and
//! misbehaving functions, docs/guest-abi.md): floods of unclaimed ports and
//! unbacked MMIO, an interrupt storm, a triple fault, and a guest that
//! never acknowledges. Each ends only its own VM, with a clear reason and
//! a distinct exit or HTTP status, and never the process serving others.
//! (`vmfork boot` of test=triple_fault, panic and hang is in errors.rs.)

use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use vmfork_tests::server::{function_template, Server};
use vmfork_tests::{
    assert_clean_error, build_template, exit, finish, vmfork, vmfork_bin, wait_for_path, Run,
    Scratch,
};

/// Small, quiet and timer-less: the misbehaviour is all the guest does.
const CMDLINE: &str = "quiet=1 timer_hz=0 touch_mib=1";

fn boot(test: &str, extra: &[&str]) -> Run {
    let cmdline = format!("{CMDLINE} test={test}");
    let mut args = vec!["boot", "--mem", "32M", "--cmdline", &cmdline, "--json"];
    args.extend_from_slice(extra);
    vmfork(&args)
}

/// `vmfork boot` in the background, for tests that talk to its socket.
fn spawn_boot(cmdline: &str, extra: &[&str]) -> Child {
    Command::new(vmfork_bin())
        .args(["boot", "--mem", "32M", "--cmdline", cmdline, "--json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn boot")
}

fn count(json: &serde_json::Value, key: &str) -> u64 {
    json["unclaimed_io"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("unclaimed_io.{key} missing in {json}"))
}

/// Policy: unclaimed port writes are dropped and reads return all ones
/// (the guest checks every read and would crash otherwise), every access
/// is counted, and the flood goes on until the owner's timeout stops it.
#[test]
fn port_flood_is_ignored_counted_and_ends_at_the_timeout() {
    let run = boot("port_flood", &["--timeout", "3"]);
    assert_clean_error(&run, exit::TIMEOUT, "did not signal ready within 3.0 s");
    assert!(run.stderr.contains("unclaimed port"), "{run}");
    assert!(
        run.stdout.contains("vmfork-guest: port flood:")
            && run.stdout.contains("every read all ones"),
        "{run}"
    );
    let json = run.json();
    assert_eq!(json["stop"], "timeout", "{json}");
    assert!(count(&json, "port_reads") > 1000, "{json}");
    assert!(count(&json, "port_writes") > 1000, "{json}");
    assert_eq!(count(&json, "mmio_reads") + count(&json, "mmio_writes"), 0);
    assert!(run.elapsed < Duration::from_secs(20), "{run}");
}

#[test]
fn mmio_flood_is_ignored_counted_and_ends_at_the_timeout() {
    let run = boot("mmio_flood", &["--timeout", "3"]);
    assert_clean_error(&run, exit::TIMEOUT, "did not signal ready within 3.0 s");
    assert!(run.stderr.contains("unbacked MMIO"), "{run}");
    assert!(
        run.stdout.contains("vmfork-guest: mmio flood:")
            && run.stdout.contains("every read all ones"),
        "{run}"
    );
    let json = run.json();
    assert!(count(&json, "mmio_reads") > 1000, "{json}");
    assert!(count(&json, "mmio_writes") > 1000, "{json}");
    assert_eq!(count(&json, "port_reads") + count(&json, "port_writes"), 0);
    assert!(run.elapsed < Duration::from_secs(20), "{run}");
}

/// The storm never leaves KVM (the in-kernel LAPIC delivers it), so the
/// VMM sees no exits at all; the timeout still stops it.
#[test]
fn interrupt_storm_ends_at_the_timeout() {
    let run = boot("interrupt_storm", &["--timeout", "3"]);
    assert_clean_error(&run, exit::TIMEOUT, "did not signal ready within 3.0 s");
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with("vmfork-guest: interrupt storm:"))
        .unwrap_or_else(|| panic!("no storm report: {run}"));
    // "N self-IPIs sent, N handled": every IPI was delivered and EOIed.
    let words: Vec<&str> = line.split_whitespace().collect();
    let sent = words
        .iter()
        .position(|w| *w == "self-IPIs")
        .map(|i| words[i - 1]);
    let handled = words
        .iter()
        .position(|w| *w == "handled")
        .map(|i| words[i - 1]);
    assert!(sent.is_some() && sent == handled, "{line}");
    assert!(run.elapsed < Duration::from_secs(20), "{run}");
}

/// A flooding or storming guest is busy, not parked: a ping fails without
/// harming it, and `ctl stop` ends it at once.
#[test]
fn flooding_and_storming_guests_are_stoppable_from_their_control_socket() {
    for test in ["port_flood", "interrupt_storm"] {
        let scratch = Scratch::new(test);
        let sock = scratch.str("api.sock");
        let cmdline = format!("{CMDLINE} test={test}");
        let vm = spawn_boot(&cmdline, &["--api-sock", &sock]);
        wait_for_path(&sock);
        if test == "port_flood" {
            let ping = vmfork(&["ctl", &sock, "ping"]);
            assert_clean_error(&ping, exit::CONTROL, "did not wait for a command");
        } else {
            thread::sleep(Duration::from_millis(500));
        }
        let stop = vmfork(&["ctl", &sock, "stop"]);
        assert_eq!(stop.status, 0, "{test}: {stop}");
        let stopped = Instant::now();
        let run = finish(vm.wait_with_output().expect("wait boot"), stopped);
        assert_eq!(run.status, 0, "{test}: {run}");
        assert!(run.elapsed < Duration::from_secs(5), "{test}: {run}");
        let json = run.json();
        assert_eq!(json["stop"], "requested", "{test}: {json}");
        if test == "port_flood" {
            assert!(count(&json, "port_writes") > 1000, "{json}");
        }
    }
}

/// test=no_ack becomes ready and then takes commands without ever
/// acknowledging them: the first unanswered command stops the VM.
#[test]
fn guest_that_never_acknowledges_is_stopped_as_unresponsive() {
    let scratch = Scratch::new("no-ack");
    let sock = scratch.str("api.sock");
    let cmdline = format!("{CMDLINE} test=no_ack");
    let vm = spawn_boot(&cmdline, &["--api-sock", &sock, "--timeout", "30"]);
    wait_for_path(&sock);
    let started = Instant::now();
    let ping = vmfork(&["ctl", &sock, "ping"]);
    assert_clean_error(&ping, exit::CONTROL, "did not acknowledge it");
    let run = finish(vm.wait_with_output().expect("wait boot"), started);
    assert_clean_error(
        &run,
        exit::TIMEOUT,
        "took command PING but did not acknowledge",
    );
    assert!(run.stdout.contains("vmfork-guest: READY"), "{run}");
    assert_eq!(run.json()["stop"], "unresponsive", "{run}");

    // Its template restores into a guest that ignores RESUMED too, which
    // the restore's --timeout catches.
    let tpl = build_template(&scratch.str("tpl"), "32M", &cmdline);
    let restore = vmfork(&["restore", &tpl, "--timeout", "2"]);
    assert_clean_error(&restore, exit::TIMEOUT, "within 2.0 s");
}

/// One `vmfork serve` process: every misbehaving function, all at once,
/// gets its 502 or 504 with a reason while echo keeps answering 200; the
/// process stays up, and every clone is gone afterwards.
#[test]
fn misbehaving_functions_end_only_their_own_clone() {
    let scratch = Scratch::new("serve-misbehave");
    let bad = [
        ("port-flood", 504, "ran longer than"),
        ("mmio-flood", 504, "ran longer than"),
        ("interrupt-storm", 504, "ran longer than"),
        ("no-ack", 502, "without acknowledging INVOKE"),
        ("triple-fault", 502, "triple-faulted"),
    ];
    let mut fns = vec![("echo", function_template(&scratch, "echo", "echo"))];
    for (name, _, _) in bad {
        fns.push((name, function_template(&scratch, name, name)));
    }
    let mut server = Server::start(&fns, &["--timeout", "1s", "--warm", "1"]);
    assert_eq!(server.invoke("echo", b"warm").0, 200);

    const ROUNDS: usize = 2;
    let misbehaving: Vec<_> = bad
        .iter()
        .map(|&(name, _, _)| {
            let client = server.client.clone();
            thread::spawn(move || {
                (0..ROUNDS)
                    .map(|_| {
                        let (code, _, body) = client.invoke(name, b"x");
                        (code, String::from_utf8_lossy(&body).into_owned())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut echoes = 0;
    while !misbehaving.iter().all(|t| t.is_finished()) {
        let body = format!("healthy {echoes}");
        let (code, _, answer) = server.invoke("echo", body.as_bytes());
        assert_eq!(
            (code, String::from_utf8_lossy(&answer).as_ref()),
            (200, body.as_str()),
            "echo while others misbehave"
        );
        echoes += 1;
    }
    for (thread, (name, want, reason)) in misbehaving.into_iter().zip(bad) {
        for (code, body) in thread.join().expect("invoker") {
            assert_eq!(code, want, "{name}: {body}");
            assert!(body.contains(reason), "{name}: {body:?} lacks {reason:?}");
        }
    }
    eprintln!("echo answered {echoes} times while the others misbehaved");
    assert!(echoes >= ROUNDS, "echo answered only {echoes} times");

    assert!(server.is_alive(), "serve died");
    let (code, _, body) = server.request("GET", "/healthz", b"");
    assert_eq!((code, body.as_slice()), (200, &b"ok\n"[..]));
    let (_, _, metrics) = server.request("GET", "/metrics", b"");
    let metrics = String::from_utf8_lossy(&metrics);
    for needle in [
        format!(
            "vmfork_invocations_total{{outcome=\"timeout\"}} {}",
            3 * ROUNDS
        ),
        format!(
            "vmfork_invocations_total{{outcome=\"crash\"}} {}",
            2 * ROUNDS
        ),
    ] {
        assert!(
            metrics.contains(&needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.live_clones() != 0 {
        assert!(Instant::now() < deadline, "clones still alive");
        thread::sleep(Duration::from_millis(100));
    }
    server.stop();
}
