#!/usr/bin/env python3
"""Fails if a dependency of the library (not a dev-dependency), as Cargo.lock resolves it,
declares a rust-version newer than the crate's own.

Reads `cargo metadata --format-version 1 --all-features --locked` on stdin. Every feature and every
platform counts, so the check errs on the side of a higher minimum.
"""
import json
import sys

CRATE = "tower-adaptive-timeout"


def version(text):
    """'1.85' or '1.85.0' as a comparable tuple."""
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


meta = json.load(sys.stdin)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
root = next(p for p in meta["packages"] if p["name"] == CRATE and p["source"] is None)
ours = root.get("rust_version")
if not ours:
    sys.exit(f"{CRATE} declares no rust-version")

seen, stack = set(), [root["id"]]
while stack:
    for dep in nodes[stack.pop()]["deps"]:
        normal_or_build = any(k["kind"] != "dev" for k in dep["dep_kinds"])
        if normal_or_build and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            stack.append(dep["pkg"])

newer = sorted(
    (packages[i]["name"], packages[i]["version"], packages[i]["rust_version"])
    for i in seen
    if packages[i].get("rust_version") and version(packages[i]["rust_version"]) > version(ours)
)
for name, ver, needs in newer:
    print(f"{name} {ver} needs Rust {needs}, newer than rust-version {ours}")
if newer:
    sys.exit(1)
needs = [packages[i]["rust_version"] for i in seen if packages[i].get("rust_version")]
newest = max(needs, key=version, default="nothing")
print(f"rust-version {ours} holds: {len(seen)} library dependencies, the newest needs {newest}")
