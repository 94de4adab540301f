//! Builds the Wasm guest (guest-wasm/build.sh) into OUT_DIR for
//! tests/wasm_guest.rs, which finds it through VMFORK_GUEST_WASM_ELF.
//! The guest's own cargo build is cached in guest-wasm/target: a nested
//! cargo cannot share this build's target directory, which it holds
//! locked.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let here = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let root = here.join("..");
    for input in [
        "guest-wasm/src",
        "guest-wasm/Cargo.toml",
        "guest-wasm/Cargo.lock",
        "guest-wasm/build.sh",
        "guest-wasm/memfd-stub",
        "guest/ring0",
        "guest/app",
        "guest/guest.ld",
        "guest-abi/src",
        "wasm/src/engine_config.rs",
        "wasm/src/wasi.rs",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    let elf = out_dir.join("vmfork-guest-wasm.elf");
    let status = Command::new("bash")
        .arg(root.join("guest-wasm/build.sh"))
        .arg(&elf)
        .env("CARGO_TARGET_DIR", root.join("guest-wasm/target"))
        // Under `cargo clippy` this names clippy-driver; the guest is built
        // the same way whatever builds the tests.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .unwrap_or_else(|e| panic!("running guest-wasm/build.sh: {e}"));
    assert!(
        status.success(),
        "guest-wasm/build.sh failed ({status}); see its output above"
    );
    println!("cargo:rustc-env=VMFORK_GUEST_WASM_ELF={}", elf.display());
}
