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

from builder.correlation import OWN_COPY, Side, canonical, cold_parent, masked
from builder.elf import (
    R_X86_64_64,
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
from builder.stages.diff import UnitDiff
from builder.symbols import nearest_to_neighbours

ORC_DATA = ".orc_unwind"
KLP_SYM_PREFIX = ".klp.sym."
# Static keys whose sites may stay off while a patch is live: tracing and debug output.
INERT_KEYS = ("__tracepoint_", "__UNIQUE_ID_ddebug")
# What static_call()'s __ADDRESSABLE(key) writes; kbuild discards it after objtool.
ADDRESSABLE = ".discard.addressable"
NOP5, NOP2 = bytes.fromhex("0f1f440000"), bytes.fromhex("6690")
JMP8, JMP32 = b"\xeb", b"\xe9"  # jmp rel8, jmp rel32
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

    def referenced_value(self, site: int, rtype: int) -> int | None: ...  # S + A there

    depends: frozenset[str]  # modules the kernel loads before this object


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
    target_object: str = "vmlinux"  # the object this unit's functions and callbacks belong to
    # Sites left out of the kernel's special sections, and what that means while live.
    notes: list[str] = field(default_factory=list)


class _Generator:
    def __init__(self, diff: UnitDiff, orig: ElfObject, patched: ElfObject,
                 symbols: SymbolSource, exports: Exports, prefix: str, layout: Layout,
                 provided: frozenset[str] = frozenset(),
                 sympos: dict[str, int] | None = None) -> None:
        self.diff = diff
        self.provided = provided  # new globals some unit of this patch defines
        # Special sections: entry size, and where the relocation naming the entry's
        # function sits. Entries of included functions are kept.
        self.special = layout.special_sections()
        self.layout = layout
        self.orig = Side(orig)
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
        # Positions the verify stage already proved (the changed functions' shipped copies).
        self.sympos_cache: dict[str, int] = {f"{diff.target_object}:{name}": pos
                                             for name, pos in (sympos or {}).items()}
        self.pside = Side(patched)
        self.notes: list[str] = []

    # ---- closure over what the patch needs -----------------------------

    def run(self) -> GeneratedUnit:
        p = Side(self.patched)
        roots = [p.functions[c.patched_name] for c in self.diff.changed]
        roots += [p.functions[n] for n in self.diff.new_functions]
        roots += [p.functions[n] for n in self.diff.callbacks.values() if n in p.functions]
        roots += [p.objects[n] for n in self.diff.new_data if n in p.objects]
        self._bring([s.section for s in roots])
        self._copy_special_sections()
        self._address_static_call_keys()
        result = GeneratedUnit(object=self.out, klp_symbols=sorted(self.klp), notes=self.notes,
                               target_object=self.objname)
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

    def _bring(self, work: list[Section]) -> None:
        """Copy these sections and everything they need that the kernel lacks."""
        brought = []
        while work:
            sec = work.pop()
            if id(sec) in self.included:
                continue
            self._include(sec)
            brought.append(sec)
            for rel in sec.relocs or []:
                needed = self._section_needed_by(sec, rel)
                if needed is not None and id(needed) not in self.included:
                    work.append(needed)
        for sec in brought:  # once all are in, so references between them map
            self.included[id(sec)].relocs = [self._translate(sec, rel)
                                             for rel in sec.relocs or []]

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
                # What the patch defines is local to it (no clash with the kernel), but
                # for the new globals other changed files of this patch call.
                bind = STB_GLOBAL if s.bind == STB_GLOBAL and s.name in self.diff.provides \
                    else STB_LOCAL
                copy = Symbol(name=s.name, value=s.value, size=s.size, type=s.type,
                              bind=bind, other=s.other, section=out)
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
        if sym.type == STT_FUNC and cold_parent(sym.name):
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
        if name in self.provided:
            owner = "patch"  # defined by another unit: the module's own link resolves it
        if owner is None or (owner == self.objname != "vmlinux"):
            # Not exported, or exported by the very module being patched (a normal
            # reference would make the patch depend on it): livepatch resolves it.
            return self._klp_symbol(self.objname, name, None)
        if owner != "vmlinux" and owner in self.symbols.depends:
            # Exported by a module the patched one depends on (sunrpc for nfsd): a normal
            # reference would make the patch module need it loaded at insmod; livepatch
            # resolves it when the patched module loads, after its dependencies.
            return self._klp_symbol(owner, name, 0)
        if owner not in ("vmlinux", "patch"):
            raise BuildError(
                stage="generate", file=self.diff.source,
                message=f"the patched code calls {name}, exported by module {owner}, which "
                        f"{self.objname} does not depend on: the patch module would need "
                        f"{owner} loaded, and a live patch cannot add a module dependency",
                hint="this fix changes which modules depend on which: it needs a reboot "
                     "(or the new module versions loaded)")
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
        """Which of several same-named symbols is this file's (1-based kallsyms position).

        First by code: the rebuilt original's bytes against each candidate's. Static
        inline helpers are often identical in every file, so then by place: the linker
        keeps one object's functions (and its data) together, so ours is the candidate
        nearest the symbols of this file whose names are unique.
        """
        candidates = list(range(len(addresses)))
        if orig_sym is not None and orig_sym.type == STT_FUNC:
            body = masked(self.orig.body(orig_sym), orig_sym.value,
                          self.orig.relocs_in(orig_sym))
            relocs = [Reloc(r.offset - orig_sym.value, r.type, r.symbol, 0)
                      for r in self.orig.relocs_in(orig_sym)]
            same_code = [i for i in candidates
                         if masked(self.symbols.read(addresses[i], len(body)), 0, relocs)
                         == body]
            if len(same_code) == 1:
                return same_code[0] + 1
            candidates = same_code or candidates  # none alike: runtime-patched sites differ
        if orig_sym is not None:
            pinned = self._pinned_by_references(orig_sym, [addresses[i] for i in candidates])
            if pinned is not None:
                return candidates[pinned] + 1
        # Place tells only for this file's own symbols; a name defined elsewhere is not ours
        # to guess.
        same_kind = {} if orig_sym is None else \
            self.orig.functions if orig_sym.type == STT_FUNC else self.orig.objects
        nearest = nearest_to_neighbours(self.symbols, [addresses[i] for i in candidates],
                                        [n for n in same_kind if n != name])
        if nearest is not None:
            return candidates[nearest] + 1
        tried = f"{len(candidates)} candidates have its code, no function of this file " \
            "whose place is known refers to it, and no symbol of this file with a unique " \
            "name lies clearly nearer to one of them"
        raise BuildError(
            stage="generate", file=self.diff.source, function=name,
            message=f"'{name}' exists {len(addresses)} times in {self.objname} and the builder "
                    f"cannot tell which one belongs to this file: {tried}",
            hint="patch a caller with a unique name instead")

    def _pinned_by_references(self, orig_sym: Symbol, candidates: list[int]) -> int | None:
        """Which candidate the shipped code of this file itself refers to.

        A function of this file whose place in the running kernel is known (a unique name,
        or a position verify proved) and whose rebuilt original refers to the symbol holds,
        in the shipped binary, the address the linker chose: read back, it names the
        candidate. Every such reference must agree.
        """
        found: set[int] = set()
        for fname, fsym in self.orig.functions.items():
            start = self._known_address(fname)
            if start is None:
                continue
            for rel in self.orig.relocs_in(fsym):
                sym = rel.symbol
                if sym is not orig_sym and not (
                        sym.type == STT_SECTION and sym.section is orig_sym.section and
                        orig_sym.value <= self.orig.target_offset(fsym.section, rel)
                        < orig_sym.value + max(orig_sym.size, 1)):
                    continue
                value = self.symbols.referenced_value(start + rel.offset - fsym.value, rel.type)
                if value is None:
                    continue
                base = orig_sym.value if sym.type == STT_SECTION else 0
                address = (value - rel.addend + base) & (1 << 64) - 1
                found.add(candidates.index(address) if address in candidates else -1)
        return found.pop() if len(found) == 1 and -1 not in found else None

    def _known_address(self, name: str) -> int | None:
        """Where a function of this file sits in the running kernel, if that is certain."""
        addresses = self.symbols.addresses(name)
        pos = self.sympos_cache.get(f"{self.objname}:{name}")
        if len(addresses) == 1:
            return addresses[0]
        if pos and pos <= len(addresses):
            return addresses[pos - 1]
        return None

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
            data = bytearray()
            relocs = []
            for start in kept:
                entry = [self._translate_special(sec, r, len(data) + r.offset - start)
                         for r in sec.relocs if start <= r.offset < start + size]
                if any(_resolved_late(r.symbol) for r in entry):
                    self._leave_out(sec, start, entry)
                    continue
                if name == ".orc_unwind_ip":
                    orc_entries.append(start // size)
                data += sec.data[start:start + size]
                relocs += entry
            if not data:
                continue
            self.out.sections.append(Section(name=name, type=SHT_PROGBITS, flags=sec.flags,
                                             align=sec.align, entsize=sec.entsize,
                                             data=bytes(data), relocs=relocs))
        if orc_entries:
            src = self.patched.section(ORC_DATA)
            size = self.layout.orc_entry
            self.out.sections.append(Section(
                name=ORC_DATA, flags=src.flags, align=src.align, entsize=src.entsize,
                data=b"".join(src.data[i * size:(i + 1) * size] for i in orc_entries)))

    def _address_static_call_keys(self) -> None:
        """Where objtool writes `.static_call_sites` when kbuild links the module (6.12),
        it names a site's key by finding `__SCK__X` for a call to `__SCT__X` in the
        object; the compiled code has the key there only through `.discard.addressable`
        (static_call()'s __ADDRESSABLE), which the patch object does not copy. Without
        it objtool names the trampoline, and the kernel refuses the module unless that
        trampoline was exported with its key (check: _check_static_call_keys). So each
        called trampoline whose key vmlinux exports gets its addressable entry back."""
        if ".static_call_sites" not in self.layout.linked_tables:
            return
        keys = []
        for name in list(self.undefined):
            key = "__SCK__" + name.removeprefix("__SCT__")
            if name.startswith("__SCT__") and self.exports.owner(key) == "vmlinux" and \
                    not self.exports.namespace(key):
                keys.append(self._external(key))
        if keys:
            self.out.sections.append(Section(
                name=ADDRESSABLE, type=SHT_PROGBITS, flags=SHF_ALLOC | SHF_WRITE, align=8,
                data=bytes(8 * len(keys)),
                relocs=[Reloc(offset=8 * i, type=R_X86_64_64, symbol=key, addend=0)
                        for i, key in enumerate(keys)]))

    def _leave_out(self, sec: Section, start: int, entry: list[Reloc]) -> None:
        """An entry that names a symbol of a patched module, or refuse.

        The kernel reads jump-label and static-call entries when it loads the patch
        module, but livepatch resolves a module's symbols only when it patches that
        module, later: kept, such an entry would be read unresolved (an Oops at insmod).
        Left out, a static call still goes through its trampoline (always current), and a
        tracepoint or pr_debug site stays in its compiled state, off.
        """
        site_rel = next(r for r in sec.relocs if r.offset == start)
        function = self._named_target(sec, site_rel)
        where = function.name if function is not None else sec.name
        key = next(r.symbol.name for r in entry if _resolved_late(r.symbol))
        objname, symbol = klp_symbol_parts(key)
        if sec.name == ".static_call_sites":
            self.notes.append(f"{where}: static call {symbol} ({objname}) is called through "
                              "its trampoline")
            return
        if sec.name == "__jump_table" and symbol.startswith(INERT_KEYS) and \
                self._turn_site_off(sec, start):
            kind = "tracepoint" if symbol.startswith("__tracepoint_") else "pr_debug"
            self.notes.append(f"{where}: {kind} {symbol} ({objname}) stays off in the "
                              "patched function")
            return
        hint = ("use static_key_enabled(&key) instead of static_branch_*() in the patched "
                "function" if sec.name == "__jump_table" else "report this patch to the "
                "developers with the kernel release")
        raise BuildError(
            stage="generate", file=self.diff.source, function=where,
            message=f"{where} needs a {sec.name} entry for {symbol}, which lives in module "
                    f"{objname}: the kernel reads {sec.name} when it loads the patch module, "
                    f"before livepatch can resolve symbols of {objname}",
            hint=hint)

    def _turn_site_off(self, sec: Section, start: int) -> bool:
        """Leave a jump-label site in its default state, off, if that is what it starts
        as; False if it starts on.

        The entry says "not taken by default" (bit 0 clear). Its code is a NOP, or, where
        objtool runs on the linked module (6.12's IBT kernels), still the `jmp` that
        objtool turns into a NOP of the same length when the entry's bit 1 asks it to:
        without the entry objtool would leave that jmp taken, so it is made the NOP here.
        """
        site_rel = next(r for r in sec.relocs if r.offset == start)
        key_rel = next((r for r in sec.relocs if r.offset == start + 8), None)
        if key_rel is None or key_rel.addend & 1:
            return False
        out = self.included[id(site_rel.symbol.section)]
        offset = self.pside.target_offset(sec, site_rel)
        code = out.data[offset:offset + 5]
        if code == NOP5 or code[:2] == NOP2:
            return True
        length = {JMP8: 2, JMP32: 5}.get(code[:1])
        if length is None or not key_rel.addend & 2:
            return False
        nop = NOP2 if length == 2 else NOP5
        out.data = out.data[:offset] + nop + out.data[offset + length:]
        out.relocs = [r for r in out.relocs if not offset <= r.offset < offset + length]
        return True

    def _belongs(self, rel: Reloc) -> bool:
        sec = rel.symbol.section
        return sec is not None and id(sec) in self.included and bool(sec.flags & SHF_EXECINSTR)

    def _translate_special(self, site: Section, rel: Reloc, offset: int) -> Reloc:
        sym = rel.symbol
        target = sym.section
        # An entry may point at code or strings no function refers to directly, or at a
        # pr_debug descriptor used only as a jump-label key (print_hex_dump_debug).
        if target is not None and id(target) not in self.included and \
                (target.flags & SHF_STRINGS or target.name.startswith(".altinstr_")
                 or target.name in OWN_COPY):
            self._bring([target])
        moved = self._translate(site, rel)
        return Reloc(offset, moved.type, moved.symbol, moved.addend)


def klp_symbol_parts(name: str) -> tuple[str, str]:
    """'.klp.sym.nfsd.fh_verify,0' -> ('nfsd', 'fh_verify')."""
    objname, rest = name[len(KLP_SYM_PREFIX):].split(".", 1)
    return objname, rest.rsplit(",", 1)[0]


def _resolved_late(sym: Symbol) -> bool:
    """True for a livepatch symbol of a module: resolved only when that module is patched."""
    return sym.name.startswith(KLP_SYM_PREFIX) and klp_symbol_parts(sym.name)[0] != "vmlinux"


def generate_unit(diff: UnitDiff, symbols: SymbolSource, exports: Exports, prefix: str,
                  layout: Layout, provided: frozenset[str] = frozenset(),
                  sympos: dict[str, int] | None = None) -> GeneratedUnit:
    """The patch's part of one translation unit, from the two objects its diff read."""
    return _Generator(diff, diff.original, diff.patched, symbols, exports, prefix, layout,
                      provided, sympos).run()


__all__ = ["FunctionEntry", "GeneratedUnit", "SymbolSource", "Exports", "generate_unit"]
