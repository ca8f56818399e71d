# Copyright: klp.livepatch developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Livepatch module files, read in pure Python on the controller and on the target:
the module's name, its ELF ``.modinfo`` and notes (build-id), its signature, and the
builder manifest's function list."""

import hashlib
import os
import struct

from ansible_collections.klp.livepatch.plugins.module_utils.klp_errors import KlpError


def module_name(path_or_name):
    """Kernel module name of a file or name: ``/x/foo-bar.ko`` -> ``foo_bar``."""
    base = os.path.basename(str(path_or_name))
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


# --------------------------------------------------------------------------- ELF

_ELF_MAGIC = b"\x7fELF"


def elf_sections(data):
    """Map section name -> (offset, size) of an ELF file's section headers."""
    if len(data) < 64 or data[:4] != _ELF_MAGIC:
        raise KlpError("not an ELF file (bad magic)")
    elfclass, endian = data[4], data[5]
    if elfclass not in (1, 2) or endian not in (1, 2):
        raise KlpError("not an ELF file (bad class or byte order)")
    e = "<" if endian == 1 else ">"
    try:
        if elfclass == 2:
            shoff, = struct.unpack_from(e + "Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x3A)
            shfmt = e + "IIQQQQIIQQ"
        else:
            shoff, = struct.unpack_from(e + "I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x2E)
            shfmt = e + "IIIIIIIIII"
        if shentsize < struct.calcsize(shfmt) or shoff + shnum * shentsize > len(data):
            raise KlpError("truncated ELF file (section headers past the end)")
        headers = []
        for i in range(shnum):
            fields = struct.unpack_from(shfmt, data, shoff + i * shentsize)
            headers.append((fields[0], fields[1], fields[4], fields[5]))  # name, type, off, size
        if shstrndx >= shnum:
            raise KlpError("corrupt ELF file (bad section name table index)")
        str_off, str_size = headers[shstrndx][2], headers[shstrndx][3]
        if str_off + str_size > len(data):
            raise KlpError("truncated ELF file (section names past the end)")
        sections = {}
        for name_off, sh_type, off, size in headers:
            end = data.find(b"\0", str_off + name_off, str_off + str_size)
            if end < 0:
                raise KlpError("corrupt ELF file (unterminated section name)")
            name = data[str_off + name_off:end].decode("ascii", "replace")
            if sh_type != 8 and off + size > len(data):  # 8 = SHT_NOBITS
                raise KlpError(f"truncated ELF file (section {name} past the end)")
            sections[name] = (off, size)
        return sections
    except struct.error:
        raise KlpError("truncated ELF file") from None


def parse_modinfo(blob):
    """Parse a ``.modinfo`` section: NUL-separated ``key=value``. Repeated keys -> list."""
    info = {}
    for entry in blob.split(b"\0"):
        if b"=" not in entry:
            continue
        key, value = entry.split(b"=", 1)
        key, value = key.decode("ascii", "replace"), value.decode("utf-8", "replace")
        if key in info:
            if not isinstance(info[key], list):
                info[key] = [info[key]]
            info[key].append(value)
        else:
            info[key] = value
    return info


def parse_notes(blob, endian="<"):
    """Parse an ELF note blob into a list of (owner, type, desc bytes)."""
    notes = []
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from(endian + "III", blob, pos)
        pos += 12
        name = blob[pos:pos + namesz].rstrip(b"\0").decode("ascii", "replace")
        pos += (namesz + 3) & ~3
        desc = blob[pos:pos + descsz]
        pos += (descsz + 3) & ~3
        if len(desc) != descsz:
            break
        notes.append((name, ntype, desc))
    return notes


def gnu_build_id(notes_blob):
    """The GNU build-id (hex) in an ELF note blob, or None."""
    for owner, ntype, desc in parse_notes(notes_blob):
        if owner == "GNU" and ntype == 3:  # NT_GNU_BUILD_ID
            return desc.hex()
    return None


# The trailer scripts/sign-file appends to a signed module.
MODULE_SIGNATURE_MARKER = b"~Module signature appended~\n"


def inspect_module(path):
    """Read a kernel module file: sha256, name, vermagic, livepatch flag, build-id, modinfo."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KlpError(f"cannot read kernel module {path}: {exc}") from exc
    sha = hashlib.sha256(data).hexdigest()
    try:
        sections = elf_sections(data)
    except KlpError as exc:
        raise KlpError(f"{path} is not a usable kernel module: {exc} (sha256 {sha})") from exc
    if ".modinfo" not in sections or ".gnu.linkonce.this_module" not in sections:
        raise KlpError(f"{path} is an ELF file but not a kernel module (no .modinfo or "
                       ".gnu.linkonce.this_module section)")
    off, size = sections[".modinfo"]
    modinfo = parse_modinfo(data[off:off + size])
    build_id = None
    if ".note.gnu.build-id" in sections:
        off, size = sections[".note.gnu.build-id"]
        build_id = gnu_build_id(data[off:off + size])
    name = modinfo.get("name") or module_name(path)
    vermagic = modinfo.get("vermagic", "")
    return {
        "path": path,
        "sha256": sha,
        "size": len(data),
        "name": name if isinstance(name, str) else name[0],
        "vermagic": vermagic if isinstance(vermagic, str) else vermagic[0],
        "livepatch": modinfo.get("livepatch") == "Y",
        "build_id": build_id,
        "signed": data.endswith(MODULE_SIGNATURE_MARKER),
        "modinfo": modinfo,
        "parameters": sorted(_as_list(modinfo.get("parmtype"), lambda p: p.split(":", 1)[0])),
    }


def _as_list(value, fn=None):
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [fn(v) for v in values] if fn else values


def manifest_functions(manifest):
    """Sorted function names from a builder manifest's objects (or patched) mapping."""
    objects = (manifest or {}).get("objects") or (manifest or {}).get("patched") or {}
    names = set()
    for funcs in objects.values():
        for func in funcs if isinstance(funcs, list) else funcs.get("functions", []):
            names.add(func["name"] if isinstance(func, dict) else str(func))
    return sorted(names)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
