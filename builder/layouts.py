# SPDX-License-Identifier: GPL-3.0-or-later
"""Struct and union layouts of an object file, read from its DWARF with pahole.

A live patch replaces code, never the data the running kernel already holds: if a
patch moves a member, resizes a struct or adds one, the new code would read old
objects with the new layout. The diff stage compares the layouts of the original and
patched build of each unit and refuses any that changed, naming the type.

What running data relies on is each member's name, place (offset, size, nesting) and
the kind of value kept there. A qualifier (const, volatile) or the signedness of an
integer of the same size changes none of the bytes, so those are not layout changes; a
member of another type at the same place is, and so is a member renamed in place
(which cannot be told from two members swapped).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from builder.errors import BuildError

_START = re.compile(r"^(struct|union) (\S+) \{$")
# "\t<declaration>;  /* offset size */" (bit fields: "/* offset: bit size */"); members
# of nested anonymous structs and unions carry one tab more per level.
_MEMBER = re.compile(r"^\t+([^/\s].*?;)\s+/\*\s+(\d+)(?::\s*\d+)?\s+(\d+)\s+\*/")
_POINTER_NAME = re.compile(r"\(\s*\*\s*(\w+)\s*\)")  # int (*show)(void *);
_PLAIN_NAME = re.compile(r"(\w+)\s*(?:\[[^\]]*\]\s*)*(?::\s*\d+\s*)?;$")
_SAME_BYTES = {"const", "volatile", "signed", "unsigned"}
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


def relied_on(layout: Layout) -> tuple:
    """What running data relies on: each member's name, kind of value, offset and size."""
    return tuple((*_name_and_kind(declaration), offset, size)
                 for declaration, offset, size in layout)


def _name_and_kind(declaration: str) -> tuple[str, str]:
    """The member's name, and its declaration without the name and the words that
    change no byte."""
    name = ""
    named = _POINTER_NAME.search(declaration) or _PLAIN_NAME.search(declaration)
    if named:
        name = named.group(1)
        declaration = declaration[:named.start(1)] + declaration[named.end(1):]
    return name, " ".join(word for word in re.findall(r"\w+|[^\w\s]", declaration)
                          if word not in _SAME_BYTES)


def changed_layouts(orig: Path, patched: Path) -> list[str]:
    """Types described by both builds whose members moved, resized or changed kind."""
    before, after = layouts(orig), layouts(patched)
    return sorted(name for name, layout in before.items()
                  if name in after and relied_on(after[name]) != relied_on(layout))


__all__ = ["changed_layouts", "changed_types", "layouts", "parse", "refuse_layout_changes",
           "relied_on"]


def changed_types(old_text: str, hunks) -> list[str]:
    """The named structs and unions of a file whose bodies the hunks change (a member
    removed, added or edited), innermost named one for nested anonymous types."""
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m[0].count("\n"), old_text, flags=re.S)
    inside: list[str | None] = [None]  # after each line (1-based): the innermost named type
    stack: list[str | None] = []
    previous = ""  # the code of the last two non-blank lines, for "struct x\n{"
    for line in text.splitlines():
        code = re.sub(r"//.*", "", line)
        for match in re.finditer(r"[{}]", code):
            if match[0] == "{":
                before = code[:match.start()].strip() or previous
                opener = re.search(r"\b(?:struct|union)\s+(\w+)\s*$", before.replace("\n", " "))
                stack.append(opener[1] if opener else None)
            elif stack:
                stack.pop()
        inside.append(next((name for name in reversed(stack) if name), None))
        if code.strip():
            previous = f"{previous.splitlines()[-1] if previous else ''}\n{code.strip()}"
    found: dict[str, None] = {}
    for hunk in hunks:
        line = hunk.old_first
        for tag, _text in hunk.body:
            if tag == "-":
                name = inside[min(line, len(inside) - 1)]
                line += 1
            elif tag == "+":
                name = inside[min(line - 1, len(inside) - 1)]
            else:
                line += tag == " "
                continue
            if name:
                found[name] = None
    return list(found)


def refuse_layout_changes(unit) -> None:
    """Running code and the data the kernel holds keep the old layout of every type
    (`unit`: a CompiledUnit)."""
    changed = changed_layouts(unit.original, unit.patched)
    if changed:
        where = f" ({unit.because})" if unit.because else ""
        raise BuildError(
            stage="diff", file=unit.source,
            message=f"the patch changes the layout of {', '.join(changed)}, as {unit.source}"
                    f"{where} sees it: the running kernel's objects of that type keep the old "
                    "layout, which the new code would misread",
            hint="leave existing types as they are: keep new per-object state in a shadow "
                 "variable (klp_shadow_get_or_alloc) and new global state in new variables")
