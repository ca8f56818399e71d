# SPDX-License-Identifier: GPL-3.0-or-later
"""Verify: the rebuilt originals are byte-identical to the shipped kernel's code.

This is what makes a live patch trustworthy: if the function rebuilt from the source
package equals the one the target runs (outside relocation sites, whose targets are
only known after linking), then the patched build differs from the running code by
the patch and nothing else. A mismatch means a different source version, compiler or
config, and the build stops.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from builder.artifacts import CompiledUnit, KernelPackages
from builder.cache import symbols_dir
from builder.elf import PC_RELATIVE, STB_WEAK, STT_FUNC, STT_SECTION, ElfObject
from builder.errors import BuildError
from builder.symbols import (
    ModuleImage,
    VmlinuxImage,
    all_depends,
    find_module,
    nearest_to_neighbours,
    reloc_size,
)
from builder.x86 import instructions, relative_branch

if TYPE_CHECKING:
    from builder.stages.diff import UnitDiff

STAGE = "verify"
CAUSE = ("the source package version, compiler or config differs from the shipped kernel")


@dataclass
class VerifiedFunction:
    """A function whose rebuilt original equals the shipped code."""

    name: str
    object: str  # "vmlinux" or the module name
    address: int  # in the shipped image (synthetic section-based address for modules)
    sympos: int  # livepatch's position: 0 unique, else 1-based in kallsyms/symtab order
    size: int  # bytes compared (the rebuilt length; the shipped slot may be padded)
    masked: int  # of which relocation-site bytes ignored


@dataclass
class ObjectFunction:
    name: str
    code: bytes
    relocs: list[tuple[int, int]]  # (offset in function, bytes)
    weak: bool = False
    jump_labels: list[int] = field(default_factory=list)  # offsets of jump-label sites
    # relocation sites naming a function's start (offset → function): calls and jumps
    function_sites: dict[int, str] = field(default_factory=dict)


def object_functions(obj: ElfObject) -> dict[str, ObjectFunction]:
    """Every defined STT_FUNC of a relocatable object with its bytes and reloc sites.

    `obj` is the object the diff stage read (UnitDiff.original): not read again here.
    """
    relocs: dict[int, list[tuple[int, int]]] = {}  # id(section) → (offset, bytes)
    for section in obj.sections:
        relocs.setdefault(id(section), []).extend(
            (r.offset, reloc_size(r.type)) for r in section.relocs or [])
    functions_at = {(id(s.section), s.value): s.name for s in obj.symbols
                    if s.type == STT_FUNC and s.section is not None}
    for _rela, target, extra in obj.extra_relas:  # a rela section of another name
        relocs.setdefault(id(target), []).extend((r.offset, reloc_size(r.type)) for r in extra)
    jump_sites = _jump_label_sites(obj)
    out: dict[str, ObjectFunction] = {}
    for sym in obj.symbols:
        section = sym.section
        if sym.type != STT_FUNC or section is None or not sym.name:
            continue
        start, size = sym.value, sym.size
        out[sym.name] = ObjectFunction(
            name=sym.name, code=section.data[start:start + size],
            relocs=[(off - start, n) for off, n in relocs.get(id(section), [])
                    if start <= off < start + size],
            weak=sym.bind == STB_WEAK,
            jump_labels=[off - start for off in jump_sites.get(id(section), [])
                         if start <= off < start + size],
            function_sites=_function_branches(section, start, size, functions_at))
    return out


def _function_branches(section, start: int, size: int, functions_at: dict) -> dict[int, str]:
    """Relocation sites in [start, start+size) that name the start of a function
    (PC-relative, as a call or jump's displacement): offset in the function → name."""
    out = {}
    for reloc in section.relocs or []:
        if not start <= reloc.offset < start + size or reloc.type not in PC_RELATIVE:
            continue
        symbol = reloc.symbol
        if symbol.section is None:
            continue
        value = symbol.value + reloc.addend + 4  # PC-relative from the displacement's end
        if symbol.type == STT_SECTION:
            name = functions_at.get((id(symbol.section), value))
        else:
            name = symbol.name if symbol.type == STT_FUNC and value == symbol.value else None
        if name:
            out[reloc.offset - start] = name
    return out


def _jump_label_sites(obj: ElfObject) -> dict[int, list[int]]:
    """id(section) -> offsets of the code sites __jump_table names (its first field)."""
    table = obj.section("__jump_table")
    if table is None:
        return {}
    sites: dict[int, list[int]] = {}
    for r in table.relocs or []:
        if r.offset % JUMP_ENTRY_SIZE:
            continue  # the target and key fields
        if r.symbol.section is not None:
            sites.setdefault(id(r.symbol.section), []).append(r.symbol.value + r.addend)
    return sites


def mask(code: bytes, sites: list[tuple[int, int]]) -> bytes:
    """Zero the bytes relocations will rewrite (their final value is link-time)."""
    out = bytearray(code)
    for offset, size in sites:
        for i in range(max(offset, 0), min(offset + size, len(out))):
            out[i] = 0
    return bytes(out)


def first_difference(a: bytes, b: bytes) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


ENDBR64 = bytes.fromhex("f30f1efa")
# objtool --ibt at vmlinux link (IBT kernels: 6.12) "seals" the ENDBR of functions whose
# address is never taken, overwriting it with this 4-byte NOP. The rebuilt object has
# not been through that step yet, so the two forms are equivalent here.
SEALED_ENDBR = bytes.fromhex("0f1f40d6")


# A jump-label site is a jump or a NOP of the same size. Where objtool writes the site's
# initial form at vmlinux link (6.12: its default-off jumps become NOPs), the rebuilt
# object still has the compiler's jump; either form of the same size is the same site.
JUMP_ENTRY_SIZE = 16  # struct jump_entry: s32 code, s32 target, long key (6.1 and 6.12)
JUMP_LABEL_FORMS = {2: (bytes.fromhex("6690"), 0xEB), 5: (bytes.fromhex("0f1f440000"), 0xE9)}


def _jump_label_form(code: bytes, size: int) -> bool:
    nop, jmp = JUMP_LABEL_FORMS[size]
    return code[:size] == nop or (len(code) >= size and code[0] == jmp)


def _jump_label_sites_alike(fn: ObjectFunction, shipped: bytes) -> list[tuple[int, int]]:
    """(offset, size) of each jump-label site both sides hold in one of its two forms."""
    alike = []
    for offset in fn.jump_labels:
        for size in JUMP_LABEL_FORMS:
            if _jump_label_form(fn.code[offset:offset + size], size) and \
                    _jump_label_form(shipped[offset:offset + size], size):
                alike.append((offset, size))
                break
    return alike


@dataclass(frozen=True)
class Comparison:
    """A rebuilt function against one shipped candidate."""

    difference: int | None  # first differing offset, None when they are the same code
    masked: int  # relocation-site bytes ignored
    realigned: bool = False  # the same only instruction by instruction (short jumps)


def compare(fn: ObjectFunction, image, address: int) -> Comparison:
    """The rebuilt function against the shipped bytes at `address`."""
    shipped = image.read(address, len(fn.code), at_most=True)  # may end its section
    own = list(fn.relocs)  # sites by the rebuilt code's offsets
    if fn.code[:4] == ENDBR64 and shipped[:4] == SEALED_ENDBR:
        own.append((0, 4))
    own += _jump_label_sites_alike(fn, shipped)
    # A shipped module's own relocation sites, by the shipped code's offsets.
    theirs = image.reloc_offsets(fn.name, address) if isinstance(image, ModuleImage) else []
    sites = own + theirs
    masked = sum(n for _offset, n in sites)
    diff = first_difference(mask(fn.code, sites), mask(shipped, sites))
    if diff is not None and fn.function_sites and \
            _same_but_shorter_jumps(fn, image, address, shipped, own, theirs):
        return Comparison(None, masked, realigned=True)
    return Comparison(diff, masked)


def _same_but_shorter_jumps(fn: ObjectFunction, image, address: int, shipped: bytes,
                            own: list[tuple[int, int]], theirs: list[tuple[int, int]]) -> bool:
    """True when the rebuilt function is the shipped one instruction for instruction,
    where some jumps to other functions of the file are shorter in the shipped code.

    The builder compiles with -ffunction-sections, so a jump to another function of the
    same file is a 32-bit displacement to be relocated; the shipped kernel's single
    .text let the assembler use the 2-byte form when the target lay near. That moves
    every later instruction, so the two are compared instruction by instruction: equal
    bytes outside the relocation sites (`own` by the rebuilt offsets, `theirs` by the
    shipped ones), such a jump landing on the function its relocation names, and every
    branch inside the function landing on the matching instruction.
    """
    code = fn.code
    shipped_insns = instructions(shipped)
    at: dict[int, int] = {}  # rebuilt offset → shipped offset
    branches = []  # (rebuilt target, shipped target) to check once `at` is complete
    j = 0
    for offset, size in instructions(code):
        if j >= len(shipped_insns):
            return False
        s_offset, s_size = shipped_insns[j]
        at[offset] = s_offset
        j += 1
        mine = relative_branch(code, offset, size)
        other = relative_branch(shipped, s_offset, s_size)
        if mine and other and mine[0] == other[0]:
            displacement = offset + size - (1 if size == 2 else 4)
            if not any(o == displacement for o, _n in own):
                branches.append((mine[1], other[1]))  # inside the function
                continue
            callee = fn.function_sites.get(displacement)
            if callee and s_size < size:
                if address + other[1] not in image.positions(callee):
                    return False
                continue
        inside = [(o - offset, n) for o, n in own if offset <= o < offset + size] + \
            [(o - s_offset, n) for o, n in theirs if s_offset <= o < s_offset + s_size]
        if s_size != size or mask(code[offset:offset + size], inside) != \
                mask(shipped[s_offset:s_offset + s_size], inside):
            return False
    at[len(code)] = shipped_insns[j][0] if j < len(shipped_insns) else len(shipped)
    return all(at.get(mine) == other for mine, other in branches)


def verify_function(unit: CompiledUnit, fn: ObjectFunction, image,
                    neighbours: list[str] = ()) -> VerifiedFunction:
    objname = image.name
    candidates = image.positions(fn.name)
    if not candidates:
        raise BuildError(stage=STAGE, file=unit.source, function=fn.name,
                         message=f"{fn.name} is not in the symbol table of the shipped "
                                 f"{objname}: it was probably inlined into its callers there",
                         hint="patch the functions that call it (they contain its code)")
    matches, best = [], (-1, 0, 0)
    for address in candidates:
        found = compare(fn, image, address)
        if found.difference is None:
            matches.append((address, found.masked))
        elif found.difference > best[0]:
            best = (found.difference, address, found.masked)
    if len(matches) > 1:  # identical copies (a static inline of a header): by place
        nearest = nearest_to_neighbours(image, [a for a, _m in matches], neighbours)
        matches = [matches[nearest]] if nearest is not None else matches
    if len(matches) == 1:
        address, masked = matches[0]
        return VerifiedFunction(name=fn.name, object=objname, address=address,
                                sympos=image.sympos(fn.name, address), size=len(fn.code),
                                masked=masked)
    if matches:
        raise BuildError(stage=STAGE, file=unit.source, function=fn.name,
                         message=f"{len(matches)} identical copies of {fn.name} exist in "
                                 f"{objname}, and none lies clearly nearer to this file's other "
                                 "symbols: the builder cannot tell which is this file's",
                         hint="patch a caller that is unique instead")
    offset, address = best[0], best[1]
    if fn.weak:
        raise BuildError(stage=STAGE, file=unit.source, function=fn.name,
                         message=f"{fn.name} is a weak function here and the shipped {objname} "
                                 "has a different (overriding) definition",
                         hint="patch the overriding definition in its own source file")
    raise BuildError(stage=STAGE, file=unit.source, function=fn.name,
                     message=f"the rebuilt {fn.name} differs from the shipped {objname} at "
                             f"offset {offset:#x} (function at {address:#x}, "
                             f"{len(fn.code)} bytes): {CAUSE}",
                     hint="build for the exact kernel the target runs (uname -r and the "
                          "package version), with the compiler named in its config")


def verify(unit: CompiledUnit, original: ElfObject, functions: list[str],
           image) -> list[VerifiedFunction]:
    """Check each named function of the unit's original object (`original`, as the diff
    stage read it) against the image."""
    available = object_functions(original)
    verified = []
    for name in functions:
        fn = available.get(name)
        if fn is None:
            raise BuildError(stage=STAGE, file=unit.source, function=name,
                             message=f"{name} is not a function of the rebuilt "
                                     f"{unit.object_name} (inlined by the compiler?)",
                             hint="name a function that exists in the object's symbol table")
        verified.append(verify_function(unit, fn, image, [n for n in available if n != name]))
    return verified


def load_image(packages: KernelPackages, target_object: str):
    """VmlinuxImage for "vmlinux", else the shipped module's ModuleImage."""
    if target_object == "vmlinux":
        return VmlinuxImage.load(  # the kernel's cache dir holds pkgs/boot/vmlinuz-*
            packages.vmlinuz, symbols_dir(packages.vmlinuz.parents[2]))
    image = ModuleImage(find_module(packages.modules_dir, target_object))
    # A module this one needs through another (mt76_usb → mt76 → mac80211) is loaded
    # whenever it is: livepatch can resolve its exports when it patches this one.
    image.depends = all_depends(packages.modules_dir, image.depends)
    return image


def verify_units(packages: KernelPackages, units: list[CompiledUnit], diffs: list[UnitDiff]
                 ) -> tuple[dict, dict[str, list[VerifiedFunction]]]:
    """Verify each unit's changed functions (one UnitDiff per unit, in order, carrying the
    original object the diff stage read); return (images, results by unit.source).

    The images dict (target object → image) is what the generate stage reads symbol
    positions and bytes from; each verified function's sympos is the one it uses.
    """
    images: dict = {}
    results: dict[str, list[VerifiedFunction]] = {}
    for unit, diff in zip(units, diffs, strict=True):
        if unit.target_object not in images:
            images[unit.target_object] = load_image(packages, unit.target_object)
        results[unit.source] = verify(unit, diff.original, [c.name for c in diff.changed],
                                      images[unit.target_object])
    return images, results
