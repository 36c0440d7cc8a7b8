#!/usr/bin/env python3
"""Prints the crate's module dependency graph (from `use crate::` and
`use super::` lines, tests excluded) and fails if it has a cycle, at the
level of files and at the level of top-level modules (folders)."""
import os, re, sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] in ("mod", "lib"):
        rel = rel[:-1]
    return "::".join(rel) or "crate"

files = {}
for d, _, names in os.walk(ROOT):
    for n in names:
        if n.endswith(".rs"):
            p = os.path.join(d, n)
            if "/tests" in p or n == "tests.rs":
                continue
            files[module_of(p)] = p

def deps(mod, text):
    text = text.split("#[cfg(test)]")[0]
    out = set()
    parent = mod.split("::")[:-1]
    for m in re.finditer(r"\buse\s+(?:(crate|super|self)::)?([\w:]+|\{[^;]*)", text):
        base, rest = m.group(1) or "self", m.group(2)
        first = re.match(r"\{?\s*(\w+)", rest)
        if not first:
            continue
        head = first.group(1)
        segments = re.findall(r"\w+", rest.split("{")[0]) or [head]
        if base == "crate":
            prefix = []
        elif base == "self":
            prefix = mod.split("::")
        else:
            prefix = parent
        # The longest path that names a module: `crate::a::b::Item` is `a::b`.
        target = None
        for n in range(len(segments), 0, -1):
            candidate = "::".join(prefix + segments[:n])
            if candidate in files:
                target = candidate
                break
        if target is None:
            target = "::".join(prefix) if prefix else head
        if target in files and target != mod:
            out.add(target)
    return out

graph = {m: deps(m, open(p).read()) for m, p in files.items()}
graph = {m: {d for d in ds if d not in ("crate",)} for m, ds in graph.items() if m != "crate"}

def find_cycle(g):
    color, stack = {}, []
    def visit(n):
        color[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if color.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if not color.get(m):
                c = visit(m)
                if c:
                    return c
        color[n] = 2
        stack.pop()
    for n in sorted(g):
        if not color.get(n):
            c = visit(n)
            if c:
                return c

def top(m):
    return m.split("::")[0]

folders = {}
for m, ds in graph.items():
    for d in ds:
        if top(d) != top(m):
            folders.setdefault(top(m), set()).add(top(d))
for m in graph:
    folders.setdefault(top(m), set())

for m in sorted(graph):
    print(f"{m:28} -> {', '.join(sorted(graph[m])) or '-'}")
print()
for f in sorted(folders):
    print(f"{f:12} -> {', '.join(sorted(folders[f])) or '-'}")
ok = True
for name, g in (("file", graph), ("folder", folders)):
    c = find_cycle(g)
    if c:
        print(f"CYCLE ({name} level): {' -> '.join(c)}")
        ok = False
print("no cycle" if ok else "")
sys.exit(0 if ok else 1)
