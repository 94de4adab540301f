//! Builds the Wasm guest (guest-wasm/build.sh) into OUT_DIR, where
//! `vmfork_wasm::GUEST_ELF` includes it into the vmfork binary. The
//! guest's own cargo build is cached in ~/.cache/vmfork/guest-wasm-target
//! (cargo's fingerprints key it by content): a nested cargo cannot share
//! this build's target directory, which it holds locked, and the build of
//! Wasmtime's runtime is too heavy to repeat in every fresh checkout.

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
        .env("CARGO_TARGET_DIR", guest_target_dir(&root))
        // Under `cargo clippy` this names clippy-driver; the guest is built
        // the same way whatever builds the tests.
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .status()
        .unwrap_or_else(|e| panic!("running guest-wasm/build.sh: {e}"));
    assert!(
        status.success(),
        "guest-wasm/build.sh failed ({status}); see its output above"
    );
}

/// ~/.cache/vmfork/guest-wasm-target ($XDG_CACHE_HOME/vmfork/...), or the
/// checkout's guest-wasm/target without a home.
fn guest_target_dir(root: &std::path::Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=XDG_CACHE_HOME");
    println!("cargo:rerun-if-env-changed=HOME");
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(c) => c.join("vmfork/guest-wasm-target"),
        None => root.join("guest-wasm/target"),
    }
}
