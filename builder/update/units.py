# SPDX-License-Identifier: GPL-3.0-or-later
"""Cut the source difference of two kernel package versions into fix units.

A unit is what a user would send the builder as one patch: the changed `.c` files of
one directory, plus the changed headers they include most directly. Only C sources and
headers count, outside debian/, Documentation/, tools/, scripts/, samples/ and every
architecture but x86 (the builder's own include-graph scope). Where a `.c` file is
built comes from the builder's kbuild evaluation of the older tree; which changed
`.c` files include a changed header from its include graph.

Used by `python3 -m builder update` and bench/realfixes.py.
"""

from __future__ import annotations

import heapq
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from builder.includes import SKIPPED_TOP, IncludeGraph, source_files
from builder.kbuild import Kbuild

# An include the graph could only match by file name weighs as much as this many real ones.
GUESS = 100
_INCLUDE = re.compile(rb'^[ \t]*#[ \t]*include[ \t]*[<"]([^>"\n]+)[>"]', re.M)


@dataclass(frozen=True)
class TreeDiff:
    """The .c/.h difference of two source trees (paths relative to the tree)."""

    changed: tuple[str, ...]
    added: tuple[str, ...]
    deleted: tuple[str, ...]


@dataclass
class Unit:
    """One fix unit: the files of one patch, and what the older tree says about them."""

    name: str  # e.g. fs/ext4, or include/linux/fs.h for a header alone
    sources: list[str] = field(default_factory=list)  # changed .c files that are built
    headers: list[str] = field(default_factory=list)  # changed (or new) headers
    unbuilt: list[str] = field(default_factory=list)  # changed .c files this config skips
    placements: dict[str, str] = field(default_factory=dict)  # source -> vmlinux/module
    reason: str = ""  # why nothing of it is built, when it is "not in this config"

    @property
    def files(self) -> list[str]:
        return sorted(self.sources + self.headers)

    @property
    def in_config(self) -> bool:
        return bool(self.sources or self.headers) and not self.reason


def _wanted(rel: str) -> bool:
    parts = rel.split("/")
    if parts[0] in SKIPPED_TOP:
        return False
    if parts[0] == "arch" and (len(parts) < 3 or parts[1] != "x86"):
        return False
    return rel.endswith((".c", ".h"))


def _c_files(root: Path) -> dict[str, int]:
    """Relative path -> size of every .c/.h file in scope (the builder's include scan's)."""
    return {rel: path.stat().st_size for rel, path in source_files(root) if _wanted(rel)}


def tree_diff(old: Path, new: Path) -> TreeDiff:
    """Compare two trees file by file (size first, then bytes)."""
    before, after = _c_files(old), _c_files(new)
    changed = []
    for rel in sorted(before.keys() & after.keys()):
        if before[rel] != after[rel] or (old / rel).read_bytes() != (new / rel).read_bytes():
            changed.append(rel)
    return TreeDiff(tuple(changed), tuple(sorted(after.keys() - before.keys())),
                    tuple(sorted(before.keys() - after.keys())))


class HeaderReach:
    """Include distance from a header up to the files that include it (older tree)."""

    def __init__(self, graph: IncludeGraph) -> None:
        self.graph = graph
        self.by_basename: dict[str, list[str]] = {}
        for name in graph.unresolved:
            self.by_basename.setdefault(os.path.basename(name), []).append(name)

    def includers(self, header: str, guessed: bool = True) -> list[tuple[str, int]]:
        """(file, cost) of each file that includes `header`: 1 for a resolved #include,
        GUESS for one the graph only matched by its file name (an -I path it cannot see)."""
        found = [(user, 1) for user in self.graph.includers.get(header, [])]
        if guessed:
            for name in self.by_basename.get(os.path.basename(header), []):
                if header.endswith("/" + name) or header == name:
                    found += [(user, GUESS) for user in self.graph.unresolved[name]]
        return found

    def distances(self, header: str, guessed: bool = True) -> dict[str, int]:
        """File -> cheapest chain of #includes from it to `header` (Dijkstra)."""
        dist = {header: 0}
        queue = [(0, header)]
        while queue:
            d, current = heapq.heappop(queue)
            if d > dist[current]:
                continue
            for user, cost in self.includers(current, guessed):
                if d + cost < dist.get(user, 1 << 30):
                    dist[user] = d + cost
                    heapq.heappush(queue, (d + cost, user))
        del dist[header]
        return dist


def _direct_includes(text: bytes, rel: str, candidates: set[str]) -> set[str]:
    """Which of `candidates` (new headers) the file's #include lines name."""
    named = set()
    for raw in _INCLUDE.findall(text):
        name = os.path.normpath(raw.decode(errors="replace").strip())
        local = os.path.normpath(os.path.join(os.path.dirname(rel), name))
        for header in candidates:
            if header == local or header.endswith("/" + name):
                named.add(header)
    return named


def cut_units(diff: TreeDiff, old: Path, new: Path, build_dir: Path,
              make_args: list[str]) -> tuple[list[Unit], dict[str, str]]:
    """Units of the difference, and why files were left out of every unit.

    A changed header goes with the directory whose built, changed .c files include it
    at the smallest include distance (the most such files wins, then the directory
    nearest the header, then the name); a header no built, changed .c file includes is
    a unit alone. A new header goes with every unit whose files include it directly.
    """
    kbuild = Kbuild(old, build_dir, make_args)
    reach = HeaderReach(IncludeGraph.load(old, build_dir))
    left_out: dict[str, str] = {}
    units: dict[str, Unit] = {}
    for rel in diff.changed:
        if rel.endswith(".c"):
            directory = os.path.dirname(rel)
            unit = units.setdefault(directory, Unit(directory))
            placed = kbuild.placement(rel)
            if placed.target:
                unit.sources.append(rel)
                unit.placements[rel] = placed.target
            elif reach.includers(rel, guessed=False):  # a .c file #included by another
                unit.headers.append(rel)
            else:
                unit.unbuilt.append(rel)
                unit.reason = unit.reason or placed.reason
    built = {src: name for name, unit in units.items() for src in unit.sources}
    for header in [h for h in diff.changed if h.endswith(".h")]:
        dist = {f: d for f, d in reach.distances(header).items() if f in built}
        if not dist:
            units[header] = Unit(header, headers=[header])
            continue
        nearest = min(dist.values())
        counts: dict[str, int] = {}
        for src, d in dist.items():
            if d == nearest:
                counts[built[src]] = counts.get(built[src], 0) + 1
        home = min(counts, key=lambda u: (-counts[u], -len(os.path.commonpath([u, header])), u))
        units[home].headers.append(header)
    for unit in units.values():
        if unit.sources or unit.headers:
            unit.reason = ""
    for header in [h for h in diff.added if h.endswith(".h")]:
        users = [u for u in units.values() if any(
            header in _direct_includes((new / f).read_bytes(), f, {header}) for f in u.files)]
        for unit in users:
            unit.headers.append(header)
        if not users:
            left_out[header] = "new header that no changed file of a unit includes"
    for rel in diff.added:
        if rel.endswith(".c"):
            left_out[rel] = "new .c file: the running kernel has no such object"
    for rel in diff.deleted:
        left_out[rel] = "deleted file: a live patch changes files in place"
    return sorted(units.values(), key=lambda u: u.name), left_out


def header_reach(unit: Unit, old: Path, build_dir: Path, make_args: list[str],
                 guessed: bool = True) -> int:
    """How many other built files include the unit's changed headers: what the builder
    recompiles (with `guessed`, the builder's own over-approximation; without, only
    includes resolved to the header's path)."""
    if not unit.headers:
        return 0
    kbuild = Kbuild(old, build_dir, make_args)
    reach = HeaderReach(IncludeGraph.load(old, build_dir))
    users: set[str] = set()
    for header in [h for h in unit.headers if (old / h).is_file()]:
        users |= {f for f in reach.distances(header, guessed) if f.endswith(".c")}
    return sum(1 for c in sorted(users - set(unit.sources))
               if (old / c).is_file() and kbuild.placement(c).target)


def unit_patch(unit: Unit, old: Path, new: Path) -> bytes:
    """diff -u of the unit's files, old -> new, with a/ b/ prefixes (patch -p1)."""
    out = b""
    for rel in unit.files:
        before = old / rel
        argv = ["diff", "-u", "--label", f"a/{rel}" if before.exists() else "/dev/null",
                "--label", f"b/{rel}", str(before if before.exists() else "/dev/null"),
                str(new / rel)]
        proc = subprocess.run(argv, capture_output=True, check=False)
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"diff failed for {rel}: {proc.stderr.decode(errors='replace')}")
        out += proc.stdout
    return out


__all__ = ["TreeDiff", "Unit", "tree_diff", "cut_units", "unit_patch", "header_reach"]
