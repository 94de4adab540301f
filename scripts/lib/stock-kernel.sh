# Debian's stock kernel package, shared by test-svm.sh (the rig's own
# kernel) and distro-kernel.sh (the distribution kernel vmfork boots).
# Sourced, not run: the caller defines fail() first.
#
# stock_kernel_lookup sets pkg (the linux-image-* package that
# linux-image-amd64 depends on), kver (its kernel release) and deb_sha
# (the .deb's SHA-256 from apt's index, part of the callers' cache keys),
# fetching the package lists once on a host that has none.
stock_kernel_lookup() {
    local sudo=()
    pkg="$(stock_kernel_dependency)"
    if [ -z "$pkg" ]; then
        # No package lists yet (a fresh container): fetch them once.
        [[ $EUID -eq 0 ]] || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq
        pkg="$(stock_kernel_dependency)"
    fi
    [ -n "$pkg" ] || fail "apt knows no linux-image package behind linux-image-amd64"
    kver="${pkg#linux-image-}"
    deb_sha="$(apt-cache show --no-all-versions "$pkg" | awk '/^SHA256:/{print $2; exit}')"
    [ -n "$deb_sha" ] || fail "apt gives no SHA256 for $pkg"
}

stock_kernel_dependency() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}'
}

# stock_kernel_unpack STAGE: downloads $pkg into STAGE (never installs it),
# checks it against $deb_sha, unpacks it into STAGE/pkg and builds its
# modules.dep there.
stock_kernel_unpack() {
    local stage="$1" deb sandbox=()
    # As root, apt would drop to its _apt user, which cannot write there.
    [[ $EUID -ne 0 ]] || sandbox=(-o APT::Sandbox::User=root)
    (cd "$stage" && apt-get download -q "${sandbox[@]}" "$pkg" >&2)
    deb="$(ls "$stage"/*.deb)"
    echo "$deb_sha  $deb" | sha256sum -c --quiet - || fail "$deb: SHA-256 differs from apt's index"
    dpkg -x "$deb" "$stage/pkg"
    depmod -b "$stage/pkg" "$kver"
}
