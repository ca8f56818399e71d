# SPDX-License-Identifier: GPL-3.0-or-later
"""Struct and union layouts of an object file, read from its DWARF with pahole.

A live patch replaces code, never the data the running kernel already holds: if a
patch moves a member, resizes a struct or adds one, the new code would read old
objects with the new layout. The diff stage compares the layouts of the original and
patched build of each unit and refuses any that changed, naming the type.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from builder.errors import BuildError

_START = re.compile(r"^(struct|union) (\S+) \{$")
# "\t<declaration>;  /* offset size */" (bit fields: "/* offset: bit size */")
_MEMBER = re.compile(r"^\t([^/\s].*?;)\s+/\*\s+(\d+)(?::\s*\d+)?\s+(\d+)\s+\*/")
_SIZE = re.compile(r"/\* size: (\d+)")

Layout = tuple[tuple[str, int, int], ...]  # (declaration, offset, size) …, ("", size, 0)


def layouts(obj: Path) -> dict[str, Layout]:
    """'struct name' -> layout, for every named struct and union the object describes."""
    pahole = shutil.which("pahole")
    if pahole is None:
        raise BuildError(stage="diff", message="pahole (package dwarves) is not installed",
                         hint="install it: apt-get install dwarves")
    proc = subprocess.run([pahole, "--suppress_aligned_attribute", str(obj)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(stage="diff", file=str(obj),
                         message=f"pahole could not read the object: {proc.stderr.strip()}",
                         hint="the object must carry DWARF (kbuild's -g)")
    return parse(proc.stdout)


def parse(text: str) -> dict[str, Layout]:
    found: dict[str, Layout] = {}
    name: str | None = None
    members: list[tuple[str, int, int]] = []
    for line in text.splitlines():
        start = _START.match(line)
        if start:
            name, members = f"{start.group(1)} {start.group(2)}", []
            continue
        if name is None:
            continue
        member = _MEMBER.match(line)
        if member:
            declaration = " ".join(member.group(1).split())
            members.append((declaration, int(member.group(2)), int(member.group(3))))
            continue
        size = _SIZE.search(line)
        if size:
            members.append(("", int(size.group(1)), 0))
        if line.startswith("}"):
            found.setdefault(name, tuple(members))
            name = None
    return found


def changed_layouts(orig: Path, patched: Path) -> list[str]:
    """Types described by both builds whose members, offsets or size differ."""
    before, after = layouts(orig), layouts(patched)
    return sorted(name for name, layout in before.items()
                  if name in after and after[name] != layout)


__all__ = ["changed_layouts", "layouts", "parse"]
