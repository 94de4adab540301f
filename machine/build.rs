//! Builds the default guest (guest/) and places the ELF in OUT_DIR, where
//! `vmfork_machine::EMBEDDED_GUEST` includes it into the vmfork binary.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let guest_dir = manifest_dir.join("../guest");
    let out_elf = out_dir.join("vmfork-guest.elf");

    println!("cargo:rerun-if-env-changed=VMFORK_GUEST_ELF");
    for sub in ["ring0", "app", "guest.ld", "build.sh"] {
        println!("cargo:rerun-if-changed={}", guest_dir.join(sub).display());
    }
    // guest/build.sh compiles the ABI crate into the app.
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../guest-abi/src").display()
    );

    // A prebuilt guest can be injected (e.g. to test a guest change
    // without rebuilding it here).
    if let Some(prebuilt) = std::env::var_os("VMFORK_GUEST_ELF").filter(|v| !v.is_empty()) {
        std::fs::copy(&prebuilt, &out_elf).unwrap_or_else(|e| {
            panic!(
                "copying VMFORK_GUEST_ELF={}: {e}",
                PathBuf::from(&prebuilt).display()
            )
        });
        return;
    }
    let status = Command::new("bash")
        .arg(guest_dir.join("build.sh"))
        .arg(&out_elf)
        .status()
        .unwrap_or_else(|e| panic!("running guest/build.sh: {e}"));
    if !status.success() {
        panic!("guest/build.sh failed ({status}); see its output above");
    }
}
