# SPDX-License-Identifier: GPL-3.0-or-later
"""Generate: turn the changed functions of one unit into a patch object.

The object holds only what the patch needs: the new versions of changed
functions, new functions and data, copies of string and anonymous constants,
and the entries of the kernel's special sections (ORC, alternatives, jump
labels, bug and exception tables, ftrace and return-thunk sites) that belong
to those functions. References the module loader cannot resolve — local or
unexported symbols, and symbols of the patched module — point at livepatch
symbols `.klp.sym.OBJ.NAME,POS`; the link stage turns their relocations into
`.klp.rela.OBJ.SECTION` sections (Documentation/livepatch/module-elf-format.rst).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from builder.elf import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_STRINGS,
    SHF_WRITE,
    SHT_PROGBITS,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FUNC,
    STT_NOTYPE,
    STT_OBJECT,
    STT_SECTION,
    ElfObject,
    Reloc,
    Section,
    Symbol,
)
from builder.errors import BuildError
from builder.layout import Layout
from builder.stages.diff import UnitDiff, _cold_parent, _masked, _Side, canonical

ORC_DATA = ".orc_unwind"
# Sections never copied: build metadata, and objtool hints consumed at compile time.
DROPPED_PREFIXES = (".debug", ".comment", ".note", ".discard", ".kpatch", ".orc_unwind",
                    ".ibt_endbr_seal", ".initcall", ".init.", ".exit.", ".modinfo",
                    "__ksymtab", "___ksymtab", "__kcrctab", "___kcrctab", ".gnu.")
# Sections whose new contents a live patch cannot register at run time.
UNSUPPORTED_NEW = ("__tracepoints", "_ftrace_events", "__param", ".data..percpu",
                   "__dyndbg_classes", ".init_array", ".ctors")


class SymbolSource(Protocol):
    """The target object's symbol table as livepatch sees it (kallsyms order)."""

    def addresses(self, name: str) -> list[int]: ...

    def read(self, address: int, size: int) -> bytes: ...


class Exports(Protocol):
    def owner(self, name: str) -> str | None: ...  # "vmlinux", a module name, or None

    def namespace(self, name: str) -> str: ...  # "" when exported without a namespace


@dataclass
class FunctionEntry:
    """One klp_func: which function is replaced and by which symbol of the patch."""

    object: str
    old_name: str
    sympos: int
    new_symbol: str
    source: str
    reason: str = ""


@dataclass
class GeneratedUnit:
    object: ElfObject
    functions: list[FunctionEntry] = field(default_factory=list)
    callbacks: dict[str, str] = field(default_factory=dict)  # kind → global symbol
    klp_symbols: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)


class _Generator:
    def __init__(self, diff: UnitDiff, orig: ElfObject, patched: ElfObject,
                 symbols: SymbolSource, exports: Exports, prefix: str, layout: Layout) -> None:
        self.diff = diff
        # Special sections: entry size, and where the relocation naming the entry's
        # function sits. Entries of included functions are kept.
        self.special = layout.special_sections()
        self.layout = layout
        self.orig = _Side(orig)
        self.patched = patched
        self.symbols = symbols
        self.exports = exports
        self.prefix = prefix  # keeps generated global names unique across units
        self.objname = diff.target_object
        self.out = ElfObject()
        self.included: dict[int, Section] = {}  # id(patched section) → output section
        self.symbol_map: dict[int, Symbol] = {}  # id(patched symbol) → output symbol
        self.klp: dict[str, Symbol] = {}
        self.undefined: dict[str, Symbol] = {}
        self.sympos_cache: dict[str, int] = {}
        self.pside = _Side(patched)

    # ---- closure over what the patch needs -----------------------------

    def run(self) -> GeneratedUnit:
        p = _Side(self.patched)
        roots = [p.functions[c.patched_name] for c in self.diff.changed]
        roots += [p.functions[n] for n in self.diff.new_functions]
        roots += [p.functions[n] for n in self.diff.callbacks.values() if n in p.functions]
        roots += [p.objects[n] for n in self.diff.new_data if n in p.objects]
        work = [s.section for s in roots]
        while work:
            sec = work.pop()
            if id(sec) in self.included:
                continue
            self._include(sec)
            for rel in sec.relocs or []:
                needed = self._section_needed_by(sec, rel)
                if needed is not None and id(needed) not in self.included:
                    work.append(needed)
        for sec in list(self.included_sources()):
            out = self.included[id(sec)]
            out.relocs = [self._translate(sec, rel) for rel in sec.relocs or []]
        self._copy_special_sections()
        result = GeneratedUnit(object=self.out, klp_symbols=sorted(self.klp))
        for change in self.diff.changed:
            psym = p.functions[change.patched_name]
            result.functions.append(FunctionEntry(
                object=self.objname, old_name=change.name,
                sympos=self._sympos(change.name, self.orig.functions.get(change.name)),
                new_symbol=self._export_alias(psym, f"fn{len(result.functions)}"),
                source=self.diff.source, reason=change.reason))
        for kind, name in self.diff.callbacks.items():
            result.callbacks[kind] = self._export_alias(p.functions[name], f"cb_{kind}")
        result.sections = [s.name for s in self.out.sections]
        return result

    def included_sources(self) -> list[Section]:
        return [s for s in self.patched.sections if id(s) in self.included]

    def _include(self, sec: Section) -> None:
        name = sec.name
        if name.startswith(UNSUPPORTED_NEW):
            raise BuildError(
                stage="generate", file=self.diff.source,
                message=f"the patch needs new contents in {name}, which a live patch cannot "
                        "register in a running kernel",
                hint="avoid adding tracepoints, module parameters or per-CPU variables in a "
                     "live patch; use a shadow variable for new per-object state")
        out = Section(name=name, type=sec.type, flags=sec.flags, data=sec.data, size=sec.size,
                      align=sec.align, entsize=sec.entsize)
        self.included[id(sec)] = out
        self.out.sections.append(out)
        for s in self.patched.symbols:
            if s.section is sec and s.type in (STT_FUNC, STT_OBJECT, STT_NOTYPE, STT_SECTION):
                # Everything the patch defines is local to it: no clash with the kernel.
                copy = Symbol(name=s.name, value=s.value, size=s.size, type=s.type,
                              bind=STB_LOCAL, other=s.other, section=out)
                self.symbol_map[id(s)] = copy
                self.out.symbols.append(copy)

    def _section_needed_by(self, site: Section, rel: Reloc) -> Section | None:
        """The patched section a reference forces into the patch, if any."""
        sec = rel.symbol.section
        if sec is None or not sec.flags & SHF_ALLOC or sec.name.startswith(DROPPED_PREFIXES):
            return None
        target = self._named_target(site, rel)
        if target is not None and self._original_of(target) is not None:
            return None  # the running kernel has it: refer to its copy
        return sec

    def _named_target(self, site: Section, rel: Reloc) -> Symbol | None:
        sym = rel.symbol
        if sym.type != STT_SECTION:
            return sym
        return self.patched.symbol_at(sym.section, self.pside.target_offset(site, rel))

    def _original_of(self, sym: Symbol) -> str | None:
        """The running kernel's name for a patched-object symbol, if it has one."""
        if sym.name in self.diff.new_data or sym.name in self.diff.new_functions:
            return None
        if sym.name in self.diff.callbacks.values():
            return None
        if sym.type == STT_FUNC and _cold_parent(sym.name):
            return None  # a .cold part jumps back into its parent: it travels with it
        if sym.type == STT_OBJECT and canonical(sym.name) != sym.name and \
                not sym.section.flags & SHF_WRITE:
            return None  # compiler-made constants (__func__.N, CSWTCH.N): copy them
        return self.diff.correlation.get(sym.name)

    # ---- relocations ----------------------------------------------------

    def _translate(self, site: Section, rel: Reloc) -> Reloc:
        sym = rel.symbol
        if sym.section is not None and id(sym.section) in self.included:
            return Reloc(rel.offset, rel.type, self._mapped(sym), rel.addend)
        if sym.section is None:  # undefined: an external symbol
            return Reloc(rel.offset, rel.type, self._external(sym.name), rel.addend)
        target = self._named_target(site, rel)
        original = self._original_of(target) if target is not None else None
        if target is None or original is None:
            raise BuildError(
                stage="generate", file=self.diff.source,
                message=f"cannot resolve a reference from {site.name} to {sym.name}"
                        f"+{rel.addend:#x}: it is neither in the patch nor a named symbol of "
                        "the running kernel", hint="report this patch to the developers")
        addend = rel.addend - target.value if sym.type == STT_SECTION else rel.addend
        osym = self.orig.functions.get(original) or self.orig.objects.get(original)
        return Reloc(rel.offset, rel.type,
                     self._klp_symbol(self.objname, original, self._sympos(original, osym)),
                     addend)

    def _mapped(self, sym: Symbol) -> Symbol:
        mapped = self.symbol_map.get(id(sym))
        if mapped is None:  # a section symbol the patched object did not have
            mapped = self.out.section_symbol(self.included[id(sym.section)])
        return mapped

    def _external(self, name: str) -> Symbol:
        owner = self.exports.owner(name)
        if owner is None or (owner == self.objname != "vmlinux"):
            # Not exported, or exported by the very module being patched (a normal
            # reference would make the patch depend on it): livepatch resolves it.
            return self._klp_symbol(self.objname, name, None)
        if self.exports.namespace(name):
            return self._klp_symbol(owner, name, 0)  # no MODULE_IMPORT_NS needed
        if name not in self.undefined:
            self.undefined[name] = Symbol(name=name, bind=STB_GLOBAL)
            self.out.symbols.append(self.undefined[name])
        return self.undefined[name]

    def _klp_symbol(self, objname: str, name: str, sympos: int | None) -> Symbol:
        if sympos is None:
            sympos = self._sympos(name, None, objname)
        full = f".klp.sym.{objname}.{name},{sympos}"
        if full not in self.klp:
            self.klp[full] = Symbol(name=full, bind=STB_GLOBAL)
            self.out.symbols.append(self.klp[full])
        return self.klp[full]

    def _sympos(self, name: str, orig_sym: Symbol | None, objname: str | None = None) -> int:
        """livepatch's position of a symbol: 0 if unique, else 1-based in kallsyms order."""
        objname = objname or self.objname
        key = f"{objname}:{name}"
        if key in self.sympos_cache:
            return self.sympos_cache[key]
        if objname != self.objname:
            return 0
        addresses = self.symbols.addresses(name)
        if not addresses:
            raise BuildError(
                stage="generate", file=self.diff.source, function=name,
                message=f"'{name}' is not in the symbol table of {objname}",
                hint="the shipped kernel may have inlined or dropped it; patch its callers")
        if len(addresses) == 1:
            pos = 0
        else:
            pos = self._disambiguate(name, addresses, orig_sym)
        self.sympos_cache[key] = pos
        return pos

    def _disambiguate(self, name: str, addresses: list[int], orig_sym: Symbol | None) -> int:
        if orig_sym is not None and orig_sym.type == STT_FUNC:
            body = _masked(self.orig.body(orig_sym), orig_sym.value,
                           self.orig.relocs_in(orig_sym))
            relocs = self.orig.relocs_in(orig_sym)
            matches = []
            for i, addr in enumerate(addresses):
                shipped = self.symbols.read(addr, len(body))
                if _masked(shipped, 0, [Reloc(r.offset - orig_sym.value, r.type, r.symbol, 0)
                                        for r in relocs]) == body:
                    matches.append(i + 1)
            if len(matches) == 1:
                return matches[0]
        raise BuildError(
            stage="generate", file=self.diff.source, function=name,
            message=f"'{name}' exists {len(addresses)} times in {self.objname} and the builder "
                    "cannot tell which one belongs to this file",
            hint="rename nothing; patch a caller with a unique name instead")

    def _export_alias(self, psym: Symbol, label: str) -> str:
        """A global name for the hook to reference a (usually static) patched function."""
        name = f"__klp_{self.prefix}_{label}"
        target = self._mapped(psym)
        self.out.symbols.append(Symbol(name=name, value=target.value, size=target.size,
                                       type=STT_FUNC, bind=STB_GLOBAL, section=target.section))
        return name

    # ---- special sections ------------------------------------------------

    def _copy_special_sections(self) -> None:
        orc_entries: list[int] = []
        for name, (size, anchor) in self.special.items():
            sec = self.patched.section(name)
            if sec is None or not sec.relocs:
                continue
            by_offset = {}
            for r in sec.relocs:
                by_offset.setdefault(r.offset, []).append(r)
            kept = [start for start in range(0, len(sec.data), size)
                    if any(self._belongs(r) for r in by_offset.get(start + anchor, []))]
            if not kept:
                continue
            if name == ".orc_unwind_ip":
                orc_entries = [start // size for start in kept]
            out = Section(name=name, type=SHT_PROGBITS, flags=sec.flags, align=sec.align,
                          entsize=sec.entsize)
            data = bytearray()
            relocs = []
            for start in kept:
                base = len(data)
                data += sec.data[start:start + size]
                for r in sec.relocs:
                    if start <= r.offset < start + size:
                        relocs.append(self._translate_special(sec, r, base + r.offset - start))
            out.data = bytes(data)
            out.relocs = relocs
            self.out.sections.append(out)
        if orc_entries:
            src = self.patched.section(ORC_DATA)
            size = self.layout.orc_entry
            self.out.sections.append(Section(
                name=ORC_DATA, flags=src.flags, align=src.align, entsize=src.entsize,
                data=b"".join(src.data[i * size:(i + 1) * size] for i in orc_entries)))

    def _belongs(self, rel: Reloc) -> bool:
        sec = rel.symbol.section
        return sec is not None and id(sec) in self.included and bool(sec.flags & SHF_EXECINSTR)

    def _translate_special(self, site: Section, rel: Reloc, offset: int) -> Reloc:
        sym = rel.symbol
        target = sym.section
        # An entry may point at code or strings no function refers to directly.
        if target is not None and id(target) not in self.included and \
                (target.flags & SHF_STRINGS or target.name.startswith(".altinstr_")):
            self._include(target)
            self.included[id(target)].relocs = [self._translate(target, r)
                                                for r in target.relocs or []]
        moved = self._translate(site, rel)
        return Reloc(offset, moved.type, moved.symbol, moved.addend)


def generate_unit(diff: UnitDiff, orig: ElfObject, patched: ElfObject, symbols: SymbolSource,
                  exports: Exports, prefix: str, layout: Layout) -> GeneratedUnit:
    return _Generator(diff, orig, patched, symbols, exports, prefix, layout).run()


__all__ = ["FunctionEntry", "GeneratedUnit", "SymbolSource", "Exports", "generate_unit"]
