#!/usr/bin/env bash
# Builds the Linux guest artifacts (docs/linux-guest.md): the 6.12 kernel
# (vmlinux + bzImage) and the ext4 DAX rootfs, both cached under
# ~/.cache/vmfork/ by a hash of their inputs. Prints `vmlinux=PATH`,
# `bzImage=PATH` and `rootfs=PATH` on stdout; everything else goes to stderr.
#
# The first run builds the kernel (about 3-5 minutes on 2 cores); later runs
# find everything in the cache and return at once. Options given to this
# script (e.g. --cache DIR) are passed to both subcommands.
# Needs the packages of scripts/setup-host.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p vmfork-guest-artifacts
bin="${CARGO_TARGET_DIR:-target}/release/vmfork-guest-artifacts"

"$bin" linux "$@"
"$bin" rootfs "$@"
