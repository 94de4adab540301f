#!/usr/bin/env python3
"""Fails if any Rust file or module of the workspace imports itself back.

Cargo already refuses cycles between crates. Inside a crate it does not:
two files may use each other, and so may two top-level modules. This reads
every `use` tree and every `crate::`/`super::`/`self::` path of each crate
(the workspace members, plus guest/app, which is built without cargo),
resolves each to the file that defines it, and reports every strongly
connected set of files, and of top-level modules, larger than one.

Usage: scripts/check-cycles.py [WORKSPACE]   (exit 0: no cycle; 1: cycles printed)
"""

import re
import sys
from pathlib import Path

ROOT = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent


def crate_roots():
    members = re.search(r"members\s*=\s*\[([^\]]*)\]", (ROOT / "Cargo.toml").read_text())
    for name in re.findall(r'"([^"]+)"', members.group(1)):
        src = ROOT / name / "src"
        for root in ("lib.rs", "main.rs"):
            if (src / root).exists():
                yield name, src / root
    yield "guest", ROOT / "guest" / "app" / "main.rs"


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return re.sub(r"//[^\n]*", "", text)


def module_files(root):
    """Module path (tuple) -> file, following `mod x;` declarations."""
    found = {}

    def walk(path, file):
        found[path] = file
        text = strip_comments(file.read_text())
        base = file.parent if file.name in ("lib.rs", "main.rs", "mod.rs") else file.with_suffix("")
        for attr, name in re.findall(r"(#\[path\s*=\s*\"[^\"]*\"\]\s*)?(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", text):
            if attr:
                continue  # #[path] modules are test harness includes
            for candidate in (base / f"{name}.rs", base / name / "mod.rs"):
                if candidate.exists():
                    walk(path + (name,), candidate)
                    break

    walk((), root)
    return found


def expand_use(tree):
    """'a::{b, c::{d, e}}' -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                prefix, inner = tree[:start], tree[start + 1 : i]
                parts, d, last = [], 0, 0
                for j, c in enumerate(inner):
                    d += c == "{"
                    d -= c == "}"
                    if c == "," and d == 0:
                        parts.append(inner[last:j])
                        last = j + 1
                parts.append(inner[last:])
                out = []
                for part in filter(None, parts):
                    if part == "self":
                        out.append(prefix.rstrip(":"))
                    else:
                        out += expand_use(prefix + part)
                return out
    return [tree]


def drop_inline_modules(text):
    """Removes `mod x { ... }` bodies (test modules): their `super::` is the
    file itself, and test code is not part of the import structure."""
    while True:
        m = re.search(r"\bmod\s+\w+\s*\{", text)
        if not m:
            return text
        depth, i = 0, m.end() - 1
        for i in range(m.end() - 1, len(text)):
            depth += text[i] == "{"
            depth -= text[i] == "}"
            if depth == 0:
                break
        text = text[: m.start()] + text[i + 1 :]


def references(text):
    text = drop_inline_modules(strip_comments(text))
    paths = []
    for tree in re.findall(r"\buse\s+([^;]+);", text):
        paths += expand_use(tree.split(" as ")[0])
    paths += re.findall(r"(?<![\w:])((?:crate|super|self)(?:::\w+)+)", text)
    return paths


def resolve(path, here, modules, depth=0):
    """The module (a key of `modules`) defining what a path names, or None
    if it is outside the crate. A name a module only re-exports (`pub use
    error::Error` in lib.rs) resolves to the module it comes from."""
    segs = [s for s in path.split("::") if s]
    if not segs:
        return None
    if segs[0] == "crate":
        base, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        base = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
    else:
        base = here  # a child module named without self::
        if base + (segs[0],) not in modules:
            return None
    best, rest = None, segs
    for n in range(len(segs) + 1):
        if base + tuple(segs[:n]) in modules:
            best, rest = base + tuple(segs[:n]), segs[n:]
    if best is not None and rest and depth < 8:
        text = strip_comments(modules[best].read_text())
        for tree in re.findall(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", text):
            for used in expand_use(tree):
                if used.split(" as ")[-1].split("::")[-1] == rest[0]:
                    found = resolve(used.split(" as ")[0], best, modules, depth + 1)
                    if found is not None:
                        return found
    return best


def cycles(edges):
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    failed = False
    for crate, root in crate_roots():
        modules = module_files(root)
        file_edges, module_edges = {}, {}
        for path, file in modules.items():
            for ref in references(file.read_text()):
                target = resolve(ref, path, modules)
                if target is None or target == path:
                    continue
                file_edges.setdefault(path, set()).add(target)
                if path and target and path[0] != target[0]:
                    module_edges.setdefault(path[0], set()).add(target[0])
        for kind, edges, show in (
            ("files", file_edges, lambda p: str(modules[p].relative_to(ROOT))),
            ("modules", module_edges, lambda m: f"{crate}::{m}"),
        ):
            for comp in cycles(edges):
                failed = True
                print(f"cycle between {kind} of {crate}: " + " <-> ".join(show(c) for c in comp))
    if failed:
        return 1
    print("check-cycles: no import cycle between files or modules of any crate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
