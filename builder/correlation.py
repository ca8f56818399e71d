# SPDX-License-Identifier: GPL-3.0-or-later
"""Correlation: which symbol of the patched build is which of the original.

Shared by the diff stage (what changed) and the generate stage (what the patch refers
to in the running kernel): one object file's lookups (`Side`), the pairing of symbols
across the two builds (`correlate`), GCC's numbered names (`canonical`, `.cold`
parts), and what a relocation means independent of layout (`reference_key`, `masked`).
"""

from __future__ import annotations

import re

from builder.elf import (
    PC_RELATIVE,
    SHF_EXECINSTR,
    SHF_MERGE,
    SHF_STRINGS,
    SHT_NOBITS,
    STT_FUNC,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
    cstring,
)
from builder.x86 import instruction_ends

# Data the patch always brings its own copy of, registered by the module loader: a
# pr_debug()'s descriptor holds its line number, which moves with any edit above it.
OWN_COPY = ("__dyndbg",)


def canonical(name: str) -> str:
    """Name without GCC's numbering (foo.part.3 → foo.part, count.12 → count)."""
    return re.sub(r"\.\d+(?=\.|$)", "", name)


class Side:
    """One object file with the lookups the comparison needs, computed once."""

    def __init__(self, obj: ElfObject) -> None:
        self.obj = obj
        self.functions = {s.name: s for s in obj.symbols
                          if s.type == STT_FUNC and s.section is not None}
        self.objects = {s.name: s for s in obj.symbols
                        if s.type == STT_OBJECT and s.section is not None}
        self._ends: dict[int, dict[int, int]] = {}

    def users(self, data: Symbol) -> set[str]:
        """Canonical names of the functions that refer to a data symbol."""
        found = set()
        for fname, fsym in self.functions.items():
            for rel in self.relocs_in(fsym):
                target = rel.symbol
                if target is data or (target.type == STT_SECTION and target.section is
                                      data.section and data.value <= self.target_offset(
                                          fsym.section, rel) < data.value + max(data.size, 1)):
                    found.add(canonical(fname))
                    break
        return found

    def relocs_in(self, sym: Symbol) -> list[Reloc]:
        sec = sym.section
        lo, hi = sym.value, sym.value + sym.size
        return sorted((r for r in (sec.relocs or []) if lo <= r.offset < hi),
                      key=lambda r: r.offset)

    def body(self, sym: Symbol) -> bytes:
        sec = sym.section
        if sec.type == SHT_NOBITS:
            return bytes(sym.size)
        return sec.data[sym.value:sym.value + sym.size]

    def target_offset(self, site: Section, rel: Reloc) -> int:
        """Offset inside the target symbol/section that a relocation really means."""
        if rel.type not in PC_RELATIVE or not site.flags & SHF_EXECINSTR:
            return rel.addend
        ends = self._ends.get(id(site))
        if ends is None:
            ends = self._ends[id(site)] = instruction_ends(site.data)
        return rel.addend + ends.get(rel.offset, rel.offset + 4) - rel.offset


def reference_key(side: Side, site: Section, rel: Reloc, rename: dict[str, str]) -> tuple:
    """What a relocation points at, independent of layout (string offsets move)."""
    sym = rel.symbol
    target = side.target_offset(site, rel)
    bias = target - rel.addend
    if sym.type == STT_SECTION and sym.section is not None:
        sec = sym.section
        if sec.flags & SHF_STRINGS:
            return (rel.type, "string", cstring(sec.data, target), bias)
        inner = side.obj.symbol_at(sec, target)
        if inner is not None:
            return (rel.type, "symbol", rename.get(inner.name, inner.name),
                    target - inner.value, bias)
        data = b"" if sec.type == SHT_NOBITS else sec.data[target:target + 16]
        return (rel.type, "anonymous", canonical(sec.name), data, bias)
    if sym.section is not None and sym.section.flags & SHF_MERGE:
        # a compiler label in merged strings or constants (.LC3, .rodata.cst2): numbered
        # by order, meant by content
        sec, at = sym.section, sym.value + target
        content = cstring(sec.data, at) if sec.flags & SHF_STRINGS else \
            sec.data[at:at + max(sec.entsize, 1)]
        return (rel.type, "constant", content, bias)
    return (rel.type, "symbol", rename.get(sym.name, sym.name), rel.addend)


def masked(data: bytes, start: int, relocs: list[Reloc]) -> bytes:
    out = bytearray(data)
    for r in relocs:
        lo = r.offset - start
        out[lo:lo + r.width] = b"\0" * r.width
    return bytes(out)


def correlate(orig: Side, patched: Side) -> dict[str, str]:
    """Pair symbols of the two builds.

    Plain names pair by name. GCC-numbered names (static locals `count.3`,
    clones `foo.part.1`) pair by name without the numbers — for data also by
    which functions use it, since two functions may each have a `count`.
    Dynamic-debug descriptors never pair: the patch carries its own (see OWN_COPY).
    """
    result: dict[str, str] = {}
    for kind in ("functions", "objects"):
        table_o, table_p = (
            {n: s for n, s in getattr(side, kind).items() if s.section.name not in OWN_COPY}
            for side in (orig, patched))
        keyed_o: dict[tuple, list[str]] = {}
        keyed_p: dict[tuple, list[str]] = {}
        for side, table, keyed in ((orig, table_o, keyed_o), (patched, table_p, keyed_p)):
            for name in table:
                if canonical(name) == name:
                    continue
                users = frozenset(side.users(table[name])) if kind == "objects" else None
                keyed.setdefault((canonical(name), users), []).append(name)
        for name in table_p:
            if canonical(name) == name and name in table_o:
                result[name] = name
        for key, names in keyed_p.items():
            candidates = keyed_o.get(key, [])
            if len(names) == 1 and len(candidates) == 1:
                result[names[0]] = candidates[0]
            elif names == candidates:  # same numbering on both sides
                result.update({n: n for n in names})
    return result


def cold_parent(name: str) -> str | None:
    m = re.match(r"(.+?)\.cold(\.\d+)?$", name)
    return m.group(1) if m else None


__all__ = ["OWN_COPY", "Side", "canonical", "cold_parent", "correlate", "masked",
           "reference_key"]
