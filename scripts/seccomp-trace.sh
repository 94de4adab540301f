#!/usr/bin/env bash
# Lists, per thread name, the system calls one vmfork command makes: what
# each thread's seccomp list must allow (docs/seccomp.md).
#
#   bash scripts/seccomp-trace.sh clone /tmp/tpl -n 5 --backend uffd
#
# The command runs unfiltered (--no-seccomp) under `strace -f`; threads are
# told apart by the name they set (PR_SET_NAME), main threads by their
# execve. Calls a thread makes before its filter goes on (start-up: rseq,
# set_robust_list, its name, its signal stack) are listed too, though they
# run under its parent's list. Needs strace and python3; VMFORK_BIN picks
# the binary (default target/release/vmfork).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${VMFORK_BIN:-target/release/vmfork}"
command -v strace >/dev/null || { echo "seccomp-trace: needs strace (apt-get install strace)" >&2; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
strace -f -ff -qq -e signal=none -o "$out/t" "$bin" --no-seccomp "$@" >/dev/null || true
python3 - "$out" <<'EOF'
import collections, os, re, sys

# Arguments worth showing, by system call: the index of the argument the
# lists check (ioctl request, socket family, prctl option, ...).
KEY_ARG = {"ioctl": 1, "socket": 0, "prctl": 0, "fcntl": 1, "tgkill": 2,
           "rt_sigaction": 0, "clone": 0, "seccomp": 0}
calls = collections.defaultdict(lambda: collections.defaultdict(set))
for trace in os.listdir(sys.argv[1]):
    with open(os.path.join(sys.argv[1], trace), errors="replace") as f:
        lines = f.read().splitlines()
    names = [re.match(r'prctl\(PR_SET_NAME, "([^"]*)"', l) for l in lines]
    names = [re.sub(r"\d+$", "N", n.group(1)) for n in names if n]
    if any(l.startswith("execve(") for l in lines):
        name = "main"
    else:
        name = names[0] if names else "unnamed"
    for line in lines:
        m = re.match(r"(\w+)\((.*)", line)
        if not m:
            continue
        call, rest = m.groups()
        arg = ""
        if call in KEY_ARG:
            args = re.split(r",\s*", rest)
            if KEY_ARG[call] < len(args):
                arg = args[KEY_ARG[call]].rstrip(")")
        calls[name][call].add(arg)
for name in sorted(calls):
    print(f"{name}:")
    for call in sorted(calls[name]):
        args = sorted(a for a in calls[name][call] if a)
        print(f"    {call}" + (f"  [{', '.join(args)}]" if args else ""))
EOF
