# SPDX-License-Identifier: GPL-3.0-or-later
"""Which C files include a header, directly or through other headers.

The graph is read from the `#include` lines of the source tree (x86 and generic code)
and of the prepared tree's generated headers, once per tree (cached). It errs on the
side of too many: conditional includes count, and an include it cannot resolve counts
for every header whose path ends with that name. The compile stage then keeps only the
units kbuild builds in this configuration and whose compiler-recorded dependencies
(kbuild's .cmd files) name the header, so too many costs time, never correctness.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from pathlib import Path

RECIPE = 1
_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*([<"])([^>"\n]+)[>"]', re.M)
SKIPPED_TOP = {"Documentation", "tools", "scripts", "samples", "LICENSES", "debian", "usr"}
# Where `#include <…>` looks, in kbuild's order (see the -I options of any .cmd file).
SYSTEM_DIRS = ("arch/x86/include", "arch/x86/include/generated", "include",
               "arch/x86/include/uapi", "arch/x86/include/generated/uapi", "include/uapi",
               "include/generated/uapi")


class IncludeGraph:
    """Reverse include graph: header -> files that include it."""

    def __init__(self, includers: dict[str, list[str]], unresolved: dict[str, list[str]]):
        self.includers = includers  # resolved header path -> including files
        self.unresolved = unresolved  # include name nobody resolved -> including files
        self._by_basename: dict[str, list[str]] = {}
        for name in unresolved:
            self._by_basename.setdefault(os.path.basename(name), []).append(name)

    @classmethod
    def load(cls, source_dir: Path, build_dir: Path) -> IncludeGraph:
        cache = build_dir / ".klp-includes.json"
        if cache.is_file():
            raw = json.loads(cache.read_text())
            if raw.get("recipe") == RECIPE:
                return cls(raw["includers"], raw["unresolved"])
        graph = cls.scan(source_dir, build_dir)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps({"recipe": RECIPE, "includers": graph.includers,
                                   "unresolved": graph.unresolved}))
        tmp.replace(cache)
        return graph

    @classmethod
    def scan(cls, source_dir: Path, build_dir: Path) -> IncludeGraph:
        files = dict(source_files(source_dir))  # path as kbuild names it -> file
        for gen in ("arch/x86/include/generated", "include/generated"):
            for root, _dirs, names in os.walk(build_dir / gen):
                rel_root = os.path.relpath(root, build_dir)
                files.update({f"{rel_root}/{n}": Path(root, n) for n in names
                              if n.endswith(".h")})
        includers: dict[str, list[str]] = {}
        unresolved: dict[str, list[str]] = {}
        for rel, path in files.items():
            text = path.read_bytes()
            if b"include" not in text:
                continue
            for quote, raw in _INCLUDE.findall(text):
                name = os.path.normpath(raw.decode(errors="replace").strip())
                target = _resolve(name, rel, quote == b'"', files)
                if target is None:
                    unresolved.setdefault(name, []).append(rel)
                else:
                    includers.setdefault(target, []).append(rel)
        return cls(includers, unresolved)

    def dependents(self, headers: list[str]) -> list[str]:
        """Every .c file that includes one of `headers`, directly or indirectly."""
        seen = set(headers)
        queue = deque(headers)
        while queue:
            header = queue.popleft()
            found = list(self.includers.get(header, []))
            for name in self._by_basename.get(os.path.basename(header), []):
                if header.endswith("/" + name) or header == name:
                    found += self.unresolved[name]
            for user in found:
                if user not in seen:
                    seen.add(user)
                    queue.append(user)
        return sorted(p for p in seen if p.endswith(".c"))


def source_files(source_dir: Path):
    """(path relative to the tree, file) of every .c and .h of x86 and generic code."""
    for top in sorted(os.listdir(source_dir)):
        if top in SKIPPED_TOP or not (source_dir / top).is_dir():
            continue
        for root, dirs, names in os.walk(source_dir / top):
            rel_root = os.path.relpath(root, source_dir)
            if rel_root == "arch":
                dirs[:] = [d for d in dirs if d == "x86"]
            for name in names:
                if name.endswith((".c", ".h")):
                    yield f"{rel_root}/{name}", Path(root, name)


def _resolve(name: str, including: str, quoted: bool, files: dict[str, Path]) -> str | None:
    if quoted:
        local = os.path.normpath(os.path.join(os.path.dirname(including), name))
        if local in files:
            return local
    for directory in SYSTEM_DIRS:
        candidate = f"{directory}/{name}"
        if candidate in files:
            return candidate
    return None


__all__ = ["IncludeGraph", "source_files"]
