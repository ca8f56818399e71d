# SPDX-License-Identifier: GPL-2.0-or-later OR GPL-3.0-or-later
"""A small, editable model of x86-64 relocatable ELF files (objects and .ko modules).

pyelftools reads; this module adds the in-memory model the diff, verify, generate and
post-link stages share, and a writer, because pyelftools cannot write ELF. `open_elf`
is the builder's one way into an ELF file: the model reads through it, and so do the
queries of the shipped kernel's linked images (builder/symbols.py).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from pathlib import Path

from elftools.elf.elffile import ELFFile

SHT_NULL, SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_NOBITS = 0, 1, 2, 3, 4, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR, SHF_MERGE, SHF_STRINGS = 0x1, 0x2, 0x4, 0x10, 0x20
SHF_INFO_LINK = 0x40
SHF_LINK_ORDER = 0x80
SHF_RELA_LIVEPATCH = 0x00100000
SHN_UNDEF, SHN_ABS, SHN_COMMON, SHN_LIVEPATCH = 0, 0xFFF1, 0xFFF2, 0xFF20
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4

# x86-64 relocation types and the number of bytes each one patches.
R_X86_64_NONE, R_X86_64_64, R_X86_64_PC32, R_X86_64_PLT32 = 0, 1, 2, 4
R_X86_64_32, R_X86_64_32S, R_X86_64_PC64 = 10, 11, 24
RELOC_WIDTH = {R_X86_64_64: 8, R_X86_64_PC32: 4, R_X86_64_PLT32: 4, R_X86_64_32: 4,
               R_X86_64_32S: 4, R_X86_64_PC64: 8}
PC_RELATIVE = {R_X86_64_PC32, R_X86_64_PLT32, R_X86_64_PC64}

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
RELA_ENTRY = struct.Struct("<QQq")


def open_elf(source: bytes | Path | str) -> ELFFile:
    """pyelftools' reader over a whole ELF file, given its bytes or its path (read here,
    at once: no file stays open)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return ELFFile(io.BytesIO(data))


@dataclass
class Symbol:
    name: str
    value: int = 0
    size: int = 0
    type: int = STT_NOTYPE
    bind: int = STB_LOCAL
    other: int = 0
    section: Section | None = None  # None: undefined or special (see shndx)
    shndx: int = SHN_UNDEF  # used when section is None (UNDEF, ABS, LIVEPATCH)

    @property
    def defined(self) -> bool:
        return self.section is not None or self.shndx == SHN_ABS

    def __repr__(self) -> str:
        where = self.section.name if self.section else hex(self.shndx)
        return f"Symbol({self.name!r} @{where}+{self.value:#x})"


@dataclass
class Reloc:
    offset: int
    type: int
    symbol: Symbol
    addend: int

    @property
    def width(self) -> int:
        return RELOC_WIDTH.get(self.type, 4)


@dataclass(eq=False)
class Section:
    name: str
    type: int = SHT_PROGBITS
    flags: int = 0
    data: bytes = b""
    size: int = 0  # for NOBITS; otherwise len(data)
    align: int = 1
    entsize: int = 0
    addr: int = 0
    # Raw link/info for sections the model does not interpret (notes, groups …).
    link: int = 0
    info: int = 0
    link_section: Section | None = None  # sh_link of SHF_LINK_ORDER sections
    relocs: list[Reloc] | None = None  # relocations applying to this section
    rela_flags: int = SHF_INFO_LINK
    rela_name: str | None = None  # name of the rela section (default ".rela" + name)

    @property
    def length(self) -> int:
        return self.size if self.type == SHT_NOBITS else len(self.data)

    def __repr__(self) -> str:
        return f"Section({self.name!r}, {self.length} bytes)"


def _relocations(rela, symbols: dict[int, Symbol]) -> list[Reloc]:
    """The entries of an x86-64 SHT_RELA section (Elf64_Rela: offset, info, addend),
    unpacked at once: pyelftools' entry-by-entry parse took most of a diff's time."""
    if rela.header["sh_entsize"] != RELA_ENTRY.size:
        raise ValueError(f"{rela.name}: entries of {rela.header['sh_entsize']} bytes, "
                         f"not Elf64_Rela's {RELA_ENTRY.size}")
    return [Reloc(offset=offset, type=info & 0xFFFFFFFF, symbol=symbols[info >> 32],
                  addend=addend)
            for offset, info, addend in RELA_ENTRY.iter_unpack(rela.data())]


@dataclass
class ElfObject:
    """An ET_REL file: sections, one symbol table, RELA relocations."""

    sections: list[Section] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)  # without the null symbol
    machine: int = 62  # EM_X86_64
    flags: int = 0
    # Relocation sections kept verbatim (e.g. livepatch ones); see write().
    extra_relas: list[tuple[Section, Section, list[Reloc]]] = field(default_factory=list)

    # ---- reading ---------------------------------------------------------

    @classmethod
    def read(cls, path: Path | str) -> ElfObject:
        elf = open_elf(path)
        if elf["e_type"] != "ET_REL" or elf["e_machine"] != "EM_X86_64":
            raise ValueError(f"{path}: not an x86-64 relocatable ELF file")
        return cls._from_elffile(elf)

    @classmethod
    def _from_elffile(cls, elf: ELFFile) -> ElfObject:
        obj = cls(flags=elf["e_flags"])
        by_index: dict[int, Section] = {}
        rela_headers = []
        symtab_index = None
        for index, sec in enumerate(elf.iter_sections()):
            h = sec.header
            if index == 0:
                continue
            kind = h["sh_type"]
            if kind == "SHT_SYMTAB":
                symtab_index = index
                continue
            if kind == "SHT_STRTAB":
                continue
            if kind == "SHT_RELA":
                rela_headers.append((index, sec))
                continue
            data = b"" if kind == "SHT_NOBITS" else sec.data()
            section = Section(
                name=sec.name, type=_num_type(h["sh_type"]), flags=h["sh_flags"], data=data,
                size=h["sh_size"], align=h["sh_addralign"], entsize=h["sh_entsize"],
                addr=h["sh_addr"], link=h["sh_link"], info=h["sh_info"])
            by_index[index] = section
            obj.sections.append(section)
        for section in obj.sections:
            if section.flags & SHF_LINK_ORDER:
                section.link_section = by_index.get(section.link)
        if symtab_index is None:
            return obj
        symtab = elf.get_section(symtab_index)
        raw_symbols: dict[int, Symbol] = {}
        for i, s in enumerate(symtab.iter_symbols()):
            if i == 0:
                continue
            shndx = s["st_shndx"]
            numeric = shndx if isinstance(shndx, int) else _SPECIAL_SHNDX.get(shndx, SHN_UNDEF)
            section = by_index.get(numeric) if isinstance(shndx, int) else None
            name = s.name
            if s["st_info"]["type"] == "STT_SECTION" and section is not None:
                name = section.name
            sym = Symbol(name=name, value=s["st_value"], size=s["st_size"],
                         type=_SYMBOL_TYPES.get(s["st_info"]["type"], STT_NOTYPE),
                         bind=_SYMBOL_BINDS.get(s["st_info"]["bind"], STB_LOCAL),
                         other=_VISIBILITY.get(s["st_other"]["visibility"], 0),
                         section=section, shndx=numeric if section is None else 0)
            raw_symbols[i] = sym
            obj.symbols.append(sym)
        for _index, rela in rela_headers:
            target = by_index.get(rela.header["sh_info"])
            relocs = _relocations(rela, raw_symbols)
            if target is None:
                continue
            if rela.header["sh_flags"] & SHF_RELA_LIVEPATCH or rela.name != ".rela" + target.name:
                obj.extra_relas.append((Section(name=rela.name, type=SHT_RELA,
                                                flags=rela.header["sh_flags"], align=8,
                                                entsize=24), target, relocs))
            else:
                target.relocs = relocs
                target.rela_flags = rela.header["sh_flags"]
        return obj

    # ---- queries ---------------------------------------------------------

    def section(self, name: str) -> Section | None:
        for sec in self.sections:
            if sec.name == name:
                return sec
        return None

    def symbol(self, name: str) -> Symbol | None:
        for sym in self.symbols:
            if sym.name == name and sym.type != STT_SECTION:
                return sym
        return None

    def symbols_in(self, section: Section) -> list[Symbol]:
        return [s for s in self.symbols if s.section is section and s.type != STT_SECTION]

    def symbol_at(self, section: Section, offset: int) -> Symbol | None:
        """The function or object symbol whose bytes contain offset (or start there)."""
        best = None
        for s in self.symbols:
            if s.section is not section or s.type not in (STT_FUNC, STT_OBJECT):
                continue
            inside = s.value <= offset < s.value + max(s.size, 1)
            if inside and (best is None or s.size < best.size):
                best = s
        return best

    def section_symbol(self, section: Section) -> Symbol:
        for s in self.symbols:
            if s.type == STT_SECTION and s.section is section:
                return s
        sym = Symbol(name=section.name, type=STT_SECTION, section=section)
        self.symbols.insert(0, sym)
        return sym

    # ---- writing ---------------------------------------------------------

    def write(self, path: Path | str) -> None:
        """Write the model as an ET_REL file.

        Local symbols come first (ELF rule); each section with relocs gets a
        `.rela` section; extra_relas (livepatch) are written with their own flags.
        """
        sections = list(self.sections)
        out_sections: list[Section] = [Section(name="", type=SHT_NULL)] + sections
        index_of = {id(s): i for i, s in enumerate(out_sections)}
        for sec in sections:
            if sec.link_section is not None:
                sec.link = index_of[id(sec.link_section)]

        ordered = sorted(self.symbols, key=lambda s: 0 if s.bind == STB_LOCAL else 1)
        n_locals = 1 + sum(1 for s in ordered if s.bind == STB_LOCAL)
        sym_index = {id(s): i + 1 for i, s in enumerate(ordered)}

        strtab = _StringTable()
        sym_data = bytearray(_SYM.size)
        for s in ordered:
            name = "" if s.type == STT_SECTION else s.name
            shndx = index_of[id(s.section)] if s.section is not None else s.shndx
            sym_data += _SYM.pack(strtab.add(name), (s.bind << 4) | s.type, s.other,
                                  shndx, s.value, s.size)

        rela_sections: list[tuple[Section, int, list[Reloc]]] = []
        for sec in sections:
            if sec.relocs:
                rela = Section(name=sec.rela_name or ".rela" + sec.name, type=SHT_RELA,
                               flags=sec.rela_flags, align=8, entsize=24)
                rela_sections.append((rela, index_of[id(sec)], sec.relocs))
        for rela, target, relocs in self.extra_relas:
            rela_sections.append((rela, index_of[id(target)], relocs))

        symtab_index = len(out_sections) + len(rela_sections)
        for rela, target, relocs in rela_sections:
            rela.data = b"".join(
                RELA_ENTRY.pack(r.offset, (sym_index[id(r.symbol)] << 32) | r.type, r.addend)
                for r in relocs)
            rela.link, rela.info = symtab_index, target
            out_sections.append(rela)

        symtab = Section(name=".symtab", type=SHT_SYMTAB, data=bytes(sym_data), align=8,
                         entsize=_SYM.size, link=symtab_index + 1, info=n_locals)
        strsec = Section(name=".strtab", type=SHT_STRTAB, data=strtab.data())
        out_sections += [symtab, strsec]
        shstr = _StringTable()
        names = [shstr.add(s.name) for s in out_sections]
        shstrtab = Section(name=".shstrtab", type=SHT_STRTAB)
        names.append(shstr.add(".shstrtab"))
        shstrtab.data = shstr.data()
        out_sections.append(shstrtab)

        blob = bytearray(_EHDR.size)
        offsets = []
        for sec in out_sections:
            if sec.type in (SHT_NULL, SHT_NOBITS):
                offsets.append(len(blob) if sec.type == SHT_NOBITS else 0)
                continue
            align = max(sec.align, 1)
            blob += b"\0" * (-len(blob) % align)
            offsets.append(len(blob))
            blob += sec.data
        blob += b"\0" * (-len(blob) % 8)
        shoff = len(blob)
        for sec, name, off in zip(out_sections, names, offsets, strict=True):
            blob += _SHDR.pack(name, sec.type, sec.flags, sec.addr, off, sec.length,
                               sec.link, sec.info, sec.align, sec.entsize)
        ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
        blob[: _EHDR.size] = _EHDR.pack(ident, 1, self.machine, 1, 0, 0, shoff, self.flags,
                                        _EHDR.size, 0, 0, _SHDR.size, len(out_sections),
                                        len(out_sections) - 1)
        Path(path).write_bytes(bytes(blob))


class _StringTable:
    def __init__(self) -> None:
        self._data = bytearray(b"\0")
        self._index: dict[str, int] = {"": 0}

    def add(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self._data)
            self._data += text.encode() + b"\0"
        return self._index[text]

    def data(self) -> bytes:
        return bytes(self._data)


_SYMBOL_TYPES = {"STT_NOTYPE": STT_NOTYPE, "STT_OBJECT": STT_OBJECT, "STT_FUNC": STT_FUNC,
                 "STT_SECTION": STT_SECTION, "STT_FILE": STT_FILE}
_SYMBOL_BINDS = {"STB_LOCAL": STB_LOCAL, "STB_GLOBAL": STB_GLOBAL, "STB_WEAK": STB_WEAK}
_VISIBILITY = {"STV_DEFAULT": 0, "STV_INTERNAL": 1, "STV_HIDDEN": 2, "STV_PROTECTED": 3}
_SPECIAL_SHNDX = {"SHN_UNDEF": SHN_UNDEF, "SHN_ABS": SHN_ABS, "SHN_COMMON": SHN_COMMON}
_SECTION_TYPES = {"SHT_NULL": 0, "SHT_PROGBITS": 1, "SHT_SYMTAB": 2, "SHT_STRTAB": 3,
                  "SHT_RELA": 4, "SHT_HASH": 5, "SHT_DYNAMIC": 6, "SHT_NOTE": 7,
                  "SHT_NOBITS": 8, "SHT_REL": 9, "SHT_INIT_ARRAY": 14, "SHT_FINI_ARRAY": 15,
                  "SHT_GROUP": 17}


def _num_type(value: object) -> int:
    if isinstance(value, int):
        return value
    return _SECTION_TYPES.get(str(value), SHT_PROGBITS)


def cstring(data: bytes, offset: int) -> bytes:
    end = data.find(b"\0", offset)
    return data[offset:] if end < 0 else data[offset:end]
