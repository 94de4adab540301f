//! Builds the Linux guest agent (agent/) as a static binary and places it
//! in OUT_DIR, where `assets::AGENT` includes it: the rootfs builder puts
//! it in every image, and the rootfs cache key covers its bytes.
//!
//! Bare rustc, not cargo, like guest/build.sh for the default guest: a
//! nested cargo would need its own target directory and lock, and the
//! agent has no dependency but std and the guest-ABI crate. Static glibc
//! (`+crt-static`) because the rootfs has no libc.

use std::path::PathBuf;
use std::process::Command;

const FLAGS: &[&str] = &[
    "--edition",
    "2021",
    "--target",
    "x86_64-unknown-linux-gnu",
    "-C",
    "opt-level=2",
    "-C",
    "target-cpu=x86-64",
    "-C",
    "codegen-units=1",
    "-C",
    "target-feature=+crt-static",
    "-C",
    "strip=symbols",
    "-D",
    "warnings",
];

fn run(command: &mut Command) {
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        status.success(),
        "building the guest agent failed ({status})"
    );
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let abi = here.join("../guest-abi/src");
    let agent = here.join("../agent/src");
    for dir in [&abi, &agent] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let rlib = out.join("libvmfork_guest_abi.rlib");
    run(Command::new(&rustc)
        .args(FLAGS)
        .args([
            "--crate-type",
            "rlib",
            "--crate-name",
            "vmfork_guest_abi",
            "-o",
        ])
        .arg(&rlib)
        .arg(abi.join("lib.rs")));
    run(Command::new(&rustc)
        .args(FLAGS)
        .args([
            "--crate-type",
            "bin",
            "--crate-name",
            "vmfork_agent",
            "--extern",
        ])
        .arg(format!("vmfork_guest_abi={}", rlib.display()))
        .arg("-L")
        .arg(&out)
        .arg("-o")
        .arg(out.join("vmfork-agent"))
        .arg(agent.join("main.rs")));
}
