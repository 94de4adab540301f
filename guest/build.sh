#!/usr/bin/env bash
# Builds the default vmfork guest: ring0/*.S (gcc) + app/ (rustc, no
# cargo) linked by guest.ld into one ELF. Usage: guest/build.sh OUT_ELF
set -euo pipefail

if [ $# -ne 1 ]; then
    echo "usage: $0 OUT_ELF" >&2
    exit 2
fi
out=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
abi=$(cd "$here/../guest-abi" && pwd)
# Cargo passes RUSTC to build scripts; use the same compiler it uses.
rustc=${RUSTC:-rustc}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vmfork-guest.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

objs=()
for src in "$here"/ring0/*.S; do
    obj="$tmp/$(basename "$src" .S).o"
    gcc -c -nostdinc -ffreestanding -Wa,--fatal-warnings -Wa,--noexecstack \
        -I "$here/ring0" -o "$obj" "$src"
    objs+=("$obj")
done

# target-cpu=x86-64: SSE2 at most, never AVX, whatever the build host is.
# Ring 3 may use SSE (it runs natively); the ring-0 code is all assembly.
# Both crates get the same flags: the ABI crate is an rlib the app's
# staticlib (with fat LTO) takes in whole.
rustflags=(--edition 2021 --target x86_64-unknown-linux-gnu
    -C panic=abort -C opt-level=3 -C relocation-model=static -C code-model=small
    -C target-cpu=x86-64 -C codegen-units=1 -C debuginfo=0
    -C force-unwind-tables=no -C embed-bitcode=yes
    --remap-path-prefix "$here=guest" --remap-path-prefix "$abi=guest-abi"
    -D warnings)

# The guest ABI, defined once for host, app and (via ring0/guest_abi.h)
# assembly: docs/guest-abi.md.
"$rustc" "${rustflags[@]}" --crate-type rlib --crate-name vmfork_guest_abi \
    -o "$tmp/libvmfork_guest_abi.rlib" "$abi/src/lib.rs"

"$rustc" "${rustflags[@]}" -C lto=fat \
    --crate-type staticlib --crate-name vmfork_guest_app \
    --extern vmfork_guest_abi="$tmp/libvmfork_guest_abi.rlib" -L "$tmp" \
    -o "$tmp/libapp.a" "$here/app/main.rs"

ld -T "$here/guest.ld" -nostdlib -static --gc-sections --build-id=none --strip-debug \
    --no-warn-rwx-segments -z noexecstack -z max-page-size=4096 \
    -o "$tmp/guest.elf" "${objs[@]}" "$tmp/libapp.a"

# Ring 0 is emulated on PVM hosts, where SSE arithmetic, AVX and XSAVE in
# ring 0 kill the VM: ring-0 code must use no vector registers and no state
# save instructions but the one XSAVE of the test=emulation_error service.
# Ring 3 may use SSE (it runs natively) but nothing past baseline x86-64.
# Only code ranges are disassembled: data decoded as code gives noise.
addr() {
    local a
    a=$(nm "$tmp/guest.elf" | awk -v s="$1" '$3 == s { print "0x" $1 }')
    [ -n "$a" ] || { echo "guest/build.sh: symbol $1 missing" >&2; exit 1; }
    echo "$a"
}
disasm() {
    # One instruction per line, without address or <symbol> annotations.
    objdump -d --no-show-raw-insn ${3:+-M "$3"} --start-address="$(addr "$1")" \
        --stop-address="$(addr "$2")" "$tmp/guest.elf" |
        awk -F '\t' '/^ +[0-9a-f]+:/ { print $2 }' | sed -e 's/<[^>]*>//g; s/#.*//'
}
{ disasm vmfork_ring0_base vmfork_ring0_code_end
  disasm vmfork_entry64 vmfork_entry_pvh
  disasm vmfork_entry_pvh vmfork_enter_ring3 i386
  disasm vmfork_enter_ring3 vmfork_boot_code_end; } >"$tmp/ring0.dis"
disasm __app_text_start __app_text_end >"$tmp/ring3.dis"
if grep -E '%[xyz]mm|^(v[a-z0-9]+|[a-z]*ldmxcsr|[a-z]*stmxcsr|fxrstor[0-9]*|xrstor[a-z0-9]*|fxsave[0-9]*)\b' \
        "$tmp/ring0.dis" >&2; then
    echo "guest/build.sh: vector or state instructions in ring-0 code (above)" >&2
    exit 1
fi
if [ "$(grep -cE '^xsave' "$tmp/ring0.dis")" != 1 ]; then
    echo "guest/build.sh: expected exactly one XSAVE in ring 0 (svc_emulation_error)" >&2
    exit 1
fi
if grep -E '%[yz]mm|%k[0-7]\b' "$tmp/ring3.dis" >&2; then
    echo "guest/build.sh: AVX in the ring-3 app (above)" >&2
    exit 1
fi

mkdir -p "$(dirname "$out")"
cp "$tmp/guest.elf" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
