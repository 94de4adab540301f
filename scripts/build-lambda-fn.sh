#!/usr/bin/env bash
# Builds tests/lambda-fn, a Lambda function written against AWS's own
# lambda_runtime crate, into the `bootstrap` executable that vmfork's tests
# run unmodified in Linux guests (the guest agent plays the Runtime API).
# Prints the path of that executable as the only line on stdout; cargo's
# output goes to stderr.
#
# The binary is static so that it runs in any guest rootfs, whatever libc
# (if any) it carries. It is cached under ~/.cache/vmfork/ by a hash of its
# sources, lockfile and compiler, so tests can call this every time: only
# the first call compiles (about a minute on 2 cores), later calls return
# at once. Usage: scripts/build-lambda-fn.sh
set -euo pipefail
cd "$(dirname "$0")/.."

src=tests/lambda-fn
cache="$HOME/.cache/vmfork"
target=x86_64-unknown-linux-gnu

# Sorted and NUL-separated so that the key does not depend on readdir order
# or on odd file names; the rustc version is in it because a new compiler
# (or std) makes a different binary from the same sources.
key=$(
    {
        find "$src/Cargo.toml" "$src/Cargo.lock" "$src/src" -type f -print0 |
            LC_ALL=C sort -z | xargs -0 sha256sum
        rustc --version
    } | sha256sum | cut -c1-16
)
dir="$cache/lambda-fn-$key"
out="$dir/bootstrap"

if [[ -x "$out" ]]; then
    echo "$out"
    exit 0
fi

mkdir -p "$dir"
# The target dir is shared between keys, so a source change rebuilds only
# this crate, not its ~70 dependencies. --locked: the committed Cargo.lock
# is part of the key, so cargo must not pick other versions behind it.
CARGO_TARGET_DIR="$cache/lambda-fn-target" \
    RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --target "$target" \
    --manifest-path "$src/Cargo.toml" >&2
built="$cache/lambda-fn-target/$target/release/bootstrap"

# A dynamically linked binary would pass every host test and then fail in
# a guest without the host's libc; refuse to publish one. rustc links
# crt-static glibc binaries as static-pie (no interpreter, no NEEDED), which
# file(1) calls "static-pie linked" and ldd "statically linked" (older ldd:
# "not a dynamic executable").
if ! ldd "$built" 2>&1 | grep -Eq 'not a dynamic executable|statically linked' &&
    ! file -L "$built" | grep -Eq 'statically linked|static-pie linked'; then
    echo "build-lambda-fn: $built is not statically linked:" >&2
    file -L "$built" >&2
    exit 1
fi

# Copy then rename: a concurrent caller sees either no bootstrap or a
# complete one, never a half-written file that the check above would accept.
tmp=$(mktemp "$dir/.bootstrap.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cp "$built" "$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "$out"
