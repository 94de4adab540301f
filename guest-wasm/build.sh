#!/usr/bin/env bash
# Builds the Wasm guest: the default guest's ring0/*.S (gcc) + this crate
# (cargo, no_std, with Wasmtime's runtime) linked by guest/guest.ld into one
# ELF. Usage: guest-wasm/build.sh OUT_ELF
# CARGO_TARGET_DIR (default guest-wasm/target) caches the cargo build.
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_ELF" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
guest=$(cd "$here/../guest" && pwd)
root=$(cd "$here/.." && pwd)
target_dir=${CARGO_TARGET_DIR:-$here/target}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vmfork-guest-wasm.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

objs=()
for src in "$guest"/ring0/*.S; do
    obj="$tmp/$(basename "$src" .S).o"
    gcc -c -nostdinc -ffreestanding -Wa,--fatal-warnings -Wa,--noexecstack \
        -I "$guest/ring0" -o "$obj" "$src"
    objs+=("$obj")
done

# The same code generation as guest/build.sh: baseline x86-64 (SSE2, never
# AVX) since ring 3 runs natively on whatever CPU the host has, static
# code at fixed addresses, no unwinding. --target keeps these flags off
# build scripts and proc macros, which run on the build host.
# Cargo gives build scripts CARGO_ENCODED_RUSTFLAGS, which would win over
# RUSTFLAGS when this runs from one (tests/build.rs).
unset CARGO_ENCODED_RUSTFLAGS
export RUSTFLAGS="-C relocation-model=static -C code-model=small -C target-cpu=x86-64 \
-C force-unwind-tables=no --remap-path-prefix=$root=vmfork -D warnings"
cargo build --release --locked --target x86_64-unknown-linux-gnu \
    --manifest-path "$here/Cargo.toml" --target-dir "$target_dir"
lib="$target_dir/x86_64-unknown-linux-gnu/release/libvmfork_guest_wasm.a"

ld -T "$guest/guest.ld" -nostdlib -static --gc-sections --build-id=none --strip-debug \
    --no-warn-rwx-segments -z noexecstack -z max-page-size=4096 \
    -o "$tmp/guest.elf" "${objs[@]}" "$lib"

# Ring 3 runs natively but the guest enables nothing past baseline x86-64
# (no XSAVE, so no AVX state): AVX in the app would fault.
start=$(nm "$tmp/guest.elf" | awk '$3 == "__app_text_start" { print "0x" $1 }')
stop=$(nm "$tmp/guest.elf" | awk '$3 == "__app_text_end" { print "0x" $1 }')
objdump -d --no-show-raw-insn --start-address="$start" --stop-address="$stop" \
    "$tmp/guest.elf" | awk -F '\t' '/^ +[0-9a-f]+:/ { print $2 }' >"$tmp/ring3.dis"
if grep -E '%[yz]mm|%k[0-7]\b' "$tmp/ring3.dis" >&2; then
    echo "guest-wasm/build.sh: AVX in the ring-3 app (above)" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
cp "$tmp/guest.elf" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
