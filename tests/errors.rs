//! Every bad input and every guest failure ends with one clear line on
//! stderr and its own exit status: never a panic, never a hang.

use vmfork_tests::{assert_clean_error, command, exit, host_is_pvm, vmfork, vmfork_bin, Scratch};

#[test]
fn missing_kernel_file() {
    let run = vmfork(&["boot", "--kernel", "/nonexistent/vmlinux"]);
    assert_clean_error(&run, exit::KERNEL_UNREADABLE, "/nonexistent/vmlinux");
}

#[test]
fn unreadable_kernel_is_a_directory() {
    let run = vmfork(&["boot", "--kernel", "/tmp"]);
    assert_clean_error(&run, exit::KERNEL_UNREADABLE, "/tmp");
}

#[test]
fn kernel_that_is_neither_elf_nor_bzimage() {
    let scratch = Scratch::new("notkernel");
    std::fs::write(scratch.path("k"), b"#!/bin/sh\necho not a kernel\n").expect("write");
    let run = vmfork(&["boot", "--kernel", &scratch.str("k")]);
    assert_clean_error(&run, exit::KERNEL_FORMAT, "neither an ELF nor a bzImage");
}

#[test]
fn truncated_elf_kernel() {
    let scratch = Scratch::new("truncelf");
    let elf = scratch.str("guest.elf");
    assert_eq!(vmfork(&["export-guest", &elf]).status, 0);
    let bytes = std::fs::read(&elf).expect("read");
    std::fs::write(&elf, &bytes[..200]).expect("truncate");
    let run = vmfork(&["boot", "--kernel", &elf]);
    assert_clean_error(&run, exit::KERNEL_FORMAT, "cannot load kernel");
}

#[test]
fn memory_too_small_for_the_guest_application() {
    // 2 MiB holds the kernel but not an 8 MiB application heap: the guest
    // reports it and exits non-zero before becoming ready.
    let run = vmfork(&["boot", "--mem", "2M", "--timeout", "30"]);
    assert_clean_error(&run, exit::GUEST_EXIT_STATUS, "guest exited with status");
}

#[test]
fn memory_too_small_for_the_kernel() {
    let run = vmfork(&["boot", "--mem", "1M"]);
    assert_clean_error(&run, exit::MEMORY_TOO_SMALL, "RAM");
    let run = vmfork(&["boot", "--mem", "512K"]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "--mem");
}

#[test]
fn invalid_sizes_and_counts() {
    for args in [
        vec!["boot", "--mem", "12X"],
        vec!["boot", "--mem", "lots"],
        vec!["boot", "--vcpus", "0"],
        vec!["boot", "--vcpus", "255"],
        vec!["boot", "--vcpus", "two"],
        vec!["boot", "--timeout", "0"],
        vec!["boot", "--timeout", "soon"],
    ] {
        let run = vmfork(&args);
        assert_clean_error(&run, exit::INVALID_ARGUMENT, args[1]);
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let run = vmfork(&["boot", "--no-such-flag"]);
    assert_clean_error(&run, exit::USAGE, "--no-such-flag");
}

#[test]
fn help_is_useful() {
    let run = vmfork(&["--help"]);
    assert_eq!(run.status, 0);
    for word in ["boot", "template", "restore", "ctl", "Exit status"] {
        assert!(run.stdout.contains(word), "--help lacks {word}: {run}");
    }
    let run = vmfork(&["boot", "--help"]);
    for flag in [
        "--kernel",
        "--initrd",
        "--rootfs",
        "--mem",
        "--vcpus",
        "--cmdline",
        "--exit-on-ready",
        "--json",
    ] {
        assert!(run.stdout.contains(flag), "boot --help lacks {flag}");
    }
}

#[test]
fn missing_dev_kvm() {
    // A private mount namespace with an empty /dev: vmfork must say that
    // /dev/kvm is missing, not crash.
    let bin = vmfork_bin();
    let script = format!(
        "mount -t tmpfs none /dev && exec {} boot --exit-on-ready",
        bin.display()
    );
    let run = command(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    );
    assert_clean_error(&run, exit::KVM_UNAVAILABLE, "/dev/kvm");
}

/// Boots as the unprivileged user 65534 in a private mount namespace
/// whose /dev/kvm is a fresh node for the host's KVM device, with mode
/// `mode` and owned by root: the permission is the test's, whatever the
/// host's /dev/kvm allows.
fn boot_as_nobody_with_dev_kvm_mode(scratch: &Scratch, mode: &str) -> vmfork_tests::Run {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata("/dev/kvm").expect("/dev/kvm").rdev();
    let (major, minor) = (
        (rdev >> 8) & 0xfff,
        (rdev & 0xff) | ((rdev >> 12) & 0xfff00),
    );
    let dir = scratch.str(mode);
    std::fs::create_dir_all(&dir).expect("node dir");
    // A tmpfs of the namespace's own (never nodev) holds the node, which is
    // bind-mounted over /dev/kvm for this namespace only.
    let script = format!(
        "set -e; mount -t tmpfs -o mode=0755 none {dir}; mknod {dir}/kvm c {major} {minor}; \
         chown 0:0 {dir}/kvm; chmod {mode} {dir}/kvm; mount --bind {dir}/kvm /dev/kvm; \
         exec setpriv --reuid=65534 --regid=65534 --clear-groups {} boot --exit-on-ready --quiet",
        vmfork_bin().display()
    );
    command(
        "unshare",
        &["--mount", "--propagation", "private", "sh", "-c", &script],
    )
}

#[test]
fn no_permission_on_dev_kvm() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (a private mount namespace and setpriv)"
    );
    let scratch = Scratch::new("kvm-perm");
    // The control: the same node, open to everyone, boots. So the node is
    // the host's KVM, and the run below fails for its mode alone.
    let run = boot_as_nobody_with_dev_kvm_mode(&scratch, "0666");
    assert_eq!(run.status, 0, "user 65534 with a mode 0666 /dev/kvm: {run}");
    // Mode 0600, owned by root: user 65534 cannot open it.
    let run = boot_as_nobody_with_dev_kvm_mode(&scratch, "0600");
    assert_clean_error(&run, exit::KVM_UNAVAILABLE, "Permission denied");
    assert!(run.stderr.contains("/dev/kvm"), "{run}");
}

#[test]
fn guest_triple_fault_reports_shutdown_and_rip() {
    let run = vmfork(&["boot", "--cmdline", "test=triple_fault", "--timeout", "30"]);
    assert_clean_error(&run, exit::GUEST_SHUTDOWN, "RIP=0x");
}

#[test]
fn guest_exception_is_a_crash() {
    let run = vmfork(&["boot", "--cmdline", "test=panic", "--timeout", "30"]);
    assert_clean_error(&run, exit::GUEST_CRASH, "vector 6");
    assert!(run.stdout.contains("vmfork-guest: panic"), "{run}");
}

#[test]
fn guest_exit_status_is_reported() {
    let run = vmfork(&["boot", "--cmdline", "test=exit:7", "--timeout", "30"]);
    assert_clean_error(&run, exit::GUEST_EXIT_STATUS, "status 7");
}

#[test]
fn guest_that_never_becomes_ready_times_out() {
    let run = vmfork(&["boot", "--cmdline", "test=hang", "--timeout", "2"]);
    assert_clean_error(&run, exit::TIMEOUT, "ready");
    assert!(run.elapsed.as_secs() < 20, "{run}");
}

/// On PVM, ring 0 runs under KVM's emulator, which cannot run XSAVE: that is
/// exactly what kills Linux here. On VMX/SVM the same guest just succeeds.
#[test]
fn kvm_emulation_failure_is_reported_with_rip() {
    let run = vmfork(&[
        "boot",
        "--cmdline",
        "test=emulation_error",
        "--timeout",
        "30",
    ]);
    if host_is_pvm() {
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "RIP=0x");
        assert!(run.stderr.contains("PVM"), "{run}");
    } else {
        assert_ne!(run.status, exit::KVM_INTERNAL_ERROR, "{run}");
    }
}

#[test]
fn bad_rootfs_image() {
    let scratch = Scratch::new("rootfs");
    std::fs::write(scratch.path("img"), vec![0u8; 1000]).expect("write");
    let run = vmfork(&["boot", "--rootfs", &scratch.str("img"), "--exit-on-ready"]);
    assert_clean_error(&run, exit::IMAGE, "multiple of 2 MiB");
    let run = vmfork(&["boot", "--rootfs", "/nonexistent.img", "--exit-on-ready"]);
    assert_clean_error(&run, exit::IMAGE, "/nonexistent.img");
}

/// A command for clones of a guest without an agent (the embedded guest
/// takes EXEC as an unknown command and acknowledges it) is refused with
/// the reason, not reported as a crash or a hang; so are bad exec flags.
#[test]
fn a_command_for_a_guest_without_an_agent() {
    let scratch = Scratch::new("exec-no-agent");
    let tpl = vmfork_tests::build_template(&scratch.str("tpl"), "64M", "quiet=1");
    let run = vmfork(&["clone", &tpl, "-n", "2", "--", "true"]);
    assert_eq!(run.status, exit::INVALID_ARGUMENT, "{run}");
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("no vmfork agent"))
        .collect();
    assert_eq!(lines.len(), 2, "one line per clone: {run}");
    assert!(lines[0].starts_with("vmfork: clone 1: "), "{run}");
    assert!(!run.stderr.contains("panicked"), "{run}");

    let run = vmfork(&["clone", &tpl, "--env", "NOEQUALS", "--", "true"]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "NAME=VALUE");
    let run = vmfork(&["clone", &tpl, "--output-cap", "2M", "--", "true"]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "at most 1M");
    let run = vmfork(&["clone", &tpl, "--env", "A=1"]);
    assert_eq!(run.status, exit::USAGE, "--env without a command: {run}");
    let run = vmfork(&["clone", &tpl, "-n", "2", "--processes", "2", "--", "true"]);
    assert_clean_error(&run, exit::INVALID_ARGUMENT, "--processes");
}
