//! The Linux guest path: our minimal 6.12 kernel (guest-artifacts) booted
//! in vmfork. On this PVM host guest ring 0 is emulated and dies at the
//! first XSAVE, so Linux gets as far as its early console; the test checks
//! exactly that, and that vmfork then exits with a clear one-line error
//! instead of hanging. On a VMX/SVM host the same kernel boots to init.

use std::path::Path;

use vmfork_tests::{assert_clean_error, exit, guest_artifact, host_is_pvm, vmfork, Scratch};

const CONSOLE: &str = "console=ttyS0 earlyprintk=serial,ttyS0 reboot=t panic=-1";

fn boot_linux(kernel: &Path, extra: &[&str]) -> vmfork_tests::Run {
    let kernel = kernel.to_string_lossy();
    let mut args = vec![
        "boot",
        "--kernel",
        &kernel,
        "--mem",
        "256M",
        "--timeout",
        "120",
    ];
    args.extend_from_slice(extra);
    vmfork(&args)
}

#[test]
fn vmlinux_prints_its_banner_on_the_serial_console() {
    let kernel = guest_artifact("linux", "vmlinux");
    let run = boot_linux(&kernel, &["--cmdline", CONSOLE]);
    assert!(
        run.stdout.contains("Linux version 6.12"),
        "no Linux banner: {run}"
    );
    if host_is_pvm() {
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
        assert!(run.stderr.contains("VMX/SVM"), "{run}");
    }
}

#[test]
fn vmlinux_boots_through_pvh_too() {
    let kernel = guest_artifact("linux", "vmlinux");
    let run = boot_linux(&kernel, &["--boot-protocol", "pvh", "--cmdline", CONSOLE]);
    assert!(
        run.stdout.contains("Linux version 6.12"),
        "no Linux banner: {run}"
    );
    if host_is_pvm() {
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
    }
}

/// With the DAX rootfs attached the kernel sees a persistent-memory e820
/// range; on PVM it still stops at the emulation failure, cleanly.
#[test]
fn vmlinux_with_dax_rootfs_reports_pmem_range() {
    let kernel = guest_artifact("linux", "vmlinux");
    let rootfs = guest_artifact("rootfs", "rootfs");
    let rootfs = rootfs.to_string_lossy();
    let run = boot_linux(
        &kernel,
        &["--rootfs", &rootfs, "--cmdline", CONSOLE, "--exit-on-ready"],
    );
    assert!(run.stdout.contains("Linux version 6.12"), "{run}");
    // The kernel prints the e820 map early; type 12 shows as "persistent (type 12)".
    assert!(
        run.stdout.contains("persistent (type 12)"),
        "no pmem e820 entry: {run}"
    );
    if host_is_pvm() {
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
    } else {
        assert!(run.stdout.contains("vmfork-linux: init started"), "{run}");
    }
}

/// The default guest command line (console, DAX root) boots through
/// /init to the agent, which signals the ready port: `--exit-on-ready`
/// ends the run there, with the root mounted read-only with DAX.
#[test]
fn the_agent_signals_the_ready_point_with_a_dax_root() {
    let kernel = guest_artifact("linux", "vmlinux");
    let rootfs = guest_artifact("rootfs", "rootfs");
    let rootfs = rootfs.to_string_lossy();
    let run = boot_linux(&kernel, &["--rootfs", &rootfs, "--exit-on-ready", "--json"]);
    if host_is_pvm() {
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
        return;
    }
    assert_eq!(run.status, 0, "{run}");
    let root = run
        .stdout
        .lines()
        .find(|l| l.contains("vmfork-linux: root "))
        .unwrap_or_else(|| panic!("no root line: {run}"));
    assert!(
        root.contains(" ext4 ") && root.contains("dax=always"),
        "{root}"
    );
    assert!(run.stdout.contains("vmfork-agent: READY"), "{run}");
    let json = run.json();
    assert_eq!(json["stop"], "ready", "{run}");
    assert!(json["ready_us"].as_u64().is_some_and(|us| us > 0), "{run}");
}

/// The bzImage path: linux-loader parses the setup header, vmfork fills the
/// zero page (with an initrd) and enters the 64-bit entry. The kernel is
/// LZ4-compressed because on PVM its decompressor runs in emulated ring 0
/// (XZ printed nothing in 7 minutes; LZ4 reaches the banner in ~25 s).
#[test]
fn bzimage_with_initrd_prints_its_banner() {
    let kernel = guest_artifact("linux", "bzImage");
    let scratch = Scratch::new("bz");
    let initrd = scratch.path("initrd");
    std::fs::write(&initrd, vec![0u8; 8192]).expect("initrd");
    let kernel = kernel.to_string_lossy();
    let initrd = initrd.to_string_lossy();
    let run = vmfork(&[
        "boot",
        "--kernel",
        &kernel,
        "--initrd",
        &initrd,
        "--mem",
        "256M",
        "--cmdline",
        CONSOLE,
        "--timeout",
        "180",
    ]);
    assert!(
        run.stdout.contains("Linux version 6.12"),
        "no Linux banner: {run}"
    );
    if host_is_pvm() {
        assert_clean_error(&run, exit::KVM_INTERNAL_ERROR, "emulation failure");
    }
}
