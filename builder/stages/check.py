# SPDX-License-Identifier: GPL-3.0-or-later
"""Check: prove, before the module is written, that the kernel can load what we made.

The kernel handles a livepatch module in a fixed order (kernel/module/main.c,
Documentation/livepatch/module-elf-format.rst):

1. normal relocations and the livepatch relocations of vmlinux are applied while the
   module is loaded; x86 refuses to relocate a location that is not zero;
2. alternatives and paravirt sites are patched, then jump labels and static calls are
   registered, before the module's init runs;
3. livepatch relocations of a module object (`.klp.rela.OBJ.*`, OBJ not vmlinux) are
   applied only when livepatch patches OBJ, later — possibly much later.

Each rule below is one way a module could fail to load, make the kernel warn, or Oops.
The module is read back from the linked file, exactly as the kernel will see it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from builder.elf import (
    R_X86_64_NONE,
    RELOC_WIDTH,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_RELA_LIVEPATCH,
    SHN_LIVEPATCH,
    SHT_NOBITS,
    ElfObject,
    Reloc,
    Section,
)
from builder.errors import BuildError
from builder.layout import Layout
from builder.stages.generate import KLP_SYM_PREFIX, NOP2, NOP5, ORC_DATA, FunctionEntry

STAGE = "check"
MODULE_NAME_LEN = 56  # struct module's name[], as livepatch parses .klp.sym.OBJ.NAME,POS
KSYM_NAME_LEN = 512
_KLP_SYM = re.compile(r"^\.klp\.sym\.([^.]+)\.([^,]+),(\d+)$")
_KLP_RELA = re.compile(r"^\.klp\.rela\.([^.]+)\.(.+)$")
# Sections the kernel acts on while loading the module (step 2 above).
EARLY_SECTIONS = ("__jump_table", ".static_call_sites", ".altinstructions",
                  ".altinstr_replacement", ".parainstructions", "__bug_table", "__ex_table",
                  ".orc_unwind_ip", ".smp_locks", ".return_sites", ".retpoline_sites",
                  ".call_sites", "__mcount_loc", "__dyndbg", ".ibt_endbr_seal",
                  "__tracepoints_ptrs", "__param", ".init_array")
CALL, JMP32, JMP8 = 0xE8, 0xE9, 0xEB
STATIC_CALL_SITE_TAIL = 1  # in a static call entry's key field: the site is a jump
RETURN_THUNK = "__x86_return_thunk"
MCOUNT = "__fentry__"
STATIC_KEY_TYPE = 8  # offset of struct static_key's type, whose bit 0 says "on by default"
RETPOLINE_THUNK = "__x86_indirect_thunk_"


@dataclass
class CheckReport:
    relocations: int = 0
    late_relocations: int = 0  # livepatch relocations of module objects (applied later)
    jump_labels: int = 0
    static_calls: int = 0
    functions: int = 0


class _Problems:
    """Collects every violation, so one build says everything that is wrong."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, text: str) -> None:
        if text not in self.items:
            self.items.append(text)


def check_module(ko: ElfObject, layout: Layout, functions: Iterable[FunctionEntry],
                 symbol_table: Callable[[str], object]) -> CheckReport:
    """Raise a BuildError naming every problem the kernel would hit loading `ko`.

    `symbol_table(objname)` gives the target object's symbols in kallsyms order
    (anything with `addresses(name)`), for the livepatch symbols and the functions.
    """
    problems = _Problems()
    report = CheckReport()
    relocs = _all_relocations(ko)
    for sec, rel, late in relocs:
        report.relocations += 1
        report.late_relocations += late is not None
        _check_location(sec, rel, problems)
    _check_overlaps(relocs, problems)
    _check_no_dependencies(ko, problems)
    _check_livepatch_sections(ko, symbol_table, problems)
    _check_livepatch_symbols(ko, symbol_table, problems)
    late_sites = {(id(sec), rel.offset) for sec, rel, late in relocs if late}
    _check_early_sections(ko, relocs, problems)
    _check_alternatives(ko, layout, late_sites, relocs, problems)
    report.jump_labels = _check_jump_labels(ko, layout, problems)
    _check_jump_label_keys(layout, relocs, symbol_table, problems)
    _check_jump_label_states(ko, layout, relocs, symbol_table, problems)
    report.static_calls = _check_static_calls(ko, layout, relocs, late_sites, problems)
    _check_static_call_keys(ko, layout, symbol_table, problems)
    _check_table_sizes(ko, layout, problems)
    _check_return_sites(ko, relocs, problems)
    _check_listed_calls(ko, relocs, "__mcount_loc", lambda name: name == MCOUNT,
                        f"a call to {MCOUNT}", "ftrace fails on it at load and turns itself "
                        "off, and every live patch with it", problems)
    _check_listed_calls(ko, relocs, ".retpoline_sites",
                        lambda name: name.startswith(RETPOLINE_THUNK),
                        f"a call or jump to an {RETPOLINE_THUNK}* thunk",
                        "the kernel warns loading the module", problems)
    _check_unwind_data(ko, problems)
    functions = list(functions)
    for fn in functions:
        report.functions += 1
        _check_function(fn, symbol_table, problems)
    _check_each_function_once(functions, problems)
    _check_livepatch_modinfo(ko, problems)
    if problems.items:
        raise BuildError(
            stage=STAGE,
            message="the generated module would not load safely:\n  - "
                    + "\n  - ".join(problems.items),
            hint="nothing was written; report this patch to the developers with the kernel "
                 "release — a refusal here is what stands between the patch and an Oops")
    return report


# ---- relocations ---------------------------------------------------------------------

def _all_relocations(ko: ElfObject) -> list[tuple[Section, Reloc, str | None]]:
    """(section, relocation, objname when applied late, else None) for every relocation."""
    found = [(sec, rel, None) for sec in ko.sections for rel in sec.relocs or []]
    for rela, target, relocs in ko.extra_relas:
        objname = None
        if rela.flags & SHF_RELA_LIVEPATCH:
            m = _KLP_RELA.match(rela.name)
            objname = m.group(1) if m and m.group(1) != "vmlinux" else None
        found += [(target, rel, objname) for rel in relocs]
    # the loader relocates only what it loads (SHF_ALLOC), as the kernel does
    return [(s, r, o) for s, r, o in found if s.flags & SHF_ALLOC and r.type != R_X86_64_NONE]


def _check_no_dependencies(ko: ElfObject, problems: _Problems) -> None:
    """The patch module is loaded with insmod, alone: a module it depends on (modpost's
    depends=, for a symbol it links against) would make the load fail unless that module
    happens to be loaded."""
    modinfo = ko.section(".modinfo")
    for entry in (modinfo.data if modinfo is not None else b"").split(b"\0"):
        if entry.startswith(b"depends=") and entry[len(b"depends="):]:
            problems.add(f"the module depends on {entry[len(b'depends='):].decode()}: insmod "
                         "fails unless it is loaded (a patched function calls its exports)")


def _check_location(sec: Section, rel: Reloc, problems: _Problems) -> None:
    width = RELOC_WIDTH.get(rel.type)
    where = f"{sec.name}+{rel.offset:#x} ({rel.symbol.name})"
    if width is None:
        problems.add(f"relocation type {rel.type} at {where}: the x86-64 module loader does "
                     "not handle it")
        return
    if rel.offset + width > sec.length:
        problems.add(f"relocation at {where} lies outside its section")
        return
    if sec.type != SHT_NOBITS and any(sec.data[rel.offset:rel.offset + width]):
        problems.add(f"relocation at {where}: the location is not zero, so the kernel "
                     "refuses it ('Skipping invalid relocation target, existing value is "
                     "nonzero')")


def _check_overlaps(relocs, problems: _Problems) -> None:
    by_section: dict[int, list[tuple[int, int, str]]] = {}
    for sec, rel, _late in relocs:
        by_section.setdefault(id(sec), []).append(
            (rel.offset, rel.offset + RELOC_WIDTH.get(rel.type, 4), f"{sec.name}+{rel.offset:#x}"))
    for spans in by_section.values():
        spans.sort()
        for (_s1, end1, name1), (start2, _e2, name2) in zip(spans, spans[1:], strict=False):
            if start2 < end1:
                problems.add(f"two relocations overlap at {name1} and {name2}: the second "
                             "would find the location already written")


def _loaded_before(symbol_object: str, section_object: str, symbol_table) -> bool:
    """The kernel resolves a module section's symbols of another module when the section's
    module loads: sound only for one of its dependencies (and never vmlinux's)."""
    if "vmlinux" in (symbol_object, section_object):
        return False
    return symbol_object in getattr(symbol_table(section_object), "depends", frozenset())


def _check_livepatch_sections(ko: ElfObject, symbol_table, problems: _Problems) -> None:
    for rela, target, relocs in ko.extra_relas:
        if not rela.flags & SHF_RELA_LIVEPATCH:
            continue
        m = _KLP_RELA.match(rela.name)
        if m is None or m.group(2) != target.name:
            problems.add(f"{rela.name}: not named .klp.rela.OBJ.{target.name}")
            continue
        objname = m.group(1)
        if len(objname) >= MODULE_NAME_LEN:
            problems.add(f"{rela.name}: object name longer than the kernel accepts")
        for rel in relocs:
            sym = _KLP_SYM.match(rel.symbol.name)
            if rel.symbol.shndx != SHN_LIVEPATCH or sym is None:
                problems.add(f"{rela.name} relocates against {rel.symbol.name}, which is not "
                             "a livepatch symbol (.klp.sym.OBJ.NAME,POS in SHN_LIVEPATCH)")
            elif sym.group(1) != objname and \
                    not _loaded_before(sym.group(1), objname, symbol_table):
                problems.add(f"{rela.name} refers to {rel.symbol.name} of another object, "
                             f"which is not loaded whenever {objname} is: livepatch resolves "
                             f"it when {objname} loads (and never vmlinux's from a module)")


def _check_livepatch_symbols(ko: ElfObject, symbol_table, problems: _Problems) -> None:
    for sym in ko.symbols:
        if not sym.name.startswith(KLP_SYM_PREFIX):
            continue
        m = _KLP_SYM.match(sym.name)
        if m is None or sym.shndx != SHN_LIVEPATCH:
            problems.add(f"malformed livepatch symbol {sym.name}")
            continue
        objname, name, pos = m.group(1), m.group(2), int(m.group(3))
        if len(name) >= KSYM_NAME_LEN:
            problems.add(f"livepatch symbol {name} is longer than kallsyms names")
        _check_position(objname, name, pos, symbol_table, problems, "symbol")
        if objname == "vmlinux":
            _check_not_init(name, pos, symbol_table("vmlinux"), problems)


def _check_not_init(name: str, pos: int, vmlinux, problems: _Problems) -> None:
    """kallsyms keeps the names of vmlinux's init code and data after boot frees them:
    livepatch would resolve a reference to freed memory."""
    if _within(_address(vmlinux, name, pos), _bounds(vmlinux, "__init_begin", "__init_end")):
        problems.add(f"the patch refers to {name}, init code or data of vmlinux, freed "
                     "after boot")


def _address(table, name: str, pos: int) -> int | None:
    """Where livepatch resolves NAME,POS (position 0: the only copy), if it exists."""
    addresses = table.addresses(name)
    return addresses[max(pos - 1, 0)] if max(pos - 1, 0) < len(addresses) else None


def _bounds(vmlinux, first: str, last: str) -> tuple[int, int] | None:
    """[first, last): a region of vmlinux its linker symbols mark, if kallsyms has both."""
    starts, ends = vmlinux.addresses(first), vmlinux.addresses(last)
    return (starts[0], ends[0]) if len(starts) == 1 and len(ends) == 1 else None


def _within(address: int | None, region: tuple[int, int] | None) -> bool:
    return address is not None and region is not None and region[0] <= address < region[1]


def _check_position(objname: str, name: str, pos: int, symbol_table, problems: _Problems,
                    what: str) -> None:
    table = symbol_table(objname)
    if table is None:
        return  # an object the build never read (exported symbol of another module)
    count = len(table.addresses(name))
    if count == 0:
        problems.add(f"{what} {name} is not in {objname}'s symbol table: livepatch would "
                     "fail to resolve it")
    elif pos == 0 and count > 1:
        problems.add(f"{what} {name} occurs {count} times in {objname} but has position 0: "
                     "livepatch refuses an ambiguous name")
    elif pos > count:
        problems.add(f"{what} {name} has position {pos} but {objname} has only {count}")
    elif pos and hasattr(table, "live_positions"):
        _check_same_position_once_live(objname, name, pos, table, problems, what)


def _check_same_position_once_live(objname: str, name: str, pos: int, table,
                                   problems: _Problems, what: str) -> None:
    """Livepatch counts a module's copies of a name in its kallsyms: all of them while the
    module loads (a patch loaded first), its non-init ones once it is live (a patch
    loaded later). The position must name the same copy either way."""
    address = table.addresses(name)[pos - 1]
    live = table.live_positions(name)
    if address not in live:
        problems.add(f"{what} {name} (position {pos}) is in {objname}'s init code or data, "
                     "freed once the module is live")
    elif live.index(address) + 1 != pos:
        problems.add(f"{what} {name} is copy {pos} of {objname} while it loads but copy "
                     f"{live.index(address) + 1} once it is live (a copy in its init code "
                     "comes first): livepatch would resolve another copy depending on which "
                     "loads first")


def _check_function(fn: FunctionEntry, symbol_table, problems: _Problems) -> None:
    _check_position(fn.object, fn.old_name, fn.sympos, symbol_table, problems, "function")


def _check_each_function_once(functions: list[FunctionEntry], problems: _Problems) -> None:
    """livepatch makes a sysfs directory per function, NAME,POS (position 0 counts as
    1): a second one fails the load."""
    seen: set[tuple[str, str, int]] = set()
    for fn in functions:
        key = (fn.object, fn.old_name, fn.sympos or 1)
        if key in seen:
            problems.add(f"function {fn.old_name} of {fn.object} is patched twice")
        seen.add(key)


def _check_livepatch_modinfo(ko: ElfObject, problems: _Problems) -> None:
    """klp_enable_patch() refuses a module without modinfo livepatch=Y."""
    modinfo = ko.section(".modinfo")
    if b"livepatch=Y" not in (modinfo.data if modinfo is not None else b"").split(b"\0"):
        problems.add("the module lacks modinfo livepatch=Y: the kernel would refuse to "
                     "enable it")


# ---- what the kernel processes at load time ------------------------------------------

def _check_early_sections(ko: ElfObject, relocs, problems: _Problems) -> None:
    for sec, rel, late in relocs:
        if late and sec.name.startswith(EARLY_SECTIONS):
            problems.add(f"{sec.name}+{rel.offset:#x} refers to {rel.symbol.name}, which "
                         f"livepatch resolves only when it patches {late}; the kernel reads "
                         f"{sec.name} earlier, when it loads the patch module")


def _entries(ko: ElfObject, name: str, size: int):
    sec = ko.section(name)
    if sec is None or not size:
        return None, []
    relocs = {r.offset: r for r in sec.relocs or []}
    return sec, [(start, relocs) for start in range(0, len(sec.data), size)]


def _site(ko: ElfObject, rel: Reloc | None) -> tuple[Section, int] | None:
    """The section and offset a PC32 entry field points at."""
    if rel is None or rel.symbol.section is None:
        return None
    return rel.symbol.section, rel.symbol.value + rel.addend


def _check_alternatives(ko: ElfObject, layout: Layout, late_sites, relocs,
                        problems: _Problems) -> None:
    """Alternatives rewrite code before late relocations exist: none may be inside."""
    sec, entries = _entries(ko, ".altinstructions", layout.alt_instr)
    if sec is None:
        return
    late_by_section: dict[int, list[int]] = {}
    for target, rel, late in relocs:
        if late:
            late_by_section.setdefault(id(target), []).append(rel.offset)
    for start, rels in entries:
        instrlen, repllen = sec.data[start + layout.alt_instr - 2:start + layout.alt_instr]
        for field, length in ((0, instrlen), (4, repllen)):
            site = _site(ko, rels.get(start + field))
            if site is None:
                continue
            code, offset = site
            if any(offset <= o < offset + length for o in late_by_section.get(id(code), [])):
                problems.add(f"an alternative at {code.name}+{offset:#x} covers a reference "
                             "that livepatch resolves only later; the kernel rewrites that "
                             "code when it loads the patch module")


def _check_jump_labels(ko: ElfObject, layout: Layout, problems: _Problems) -> int:
    """Each site must hold what the kernel expects there, or it BUG()s patching it."""
    sec, entries = _entries(ko, "__jump_table", layout.jump_entry)
    for start, rels in entries:
        site, target = _site(ko, rels.get(start)), _site(ko, rels.get(start + 4))
        if site is None or target is None:
            problems.add(f"__jump_table entry {start // layout.jump_entry} has no code or "
                         "target in the module")
            continue
        (code, offset), (tcode, toffset) = site, target
        data = code.data[offset:offset + 5]
        jump8 = len(data) >= 2 and data[0] == JMP8 and tcode is code and \
            offset + 2 + int.from_bytes(data[1:2], "little", signed=True) == toffset
        jump32 = len(data) == 5 and data[0] == JMP32 and tcode is code and \
            offset + 5 + int.from_bytes(data[1:5], "little", signed=True) == toffset
        if not (data == NOP5 or data[:2] == NOP2 or jump8 or jump32):
            problems.add(f"jump label at {code.name}+{offset:#x} is neither a NOP nor a jump "
                         f"to its target ({data.hex()}): the kernel would BUG() patching it")
    return len(entries)


def _check_jump_label_keys(layout: Layout, relocs, symbol_table,
                           problems: _Problems) -> None:
    """A branch on a key that is read-only after boot (DEFINE_STATIC_KEY_*_RO): loading a
    module with such a site links the module into the key, a write, which faults unless
    the kernel seals those keys first (jump_label_init_ro, 6.12; not 6.1)."""
    keys = [rel for sec, rel, _late in relocs if sec.name == "__jump_table"
            and layout.jump_entry and rel.offset % layout.jump_entry == 8]
    if not keys:
        return
    vmlinux = symbol_table("vmlinux")
    if vmlinux.addresses("jump_label_init_ro"):
        return
    read_only = _bounds(vmlinux, "__start_ro_after_init", "__end_ro_after_init")
    for rel in keys:
        ref = _vmlinux_ref(rel.symbol)
        if ref is None:
            continue  # a module's key or the patch's own: writable
        name, pos = ref
        key = _address(vmlinux, name, pos)  # None: _check_livepatch_symbols names it
        if key is not None and _within(key + (rel.addend & ~3), read_only):  # low bits: flags
            problems.add(f"a jump label uses static key {name}, which is read-only after "
                         "boot: this kernel writes to the key when a module with such a "
                         "branch loads, an Oops at insmod (use static_key_enabled() in the "
                         "patched function)")


def _check_jump_label_states(ko: ElfObject, layout: Layout, relocs, symbol_table,
                             problems: _Problems) -> None:
    """Each site must start as its key's default and the branch's sense say (what the
    compiler chose from the key's declared type): the kernel flips a site, at load or
    later, only after finding the instruction it expects there, and BUG()s otherwise."""
    _sec, entries = _entries(ko, "__jump_table", layout.jump_entry)
    keys = {rel.offset: rel for sec, rel, _late in relocs if sec.name == "__jump_table"}
    for start, rels in entries:
        site, key_rel = _site(ko, rels.get(start)), keys.get(start + 8)
        if site is None or key_rel is None:
            continue  # _check_jump_labels names it
        on_by_default = _key_on_by_default(ko, key_rel, symbol_table)
        if on_by_default is None:
            continue
        code, offset = site
        data = code.data[offset:offset + 5]
        starts_as_nop = data == NOP5 or data[:2] == NOP2
        should_jump = on_by_default != bool(key_rel.addend & 1)
        if starts_as_nop == should_jump:
            problems.add(f"jump label at {code.name}+{offset:#x} starts as a "
                         f"{'NOP' if starts_as_nop else 'jump'}, but its key "
                         f"{_plain_name(key_rel.symbol)} (on by default: {on_by_default}) "
                         "and branch "
                         f"say {'jump' if should_jump else 'NOP'}: the kernel would BUG() "
                         "the first time it switched it")


def _vmlinux_ref(sym) -> tuple[str, int] | None:
    """(name, position) of the vmlinux symbol SYM names, exported or livepatch (.klp.sym);
    None for a symbol of a module or one the patch module defines."""
    match = _KLP_SYM.match(sym.name)
    if match:
        return (match[2], int(match[3])) if match[1] == "vmlinux" else None
    return (sym.name, 0) if sym.section is None else None


def _plain_name(sym) -> str:
    """SYM's name without the livepatch dressing."""
    match = _KLP_SYM.match(sym.name)
    return match[2] if match else sym.name


def _key_on_by_default(ko: ElfObject, rel: Reloc, symbol_table) -> bool | None:
    """Bit 0 of the static key's type field, where the key is in the module or vmlinux."""
    at = (rel.addend & ~3) + STATIC_KEY_TYPE  # the entry's low bits are flags
    sym = rel.symbol
    if sym.section is not None:  # the patch's own key
        data = sym.section.data if sym.section.type != SHT_NOBITS else b""
        field = data[sym.value + at:sym.value + at + 8]
        return bool(field[0] & 1) if field else False
    ref = _vmlinux_ref(sym)
    if ref is None:
        return None  # a module's key: left out by the generate stage, or refused
    vmlinux = symbol_table("vmlinux")
    key = _address(vmlinux, *ref)
    return None if key is None else bool(vmlinux.read(key + at, 1)[0] & 1)


def _check_static_calls(ko: ElfObject, layout: Layout, relocs, late_sites,
                        problems: _Problems) -> int:
    """Each site must be a call or jump whose displacement the loader fills in at load.

    The kernel rewrites registered sites right after loading; a displacement filled in
    later by livepatch would find the location already written (and the load fails).
    """
    sec, entries = _entries(ko, ".static_call_sites", layout.static_call_site)
    displacement = {(id(s), r.offset) for s, r, _late in relocs}
    for start, rels in entries:
        site = _site(ko, rels.get(start))
        if site is None:
            problems.add(f".static_call_sites entry {start // layout.static_call_site} has no "
                         "call site in the module")
            continue
        code, offset = site
        opcode = code.data[offset:offset + 1]
        key = rels.get(start + 4)
        tail = key is not None and key.addend & STATIC_CALL_SITE_TAIL
        if opcode not in (bytes([CALL]), bytes([JMP32])) or \
                (id(code), offset + 1) not in displacement:
            problems.add(f"static call at {code.name}+{offset:#x} is not a relocated call or "
                         "jump: the kernel would BUG() patching it")
        elif key is not None and (opcode == bytes([JMP32])) != bool(tail):
            problems.add(f"static call at {code.name}+{offset:#x} is a "
                         f"{'jump' if opcode == bytes([JMP32]) else 'call'} but its entry "
                         f"says {'tail call' if tail else 'call'}: the kernel would BUG() "
                         "patching it")
        elif (id(code), offset + 1) in late_sites:
            problems.add(f"static call at {code.name}+{offset:#x} calls a symbol livepatch "
                         "resolves only later, but the kernel rewrites the call at load")
    return len(entries)


def _check_static_call_keys(ko: ElfObject, layout: Layout, symbol_table,
                            problems: _Problems) -> None:
    """A site whose key field names a trampoline (`__SCT__X`, what objtool writes when the
    object lacks the key symbol `__SCK__X`): the kernel looks the key up among the
    trampolines exported with theirs (EXPORT_STATIC_CALL_TRAMP) and refuses the module
    if it is not there ("Failed to fixup __raw_static_call() usage", -EINVAL)."""
    sec, entries = _entries(ko, ".static_call_sites", layout.static_call_site)
    trampolines = [(start, rels[start + 4]) for start, rels in entries
                   if start + 4 in rels and rels[start + 4].symbol.name.startswith("__SCT__")]
    if not trampolines:
        return
    vmlinux = symbol_table("vmlinux")
    keyed = _keyed_trampolines(vmlinux)
    for start, rel in trampolines:
        if not keyed.intersection(vmlinux.addresses(rel.symbol.name)):
            key = "__SCK__" + rel.symbol.name.removeprefix("__SCT__")
            problems.add(f"static call site {start // layout.static_call_site} names the "
                         f"trampoline {rel.symbol.name} as its key, and the kernel has no key "
                         f"for it: insmod would fail (the module must refer to {key})")


def _keyed_trampolines(vmlinux) -> set[int]:
    """Addresses of the trampolines in vmlinux's static_call_tramp_key table, entries of
    two 32-bit offsets (trampoline, key), each from its own field."""
    table = _bounds(vmlinux, "__start_static_call_tramp_key", "__stop_static_call_tramp_key")
    if table is None:
        return set()
    start, stop = table
    data = vmlinux.read(start, stop - start)
    return {start + i + int.from_bytes(data[i:i + 4], "little", signed=True)
            for i in range(0, len(data) - 7, 8)}


def _check_table_sizes(ko: ElfObject, layout: Layout, problems: _Problems) -> None:
    """The loader walks each table by its size: a partial entry is read as garbage (the
    alternatives code BUG()s on a bad one), and ORC's two tables must pair up or the
    unwinder setup warns."""
    for name, (size, _anchor) in layout.tables().items():
        sec = ko.section(name)
        if sec is not None and size and len(sec.data) % size:
            problems.add(f"{name} is {len(sec.data)} bytes, not a whole number of "
                         f"{size}-byte entries")
    ips, orc = ko.section(".orc_unwind_ip"), ko.section(ORC_DATA)
    if ips is not None and orc is not None and layout.orc_entry and \
            len(ips.data) // 4 != len(orc.data) // layout.orc_entry:
        problems.add(f".orc_unwind_ip has {len(ips.data) // 4} entries but .orc_unwind "
                     f"{len(orc.data) // layout.orc_entry}")


def _is_code(sec: Section) -> bool:
    """Loaded code the kernel runs in place (alternative replacements are copied)."""
    return bool(sec.flags & SHF_ALLOC and sec.flags & SHF_EXECINSTR) and \
        not sec.name.startswith(".altinstr_")


def _pointed_at(ko: ElfObject, name: str) -> set[tuple[int, int]]:
    """(section id, offset) of every site a table of PC32 entries lists."""
    sec = ko.section(name)
    return {(id(site[0]), site[1]) for rel in (sec.relocs or [] if sec else [])
            if (site := _site(ko, rel)) is not None}


def _check_return_sites(ko: ElfObject, relocs, problems: _Problems) -> None:
    """Every `jmp __x86_return_thunk` must be listed in .return_sites: the kernel
    rewrites only listed ones at load, and 6.12 warns (`__warn_thunk`, taint W) when an
    unlisted one runs."""
    listed = _pointed_at(ko, ".return_sites")
    thunk_jumps = set()
    for sec, rel, _late in relocs:
        if rel.symbol.name != RETURN_THUNK or not _is_code(sec) or rel.offset < 1:
            continue
        if sec.data[rel.offset - 1] == JMP32:
            thunk_jumps.add((id(sec), rel.offset - 1))
            if (id(sec), rel.offset - 1) not in listed:
                problems.add(f"the return at {sec.name}+{rel.offset - 1:#x} is not listed in "
                             ".return_sites: the kernel would not patch it, and warns when "
                             "it runs")
    # ...and each listed site is such a jump: the kernel warns at load at any other
    # ("missing return thunk").
    names = {id(sec): sec.name for sec in ko.sections}
    for section_id, offset in sorted(listed - thunk_jumps):
        problems.add(f".return_sites lists {names.get(section_id, '?')}+{offset:#x}, which is "
                     f"not a jump to {RETURN_THUNK}: the kernel warns loading the module")


def _check_listed_calls(ko: ElfObject, relocs, table: str, wanted, what: str,
                        consequence: str, problems: _Problems) -> None:
    """Each site TABLE lists must be WHAT: a call, jump or conditional jump whose
    displacement is relocated to a symbol WANTED accepts. The kernel rewrites these
    sites at load, after checking the instruction it finds there."""
    targets = {(id(sec), rel.offset): rel.symbol.name for sec, rel, _late in relocs
               if _is_code(sec)}
    sections = {id(sec): sec for sec in ko.sections}
    for section_id, offset in sorted(_pointed_at(ko, table)):
        sec = sections[section_id]
        at = _displacement_at(sec.data[offset:offset + 4])
        target = targets.get((section_id, offset + at)) if at is not None else None
        if target is None or not wanted(target):
            problems.add(f"{table} lists {sec.name}+{offset:#x}, which is not {what}: "
                         f"{consequence}")


def _displacement_at(code: bytes) -> int | None:
    """Where the 32-bit displacement of the call, jmp or jcc CODE starts with is (after
    any CS/DS prefix: retpoline sites carry one so that the kernel can rewrite them)."""
    prefixes = len(code) - len(code.lstrip(b"\x2e\x3e"))
    op = code[prefixes:prefixes + 2]
    if op[:1] in (bytes([CALL]), bytes([JMP32])):
        return prefixes + 1
    if len(op) == 2 and op[0] == 0x0F and 0x80 <= op[1] <= 0x8F:
        return prefixes + 2
    return None


def _check_unwind_data(ko: ElfObject, problems: _Problems) -> None:
    """With ORC, every code section needs unwind entries: a task in code without them
    has an unreliable stack, which keeps the livepatch transition from completing."""
    if ko.section(".orc_unwind_ip") is None:
        return
    covered = {site for site, _offset in _pointed_at(ko, ".orc_unwind_ip")}
    for sec in ko.sections:
        if _is_code(sec) and sec.data and id(sec) not in covered:
            problems.add(f"{sec.name} has no ORC unwind entries: tasks in it would block the "
                         "livepatch transition")


__all__ = ["CheckReport", "check_module"]
