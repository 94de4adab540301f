//! Cold boot of real VMs on /dev/kvm: the embedded guest through both entry
//! points, SMP, and the ring-3 speed the guest design depends on.

use vmfork_tests::{vmfork, Scratch};

fn assert_reached_ready(run: &vmfork_tests::Run) -> serde_json::Value {
    assert_eq!(run.status, 0, "{run}");
    assert!(
        run.stdout.contains("vmfork-guest: boot"),
        "banner missing: {run}"
    );
    assert!(
        run.stdout.contains("vmfork-guest: init"),
        "init line missing: {run}"
    );
    assert!(
        run.stdout.contains("vmfork-guest: READY"),
        "READY missing: {run}"
    );
    let json = run.json();
    assert_eq!(json["stop"], "ready", "{run}");
    let ready_us = json["ready_us"].as_u64().expect("ready_us is a number");
    assert!(ready_us > 0, "{run}");
    assert!(
        json["vmm_rss_kib"].as_u64().is_some_and(|kib| kib > 0),
        "{run}"
    );
    // The guest prints through console records; a doorbell the VMM
    // refused would count as an unclaimed port write.
    assert_eq!(json["unclaimed_io"]["port_writes"], 0, "{run}");
    json
}

#[test]
fn embedded_guest_boots_to_ready_with_64bit_entry() {
    let run = vmfork(&["boot", "--exit-on-ready", "--json", "--timeout", "30"]);
    let json = assert_reached_ready(&run);
    assert_eq!(json["kernel"], "embedded");
    // No dirty-page tracking exists while a VM runs.
    assert_eq!(json["dirty_logging"], false, "{run}");
}

#[test]
fn same_elf_boots_through_pvh() {
    let scratch = Scratch::new("pvh");
    let elf = scratch.str("guest.elf");
    assert_eq!(vmfork(&["export-guest", &elf]).status, 0);
    let run = vmfork(&[
        "boot",
        "--kernel",
        &elf,
        "--boot-protocol",
        "pvh",
        "--exit-on-ready",
        "--json",
        "--timeout",
        "30",
    ]);
    assert_reached_ready(&run);
}

#[test]
fn smp_guest_with_mp_table_boots() {
    let run = vmfork(&[
        "boot",
        "--vcpus",
        "4",
        "--exit-on-ready",
        "--json",
        "--timeout",
        "30",
    ]);
    let json = assert_reached_ready(&run);
    assert_eq!(json["vcpus"], "4");
}

#[test]
fn guest_cmdline_reaches_the_application() {
    let run = vmfork(&[
        "boot",
        "--cmdline",
        "touch_mib=3 work=12345",
        "--exit-on-ready",
        "--json",
        "--timeout",
        "30",
    ]);
    assert_reached_ready(&run);
    let init = run
        .stdout
        .lines()
        .find(|l| l.contains("vmfork-guest: init"))
        .unwrap_or_default();
    assert!(init.contains("touch_mib=3"), "{init}");
    assert!(init.contains("work=12345"), "{init}");
}

/// Ring 3 runs natively here: 100 M loop iterations take well under a
/// second, where this host's emulated ring 0 (about 2 M instructions/s)
/// would need minutes. The bound is 10 s, a 10x margin over "well under a
/// second" and still orders of magnitude below emulation.
#[test]
fn ring3_application_runs_at_native_speed() {
    let run = vmfork(&[
        "boot",
        "--cmdline",
        "work=100000000",
        "--exit-on-ready",
        "--json",
        "--timeout",
        "60",
    ]);
    let json = assert_reached_ready(&run);
    let ready_us = json["ready_us"].as_u64().unwrap_or(u64::MAX);
    assert!(
        ready_us < 10_000_000,
        "100M iterations took {ready_us} us: {run}"
    );
}

#[test]
fn guest_can_exit_with_status_zero() {
    let run = vmfork(&[
        "boot",
        "--cmdline",
        "test=exit:0",
        "--json",
        "--timeout",
        "30",
    ]);
    assert_eq!(run.status, 0, "{run}");
    assert_eq!(run.json()["stop"], "guest_exit");
}

/// Console records (docs/guest-abi.md): a line longer than one record
/// (508 bytes) takes several doorbells and still reaches the console
/// whole, in order, as one line, and the VMM accepts every doorbell.
#[test]
fn a_long_guest_line_reaches_the_console_whole() {
    let word = format!("touch_mib={}", "9".repeat(1200));
    let run = vmfork(&["boot", "--cmdline", &word, "--json", "--timeout", "30"]);
    let want = format!("vmfork-guest: error: bad command line word {word}: not a number");
    assert!(
        run.stdout.lines().any(|l| l == want),
        "the error line is not whole: {run}"
    );
    let json = run.json();
    assert_eq!(json["stop"], "guest_exit", "{run}");
    assert_eq!(json["unclaimed_io"]["port_writes"], 0, "{run}");
}
