#!/usr/bin/env python3
"""Import cycles among the files of a Rust crate's src/, of any length.

Files are nodes. An edge is a path the file names that starts with `crate::` or `super::`
(in a `use` statement, braces expanded across lines, or anywhere in the code; comments and
string literals are left out), resolved to the longest module path that is a file.
`mod` lines and the `pub use` re-exports of lib.rs and mod.rs files are not edges: they make
the crate's face, not a dependency. A module and its own ancestors or descendants may import
each other (a parent and the child files that split its own type); no other cycle is allowed.

Prints one line per cycle and `cycles: N`; exits 1 if N > 0.
Usage: modcycles.py [CRATE_DIR]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
src = os.path.join(root, "src")

mods = {}  # module path (tuple) -> file
for d, _, files in os.walk(src):
    for f in files:
        if f.endswith(".rs"):
            rel = os.path.relpath(os.path.join(d, f), src)[:-3].split(os.sep)
            if rel[-1] in ("lib", "mod", "main"):
                rel = rel[:-1]
            mods[tuple(rel)] = os.path.join(d, f)


def strip(text):
    """The code without comments, string and char literals."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not text[i - 1].isalnum()):
            hashes = len(re.match(r"r(#*)", text[i:]).group(1))
            end = text.find('"' + "#" * hashes, i + 2 + hashes)
            i = n if end < 0 else end + 1 + hashes
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12]):
            i += len(re.match(r"'(\\.[^']*|[^\\'])'", text[i:i + 12]).group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def expand(tree):
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, re.S)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p for part in parts if part.strip() for p in expand(prefix + part.strip())]


def resolve(path):
    for n in range(len(path), 0, -1):
        if tuple(path[:n]) in mods:
            return tuple(path[:n])
    return None


def target(module, words):
    """The module a path names from inside `module` (a file's module, plus the names of the
    inline modules around the path)."""
    if words[0] == "crate":
        base, words = [], words[1:]
    elif words[0] in ("super", "self"):
        base = list(module)
        while words and words[0] in ("super", "self"):
            if words[0] == "super":
                base = base[:-1]
            words = words[1:]
    else:
        return None
    return resolve(base + [w for w in words if w and w not in ("self", "*")])


def inline_modules(code):
    """For each offset where it changes, the names of the inline `mod x { .. }` around it."""
    marks, names, depth = [(0, ())], [], 0
    opens = {m.end() - 1: m.group(1) for m in re.finditer(r"\bmod\s+(\w+)\s*\{", code)}
    for i, c in enumerate(code):
        if c == "{":
            depth += 1
            if i in opens:
                names.append((opens[i], depth))
                marks.append((i, tuple(n for n, _ in names)))
        elif c == "}":
            if names and names[-1][1] == depth:
                names.pop()
                marks.append((i, tuple(n for n, _ in names)))
            depth -= 1
    return marks


def around(marks, pos):
    inside = ()
    for at, names in marks:
        if at > pos:
            break
        inside = names
    return inside


edges = {m: set() for m in mods}
for module, path in mods.items():
    is_face = os.path.basename(path) in ("lib.rs", "mod.rs")
    code = strip(open(path, encoding="utf-8", errors="replace").read())
    marks = inline_modules(code)

    def add(pos, words):
        t = target(module + around(marks, pos), words)
        if t is not None and t != module and t != ():
            edges[module].add(t)

    use = r"(?m)^[ \t]*((?:pub(?:\([^)]*\))?\s+)?)use\s+([^;]+);"
    for stmt in re.finditer(use, code):
        if is_face and stmt.group(1) and not around(marks, stmt.start()):
            continue
        for full in expand(re.sub(r"\s+", " ", stmt.group(2))):
            full = re.sub(r"\s+as\s+\w+$", "", full).replace(" ", "")
            add(stmt.start(), full.split("::"))
    body = re.sub(use, lambda m: " " * len(m.group(0)), code)
    for m in re.finditer(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", body):
        add(m.start(), m.group(1).split("::"))


def related(a, b):
    n = min(len(a), len(b))
    return a[:n] == b[:n]


for m in edges:
    edges[m] = {t for t in edges[m] if not related(m, t)}

# Strongly connected components (Tarjan, iterative).
index, low, on, stack, comps, counter = {}, {}, set(), [], [], [0]
for start in edges:
    if start in index:
        continue
    work = [(start, iter(sorted(edges[start])))]
    index[start] = low[start] = counter[0]
    counter[0] += 1
    stack.append(start)
    on.add(start)
    while work:
        v, it = work[-1]
        w = next(it, None)
        if w is not None:
            if w not in index:
                index[w] = low[w] = counter[0]
                counter[0] += 1
                stack.append(w)
                on.add(w)
                work.append((w, iter(sorted(edges[w]))))
            elif w in on:
                low[v] = min(low[v], index[w])
            continue
        work.pop()
        if work:
            low[work[-1][0]] = min(low[work[-1][0]], low[v])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)


def name(m):
    return "/".join(m) or "lib"


for comp in comps:
    members = set(comp)
    print("cycle: " + ", ".join(sorted(name(x) for x in comp)))
    for m in sorted(comp):
        inside = sorted(name(t) for t in edges[m] if t in members)
        print(f"  {name(m)} -> {', '.join(inside)}")
print(f"cycles: {len(comps)}")
sys.exit(1 if comps else 0)
