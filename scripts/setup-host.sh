#!/usr/bin/env bash
# Installs the Debian packages vmfork needs on a build/test host, once.
# Idempotent and quiet when everything is present: dpkg is asked first, and
# `apt-get update` only runs when something actually has to be installed.
#
#   qemu-system-x86     sanity-boots guest kernels (docs/linux-guest.md) and runs
#                       the SVM rig of scripts/test-svm.sh (TCG, -cpu max)
#   linux-source-6.12   the guest kernel source (/usr/src/linux-source-6.12.tar.xz)
#   busybox-static      the guest rootfs userland and the SVM rig's initramfs
#                       (must be static: no libc in either)
#   kmod                depmod, for the SVM rig's stock kernel modules
#   initramfs-tools-core  mkinitramfs, the initrd of the distribution kernel (scripts/distro-kernel.sh)
#   clang lld wasi-libc libclang-rt-14-dev-wasm32
#                       C to WebAssembly (clang --target=wasm32-wasi --sysroot=/usr): the Wasm tests and benchmark
#   e2fsprogs           mkfs.ext4 -d builds the DAX rootfs without root or loop devices
#   wrk                 HTTP load generator for scripts/bench-faas.sh
#   curl                the HTTP client of scripts/demo.sh and the README's examples
#   afl++               AFL++, the coverage-guided engine of scripts/fuzz-afl.sh
#                       (docs/fuzzing.md); cargo-afl, installed last, builds the
#                       fuzz targets with its instrumentation
#   gcc make bc bison flex libelf-dev libssl-dev cpio patch xz-utils
#                       what a kernel build needs (cpio also packs the rig's initramfs)
set -euo pipefail

packages=(
    qemu-system-x86 busybox-static kmod linux-source-6.12 e2fsprogs wrk curl initramfs-tools-core
    containerd
    afl++
    docker-registry     # the OCI registry tests/registry.rs pushes templates to and pulls them from
    clang lld wasi-libc libclang-rt-14-dev-wasm32
    gcc make bc bison flex libelf-dev libssl-dev cpio patch xz-utils
)

missing=()
for pkg in "${packages[@]}"; do
    # "install ok installed" is the only state in which the files are there;
    # half-configured or removed-with-config packages need an install too.
    status="$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "install ok installed" ]]; then
        missing+=("$pkg")
    fi
done

install_missing() {
    if [[ ${#missing[@]} -eq 0 ]]; then
        return
    fi
    if [[ $EUID -ne 0 ]]; then
        sudo=(sudo)
    else
        sudo=()
    fi
    echo "setup-host: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    echo "setup-host: done" >&2
}
install_missing

# cargo-afl is a cargo subcommand, not a Debian package: installed for the
# user running this, once. It builds its AFL++ runtime for the toolchain on
# first use (or `cargo afl config --build`). Only where there is a Rust
# toolchain: the SVM rig runs this script (through distro-kernel.sh)
# without one, and needs no fuzzer.
if command -v cargo >/dev/null 2>&1 && ! cargo afl --version >/dev/null 2>&1; then
    echo "setup-host: installing cargo-afl" >&2
    cargo install cargo-afl --locked >&2
fi
