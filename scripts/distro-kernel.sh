#!/usr/bin/env bash
# A distribution's stock kernel with its own initrd, for the "kernels users
# bring" tests and benchmark (docs/linux-guest.md, "A distribution's
# kernel"): Debian's kernel package (the one linux-image-amd64 depends on,
# the same the SVM rig runs) and an initrd made for it by Debian's own
# mkinitramfs, which adds the pmem modules a DAX root on /dev/pmem0 needs.
#
#   bash scripts/distro-kernel.sh      # prints DIR, holding vmlinuz and initrd.img
#
# The package is downloaded with `apt-get download`, never installed: the
# initrd is built in a private mount namespace that shows the package's
# /lib/modules and /boot in place of the host's. The result is cached under
# ~/.cache/vmfork/distro-kernel-<key>/, <key> hashing the .deb's SHA-256
# (from apt's index), VERSION and the initramfs configuration below.
set -euo pipefail
cd "$(dirname "$0")/.."

# Bump when the way the kernel or initrd is prepared changes.
VERSION=1

say() { echo "distro-kernel: $*" >&2; }
fail() { echo "distro-kernel: $*" >&2; exit 1; }

bash scripts/setup-host.sh

cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/vmfork"
source scripts/lib/stock-kernel.sh
stock_kernel_lookup

# The initramfs configuration: Debian's, except MODULES=list (only the
# modules named below, a 7.5 MB initrd instead of 37 MB with MODULES=most, which
# a guest would unpack on every cold boot) and gzip, which every kernel
# unpacks. The modules are what a DAX root on legacy persistent memory
# needs: nd_e820 binds the e820 type-12 range, nd_pmem makes /dev/pmem0
# (MODULES=most leaves both out), and ext4, a module in Debian's kernel.
read -r -d '' conf_text <<'CONF' || true
MODULES=list
BUSYBOX=auto
KEYMAP=n
COMPRESS=gzip
DEVICE=
NFSROOT=auto
RUNSIZE=10%
FSTYPE=auto
CONF
read -r -d '' modules_text <<'MODULES' || true
nd_e820
nd_pmem
ext4
MODULES

key="$(printf '%s\n' distro-kernel "$VERSION" "$deb_sha" "$conf_text" "$modules_text" | sha256sum | cut -c1-16)"
out="$cache_root/distro-kernel-$key"
if [ -s "$out/initrd.img" ] && [ -s "$out/vmlinuz" ]; then
    echo "$out"
    exit 0
fi

say "preparing $pkg and its initrd into $out"
mkdir -p "$cache_root"
find "$cache_root" -maxdepth 1 -name '.tmp-distro-kernel-*' -mmin +60 -exec rm -rf {} +
stage="$(mktemp -d "$cache_root/.tmp-distro-kernel-$key-XXXXXX")"
trap 'rm -rf "$stage"' EXIT
stock_kernel_unpack "$stage"
mkdir -p "$stage/conf/conf.d" "$stage/conf/hooks" "$stage/conf/scripts"
printf '%s\n' "$conf_text" >"$stage/conf/initramfs.conf"
printf '%s\n' "$modules_text" >"$stage/conf/modules"

# mkinitramfs reads /lib/modules/<kver> and /boot/config-<kver> and has no
# option to look elsewhere, so a private mount namespace shows it the
# package's. The empty mount point is all this leaves on the host.
[ -d /usr/lib/modules ] || { [[ $EUID -eq 0 ]] && mkdir -p /usr/lib/modules; } ||
    fail "/lib/modules is missing and only root can create the mount point"
userns=()
[[ $EUID -eq 0 ]] || userns=(-r)
unshare "${userns[@]}" -m bash -euc '
    mount --make-rprivate /
    mount --bind "$1/pkg/lib/modules" /usr/lib/modules
    mount --bind "$1/pkg/boot" /boot
    mkinitramfs -d "$1/conf" -o "$1/initrd.img" "$2"
' _ "$stage" "$kver" >&2 || fail "mkinitramfs failed for $kver"
# Debian's initrd must carry the pmem modules, or the test would only
# prove a kernel panic.
listing="$(lsinitramfs "$stage/initrd.img")"
for m in nd_e820 nd_pmem ext4; do
    grep -q "/$m\.ko" <<<"$listing" || fail "the initrd has no $m module"
done

mkdir "$stage/out"
cp "$stage/pkg/boot/vmlinuz-$kver" "$stage/out/vmlinuz"
mv "$stage/initrd.img" "$stage/out/initrd.img"
printf 'package %s\nkernel %s\ndeb-sha256 %s\nversion %s\n' "$pkg" "$kver" "$deb_sha" "$VERSION" >"$stage/out/manifest.txt"
rm -rf "$out"
mv "$stage/out" "$out"
rm -rf "$stage"
trap - EXIT
echo "$out"
