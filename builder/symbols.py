# SPDX-License-Identifier: GPL-3.0-or-later
"""What the shipped kernel contains: symbols, their positions, their bytes, exports.

Debian's image package has no usable System.map (it is a stub) and no debug info, but
the kernel embeds its own symbol table (kallsyms). `vmlinux-to-elf`'s KallsymsFinder
reads it out of the decompressed image (~14 s), so the result is cached as JSON.
Modules are plain relocatable ELF files with a full symtab.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import io
import json
import lzma
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import NoteSection, SymbolTableSection

from builder.cache import temporary_for
from builder.elf import RELA_ENTRY, open_elf
from builder.errors import BuildError

if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile

STAGE = "symbols"
KALLSYMS_RECIPE = 1
_KALLSYMS_LOCK = threading.RLock()  # see read_kallsyms
# Bytes a relocation rewrites, by x86-64 type (R_X86_64_*): 64 → 8, the rest 4.
_RELOC_SIZE = {1: 8, 2: 4, 4: 4, 9: 4, 10: 4, 11: 4, 24: 8, 41: 4, 42: 4}
_ELF_MAGIC = b"\x7fELF"
# How a linked field encodes S + A: (bytes, signed, PC-relative), by relocation type.
_RESOLVED_VALUE = {1: (8, False, False), 2: (4, True, True), 4: (4, True, True),
                   10: (4, False, False), 11: (4, True, False), 24: (8, True, True)}


def reloc_size(rtype: int) -> int:
    """Bytes covered by an x86-64 relocation (PC32/PLT32/32/32S: 4; 64/PC64: 8)."""
    return _RELOC_SIZE.get(rtype, 4)


# ---------------------------------------------------------------- vmlinuz → vmlinux
def _decompressors():
    """(magic, decompress(bytes) -> bytes) pairs, as scripts/extract-vmlinux tries them."""
    def xz(data: bytes) -> bytes:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)

    def zstd(data: bytes) -> bytes:
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)

    def gz(data: bytes) -> bytes:
        return gzip.GzipFile(fileobj=io.BytesIO(data)).read1(1 << 30)

    def lzma_alone(data: bytes) -> bytes:
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)

    return [(b"\xfd7zXZ\x00", xz), (b"\x02\x21\x4c\x18", lz4_legacy),
            (b"\x28\xb5\x2f\xfd", zstd), (b"\x1f\x8b\x08", gz),
            (b"\x5d\x00\x00", lzma_alone), (b"BZh", bz2.decompress)]


def lz4_legacy(data: bytes) -> bytes:
    """The kernel's LZ4 "legacy" stream (cloud-amd64 uses it): magic, then blocks of
    8 MiB output each, every one preceded by its compressed size; a size that does not
    fit (kbuild's trailing length word) ends it."""
    import lz4.block

    out, pos = bytearray(), 4
    while pos + 4 <= len(data):
        size = int.from_bytes(data[pos:pos + 4], "little")
        if size == 0x184C2102:  # a concatenated stream: its magic again
            pos += 4
            continue
        if size == 0 or pos + 4 + size > len(data):
            break
        try:
            out += lz4.block.decompress(data[pos + 4:pos + 4 + size],
                                        uncompressed_size=8 << 20)
        except lz4.block.LZ4BlockError:
            break
        pos += 4 + size
    return bytes(out)


def extract_vmlinux(vmlinuz: Path) -> bytes:
    """The ELF vmlinux inside a bzImage (the first stream that decompresses to ELF)."""
    data = vmlinuz.read_bytes()
    if data.startswith(_ELF_MAGIC):
        return data
    for magic, decompress in _decompressors():
        start = data.find(magic)
        while start != -1:
            try:
                out = decompress(data[start:])
            except Exception:  # a false magic match: try the next one
                out = b""
            if out.startswith(_ELF_MAGIC):
                return out
            start = data.find(magic, start + 1)
    raise BuildError(stage=STAGE, file=str(vmlinuz),
                     message="no compressed ELF kernel found in the image",
                     hint="is this a bzImage (boot/vmlinuz-<release>)?")


def sympos(found: list[int], name: str, address: int, where: str) -> int:
    """livepatch's sympos of the NAME at ADDRESS among FOUND (its addresses in kallsyms
    order in WHERE): 0 if the name is unique there, else the 1-based position."""
    if address not in found:
        raise BuildError(stage=STAGE, function=name,
                         message=f"no symbol {name} at {address:#x} in {where}",
                         hint="report this: the symbol table and the lookup disagree")
    return 0 if len(found) == 1 else found.index(address) + 1


def _read_region(data: bytes, regions, address: int, size: int, at_most: bool) -> bytes | None:
    """data's bytes at `address` through (address, file offset, length) regions; None
    when no region holds them all (or, `at_most`, holds the first)."""
    for base, offset, length in regions:
        if base <= address and (address + size <= base + length or
                                (at_most and address < base + length)):
            start = offset + address - base
            return data[start:start + min(size, base + length - address)]
    return None


# ---------------------------------------------------------------- vmlinux
@dataclass(frozen=True)
class KSymbol:
    name: str
    address: int
    type: str  # kallsyms letter: T/t text, D/d data, R/r, B/b... (upper = global)


class VmlinuxImage:
    """The shipped vmlinux: kallsyms symbols (in kallsyms order) and its bytes."""

    name = "vmlinux"
    depends: frozenset[str] = frozenset()

    def __init__(self, vmlinux: Path, symbols: list[KSymbol]) -> None:
        self.path = vmlinux
        self.symbols = symbols
        self._by_name: dict[str, list[int]] = {}
        for sym in symbols:
            self._by_name.setdefault(sym.name, []).append(sym.address)
        self._data = vmlinux.read_bytes()
        self._elf = open_elf(self._data)  # the image's one parse: segments, then notes
        self._segments = _load_segments(self._elf)
        self._build_id: str | None = None

    @classmethod
    def load(cls, vmlinuz: Path, cache_dir: Path) -> VmlinuxImage:
        """Decompress and read kallsyms once; later calls read the cache (<1 s)."""
        vmlinux = ensure_vmlinux(vmlinuz, cache_dir)
        table = cache_dir / "kallsyms.json"
        with _KALLSYMS_LOCK:  # an update's unit threads: one reads, the others wait for it
            symbols = None
            if table.is_file():
                cached = json.loads(table.read_text())
                if cached.get("recipe") == KALLSYMS_RECIPE:
                    symbols = [KSymbol(n, a, t) for n, a, t in cached["symbols"]]
            if symbols is None:
                symbols = read_kallsyms(vmlinux)
                tmp = temporary_for(table)  # another process may write it too
                tmp.write_text(json.dumps({"recipe": KALLSYMS_RECIPE, "symbols": [
                    [s.name, s.address, s.type] for s in symbols]}))
                tmp.replace(table)
        return cls(vmlinux, symbols)

    # -- lookups ------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return name in self._by_name

    def positions(self, name: str) -> list[int]:
        """Addresses of every symbol with this name, in kallsyms order."""
        return list(self._by_name.get(name, []))

    addresses = positions  # the name the generate stage's SymbolSource protocol uses

    def sympos(self, name: str, address: int) -> int:
        return sympos(self._by_name.get(name, []), name, address, "vmlinux")

    def read(self, address: int, size: int, at_most: bool = False) -> bytes:
        """Bytes of the shipped image at a virtual address (through PT_LOAD segments);
        with `at_most`, fewer where the segment ends first."""
        found = _read_region(self._data, self._segments, address, size, at_most)
        if found is None:
            raise BuildError(stage=STAGE, message=f"address {address:#x}+{size} is not in "
                             "any loaded segment of vmlinux", hint="report this with the release")
        return found

    def referenced_value(self, site: int, rtype: int) -> int | None:
        """S + A of the relocation the linker resolved at this address, read back from
        the bytes (PC-relative fields hold S + A - P)."""
        if rtype not in _RESOLVED_VALUE:
            return None
        size, signed, pc_relative = _RESOLVED_VALUE[rtype]
        value = int.from_bytes(self.read(site, size), "little", signed=signed)
        return (value + site if pc_relative else value) & (1 << 64) - 1

    @property
    def build_id(self) -> str:
        """GNU build-id of the shipped vmlinux (what /sys/kernel/notes of the target shows)."""
        if self._build_id is None:
            self._build_id = _gnu_build_id(self._elf) or ""
        return self._build_id


def ensure_vmlinux(vmlinuz: Path, cache_dir: Path) -> Path:
    """The raw ELF vmlinux, decompressed once into cache_dir/vmlinux (atomically)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    vmlinux = cache_dir / "vmlinux"
    if not vmlinux.is_file():
        tmp = temporary_for(vmlinux)
        tmp.write_bytes(extract_vmlinux(vmlinuz))
        tmp.replace(vmlinux)
    return vmlinux


def _load_segments(elf: ELFFile) -> list[tuple[int, int, int]]:
    return [(seg["p_vaddr"], seg["p_offset"], seg["p_filesz"]) for seg in elf.iter_segments()
            if seg["p_type"] == "PT_LOAD"]


def elf_build_id(source: Path | bytes) -> str | None:
    """GNU build-id of an ELF file (its path or bytes), or None."""
    return _gnu_build_id(open_elf(source))


def _gnu_build_id(elf: ELFFile) -> str | None:
    for section in elf.iter_sections():
        if isinstance(section, NoteSection):
            for note in section.iter_notes():
                # Xen's notes reuse the number 3: only the GNU one is the build id.
                if note["n_type"] == "NT_GNU_BUILD_ID" and note["n_name"] == "GNU":
                    return note["n_desc"]
    return None


def read_kallsyms(vmlinux: Path) -> list[KSymbol]:
    """The kernel's own symbol table, in kallsyms order, via vmlinux-to-elf."""
    try:
        from vmlinux_to_elf.core.kallsyms import KallsymsFinder
    except ImportError as err:
        raise BuildError(stage=STAGE, message="the vmlinux-to-elf package is missing",
                         hint="run `make venv` (it is in requirements.txt)") from err
    import contextlib

    # It prints progress chatter. redirect_stdout swaps the process-wide sys.stdout:
    # two overlapping swaps in threads can leave it pointing at a StringIO for good (an
    # update then exited 0 with its result line lost), hence the lock.
    with _KALLSYMS_LOCK, contextlib.redirect_stdout(io.StringIO()):
        finder = KallsymsFinder(vmlinux.read_bytes(), 64)
    symbols = []
    for sym in finder.symbols:
        letter = sym.symbol_type.value if sym.symbol_type else "?"
        letter = letter.upper() if sym.is_global else letter.lower()
        symbols.append(KSymbol(sym.name, sym.virtual_address, letter))
    if len(symbols) < 1000:
        raise BuildError(stage=STAGE, file=str(vmlinux),
                         message=f"only {len(symbols)} kallsyms symbols found",
                         hint="the kernel needs CONFIG_KALLSYMS_ALL=y for live patching")
    return symbols


# ---------------------------------------------------------------- modules
@dataclass(frozen=True)
class MSymbol:
    name: str
    section: str
    value: int  # offset in its section
    size: int
    type: str  # STT_FUNC, STT_OBJECT...
    bind: str


class ModuleImage:
    """A shipped .ko: symtab-order symbols, function bytes, relocation sites.

    Addresses are synthetic (each allocated section gets a base), so the same
    `positions`/`read` interface as VmlinuxImage works for both.
    """

    def __init__(self, path: Path, data: bytes | None = None) -> None:
        self.path = path
        self._data = data if data is not None else read_module_bytes(path)
        elf = open_elf(self._data)  # the module's one parse: layout, symbols, .modinfo
        self._sections: dict[str, tuple[int, int, int]] = {}  # name → (base, offset, size)
        base = 0x1000
        # section → [(offset, type, S + A or None when S is undefined)]
        self._relocs: dict[str, list[tuple[int, int, int | None]]] = {}
        for section in elf.iter_sections():
            if section["sh_flags"] & 0x2:  # SHF_ALLOC
                align = max(section["sh_addralign"], 1)
                base = (base + align - 1) // align * align
                self._sections[section.name] = (base, section["sh_offset"], section["sh_size"])
                base += section["sh_size"] + 0x1000
        sections = list(elf.iter_sections())
        symbols = {}  # symtab index → its symbols, as pyelftools parsed them
        for section in sections:
            if isinstance(section, RelocationSection):
                target = sections[section["sh_info"]].name
                link = section["sh_link"]
                if link not in symbols:
                    symbols[link] = list(sections[link].iter_symbols())
                # S of each symbol once, then the entries unpacked at once (as builder/elf.py
                # does): pyelftools' entry-by-entry parse dominated a module unit's build.
                where = [self._placed(sections, sym) for sym in symbols[link]]
                self._relocs[target] = [
                    (offset, info & 0xFFFFFFFF,
                     None if where[info >> 32] is None else where[info >> 32] + addend)
                    for offset, info, addend in RELA_ENTRY.iter_unpack(section.data())]
        self.symbols: list[MSymbol] = []
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            index = next(i for i, sec in enumerate(sections) if sec is symtab or
                         sec.name == ".symtab")
            for sym in symbols.get(index) or symtab.iter_symbols():
                shndx = sym["st_shndx"]
                if not sym.name or not isinstance(shndx, int):
                    continue
                self.symbols.append(MSymbol(sym.name, sections[shndx].name,
                                            sym["st_value"], sym["st_size"],
                                            sym["st_info"]["type"], sym["st_info"]["bind"]))
        self.name = _modinfo_field(elf, "name") or \
            path.name.split(".ko")[0].replace("-", "_")
        # Modules the kernel loads before this one (modinfo depends=, from modpost).
        self.depends = frozenset(d.replace("-", "_") for d in
                                 (_modinfo_field(elf, "depends") or "").split(",") if d)

    def _placed(self, sections: list, sym) -> int | None:
        """S: the synthetic address of a symbol, None when undefined or not allocated."""
        shndx = sym["st_shndx"]
        if not isinstance(shndx, int) or shndx == 0:
            return None
        placed = self._sections.get(sections[shndx].name)
        return None if placed is None else placed[0] + sym["st_value"]

    # -- lookups ------------------------------------------------------------------
    def exists(self, name: str) -> bool:
        return any(s.name == name for s in self.symbols)

    def _named(self, name: str) -> list[MSymbol]:
        return [s for s in self.symbols if s.name == name and s.section in self._sections]

    def address_of(self, sym: MSymbol) -> int:
        return self._sections[sym.section][0] + sym.value

    def positions(self, name: str) -> list[int]:
        """Synthetic addresses in symtab order (the module's kallsyms order)."""
        return [self.address_of(s) for s in self._named(name)]

    addresses = positions

    def live_positions(self, name: str) -> list[int]:
        """Synthetic addresses of the copies kallsyms keeps once the module is live: its
        init sections' symbols are dropped then (while it loads, it has them all)."""
        return [self.address_of(s) for s in self._named(name)
                if not s.section.startswith(".init")]

    def sympos(self, name: str, address: int) -> int:
        return sympos(self.positions(name), name, address, self.name)

    def symbol_at(self, address: int, name: str) -> MSymbol:
        for sym in self._named(name):
            if self.address_of(sym) == address:
                return sym
        raise KeyError(name)

    def read(self, address: int, size: int, at_most: bool = False) -> bytes:
        """Bytes at a synthetic address; with `at_most`, fewer where the section ends."""
        found = _read_region(self._data, self._sections.values(), address, size, at_most)
        if found is None:
            raise BuildError(stage=STAGE, message=f"address {address:#x}+{size} is outside "
                             f"every section of {self.name}", hint="report this")
        return found

    def reloc_offsets(self, name: str, address: int | None = None) -> list[tuple[int, int]]:
        """(offset inside the function, bytes covered) of the .ko's own relocations."""
        syms = self._named(name)
        if address is not None:
            syms = [s for s in syms if self.address_of(s) == address]
        if not syms:
            return []
        sym = syms[0]
        return [(off - sym.value, reloc_size(rtype))
                for off, rtype, _value in self._relocs.get(sym.section, [])
                if sym.value <= off < sym.value + sym.size]

    def referenced_value(self, site: int, rtype: int) -> int | None:
        """S + A of the shipped relocation at this address (a .ko's sites hold zeros)."""
        del rtype  # the .ko's own relocation says it
        for name, (base, _offset, size) in self._sections.items():
            if base <= site < base + size:
                return next((value for off, _t, value in self._relocs.get(name, [])
                             if off == site - base), None)
        return None


def read_module_bytes(path: Path) -> bytes:
    """A .ko, .ko.xz, .ko.zst or .ko.gz as plain ELF bytes."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    return data


def modinfo_field(data: bytes, field: str) -> str | None:
    """A `field=` value of .modinfo, or None."""
    return _modinfo_field(open_elf(data), field)


def _modinfo_field(elf: ELFFile, field: str) -> str | None:
    modinfo = elf.get_section_by_name(".modinfo")
    if modinfo is None:
        return None
    prefix = f"{field}=".encode()
    for entry in modinfo.data().split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix):].decode()
    return None


def module_name_of(data: bytes) -> str | None:
    """`name=` from .modinfo (what the kernel calls the module: underscores)."""
    return modinfo_field(data, "name")


@functools.lru_cache(maxsize=8)
def _module_index(modules_dir: Path) -> dict[str, Path]:
    return {re.sub(r"\.ko(\.(xz|zst|gz))?$", "", path.name).replace("-", "_"): path
            for path in sorted(modules_dir.rglob("*.ko*"))}


def all_depends(modules_dir: Path, depends: frozenset[str]) -> frozenset[str]:
    """`depends` and everything they depend on: the modules the kernel has loaded
    whenever one that depends on them is loaded (what depmod writes to modules.dep, which
    Debian's image package does not ship)."""
    index = _module_index(modules_dir)
    found: set[str] = set()
    todo = list(depends)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        if name in index:
            todo += [d.replace("-", "_") for d in (modinfo_field(
                read_module_bytes(index[name]), "depends") or "").split(",") if d]
    return frozenset(found)


def find_module(modules_dir: Path, name: str) -> Path:
    """The shipped .ko of a module name ('-' and '_' are the same to the kernel)."""
    wanted = name.replace("-", "_")
    for path in sorted(modules_dir.rglob("*.ko*")):
        if re.sub(r"\.ko(\.(xz|zst|gz))?$", "", path.name).replace("-", "_") == wanted:
            return path
    raise BuildError(stage=STAGE, message=f"module {name} is not in {modules_dir}",
                     hint="is it built into vmlinux in this kernel, or not built at all?")


# ---------------------------------------------------------------- exports
@dataclass(frozen=True)
class Export:
    symbol: str
    crc: int
    module: str  # "vmlinux" or the module path as kbuild names it (fs/binfmt_misc)
    kind: str  # EXPORT_SYMBOL, EXPORT_SYMBOL_GPL
    namespace: str


class Exports:
    """Module.symvers: who exports what (what a plain module may link against)."""

    def __init__(self, exports: dict[str, Export]) -> None:
        self._exports = exports

    @classmethod
    def parse(cls, text: str) -> Exports:
        exports = {}
        for line in text.splitlines():
            fields = line.split("\t")
            if len(fields) < 4:
                continue
            crc, symbol, module, kind = fields[:4]
            exports[symbol] = Export(symbol, int(crc, 16), module, kind,
                                     fields[4] if len(fields) > 4 else "")
        return cls(exports)

    @classmethod
    def load(cls, path: Path) -> Exports:
        return cls.parse(path.read_text())

    def is_exported(self, name: str) -> bool:
        return name in self._exports

    def owner(self, name: str) -> str | None:
        """'vmlinux', the module name (underscores), or None if not exported."""
        export = self._exports.get(name)
        if export is None:
            return None
        if export.module == "vmlinux":
            return "vmlinux"
        return export.module.rsplit("/", 1)[-1].replace("-", "_")

    def namespace(self, name: str) -> str:
        export = self._exports.get(name)
        return export.namespace if export else ""

    def get(self, name: str) -> Export | None:
        return self._exports.get(name)

    def exported_names(self) -> set[str]:
        return set(self._exports)

    def __len__(self) -> int:
        return len(self._exports)


__all__ = ["VmlinuxImage", "ModuleImage", "Exports", "Export", "KSymbol", "MSymbol",
           "extract_vmlinux", "ensure_vmlinux", "read_kallsyms", "find_module", "reloc_size",
           "elf_build_id"]


# How far from the other symbols of its file a duplicate-named symbol may lie and still
# be recognised as that file's (large translation units span a few hundred KiB).
NEIGHBOUR_REACH = 4 << 20


def nearest_to_neighbours(image, candidates: list[int], neighbours) -> int | None:
    """Index of the one candidate address clearly nearest a file's other symbols.

    The linker keeps one object's functions (and its data) together, so of several
    same-named symbols the file's own is the one next to the file's uniquely named
    symbols (`neighbours`: names of the same kind from the same object). None when
    that is not clear: no anchor, too far, or another candidate nearly as near.
    """
    anchors = [found[0] for found in (image.addresses(n) for n in neighbours)
               if len(found) == 1]
    if not candidates or not anchors:
        return None
    distance = [min(abs(a - anchor) for anchor in anchors) for a in candidates]
    best = min(range(len(candidates)), key=distance.__getitem__)
    others = [d for i, d in enumerate(distance) if i != best]
    if distance[best] <= NEIGHBOUR_REACH and all(d > 2 * distance[best] for d in others):
        return best
    return None
