//! Kernels users bring: Debian's stock kernel (a bzImage) with an initrd
//! made for it by Debian's own mkinitramfs (scripts/distro-kernel.sh),
//! booted on 2 vCPUs with the DAX rootfs, templated and cloned, and ended
//! by the guest. Its root on /dev/pmem0 needs no kernel patch: pc-lite's
//! empty PCI bus lets the kernel register the e820 persistent-memory range,
//! and the initrd's nd_e820 and nd_pmem make /dev/pmem0.
//!
//! These need hardware virtualization (on PVM the kernel's decompressor
//! alone runs in emulated ring 0 for minutes), so they are ignored in a
//! plain `cargo test` and scripts/test-svm.sh runs them in the SVM rig.

use std::collections::BTreeMap;

use vmfork_tests::{assert_clean_error, distro_kernel, exit, guest_artifact, vmfork, Run, Scratch};

/// Debian's initrd mounts `root=` itself (rootflags become the mount's
/// options) and then runs `init=` in it: our /init, which starts the agent.
const CMDLINE: &str =
    "console=ttyS0 panic=-1 root=/dev/pmem0 rootfstype=ext4 ro rootflags=dax init=/init";

/// The arguments every run here shares: the kernel, its initrd, the DAX
/// rootfs, 2 vCPUs, and RAM for the initrd (7.5 MB, unpacked in the guest).
fn machine(cmdline: &str) -> Vec<String> {
    let (kernel, initrd) = distro_kernel();
    let rootfs = guest_artifact("rootfs", "rootfs");
    [
        "--kernel",
        &kernel.to_string_lossy(),
        "--initrd",
        &initrd.to_string_lossy(),
        "--rootfs",
        &rootfs.to_string_lossy(),
        "--vcpus",
        "2",
        "--mem",
        "512M",
        "--timeout",
        "400",
        "--cmdline",
        cmdline,
    ]
    .map(String::from)
    .to_vec()
}

fn vmfork_on(command: &[&str], machine: &[String]) -> Run {
    let mut args: Vec<&str> = command.to_vec();
    args.extend(machine.iter().map(String::as_str));
    vmfork(&args)
}

#[test]
#[ignore = "needs hardware virtualization: scripts/test-svm.sh runs it in the SVM rig"]
fn debian_kernel_and_initrd_boot_to_the_agent_on_2_vcpus_with_a_dax_root() {
    let run = vmfork_on(&["boot", "--exit-on-ready", "--json"], &machine(CMDLINE));
    assert_eq!(run.status, 0, "{run}");
    assert!(
        run.stdout.contains("Linux version 6.1.") && run.stdout.contains("Debian"),
        "not Debian's kernel: {run}"
    );
    assert!(
        run.stdout.contains("smp: Brought up 1 node, 2 CPUs"),
        "second vCPU not up: {run}"
    );
    // Debian's initramfs-tools ran and mounted the root it was given.
    assert!(
        run.stdout.contains("Begin: Mounting root file system"),
        "{run}"
    );
    let root = run
        .stdout
        .lines()
        .find(|l| l.contains("vmfork-linux: root "))
        .unwrap_or_else(|| panic!("no root line: {run}"));
    assert!(
        root.contains("/dev/pmem0 ext4 ") && root.contains("dax=always"),
        "{root}"
    );
    assert!(run.stdout.contains("vmfork-agent: READY"), "{run}");
    assert_eq!(run.json()["stop"], "ready", "{run}");
    assert_eq!(run.json()["vcpus"], "2", "{run}");
}

/// A template of the Debian guest with both vCPUs, cloned; then a clone
/// whose command powers the guest off through the agent, which ends that
/// clone with its documented status (10, "ended itself") and no result.
#[test]
#[ignore = "needs hardware virtualization: scripts/test-svm.sh runs it in the SVM rig"]
fn debian_kernel_templates_and_clones_and_poweroff_ends_a_clone() {
    let scratch = Scratch::new("distro-tpl");
    let tpl = scratch.str("tpl");
    let built = vmfork_on(
        &["template", "build", "--quiet", "--out", &tpl],
        &machine(CMDLINE),
    );
    assert_eq!(built.status, 0, "{built}");

    let script = "cat /sys/devices/system/cpu/online; cat /run/vmfork/clone-id; \
                  grep ' / ' /proc/mounts";
    let cloned = vmfork(&[
        "clone",
        &tpl,
        "-n",
        "3",
        "--",
        "/.vmfork/bin/busybox",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(cloned.status, 0, "{cloned}");
    let mut lines: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for line in cloned.stdout.lines().filter(|l| l.starts_with("clone ")) {
        let (id, rest) = line["clone ".len()..]
            .split_once(": ")
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let id: u64 = id.parse().unwrap_or_else(|_| panic!("bad id {line:?}"));
        lines.entry(id).or_default().push(rest.to_string());
    }
    assert_eq!(lines.len(), 3, "{cloned}");
    for (id, out) in &lines {
        assert_eq!(out.len(), 3, "clone {id}: {out:?}");
        assert_eq!(out[0], "0-1", "clone {id} has not both vCPUs online");
        assert_eq!(out[1], id.to_string(), "clone {id}'s id");
        assert!(
            out[2].starts_with("/dev/pmem0 / ext4 ") && out[2].contains("dax=always"),
            "clone {id}: {}",
            out[2]
        );
    }

    let off = vmfork(&[
        "clone",
        &tpl,
        "-n",
        "1",
        "--",
        "/.vmfork/bin/busybox",
        "poweroff",
    ]);
    assert_eq!(off.status, exit::GUEST_SHUTDOWN, "{off}");
    assert!(
        off.stderr
            .contains("clone 1 ended itself with status 0 while running the command"),
        "{off}"
    );
    assert!(!off.stderr.contains("panicked"), "{off}");
}

/// `reboot -f` (our /init with `vmfork.reboot=1`) on the kernel's default
/// reboot path (no `reboot=` on this command line: the i8042 reset): vmfork
/// ends with exit status 10 and one line naming how the guest reset.
#[test]
#[ignore = "needs hardware virtualization: scripts/test-svm.sh runs it in the SVM rig"]
fn a_reboot_of_the_debian_guest_ends_vmfork_with_status_10() {
    let cmdline = format!("{CMDLINE} vmfork.reboot=1");
    let run = vmfork_on(&["boot", "--quiet"], &machine(&cmdline));
    assert_clean_error(
        &run,
        exit::GUEST_SHUTDOWN,
        "guest reset the machine through",
    );
}
