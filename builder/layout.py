# SPDX-License-Identifier: GPL-3.0-or-later
"""Sizes of the kernel's special-section entries, and where objtool writes its tables,
measured by compiling kmod/layout_probe.c.

struct alt_instr is 12 bytes on 6.1 and 14 on 6.12; asking the target's own
headers keeps the generate stage free of per-version tables.

objtool writes tables of code sites (return thunks, calls, ORC unwind data, ...) into
the objects it annotates. On Debian's 6.12 (IBT; measured: not on 6.1) kbuild runs it
on a module's linked object, not on the parts, unless the module is a single file; and
objtool skips a table the object already has ("file already has .return_sites,
skipping"). A patch object carrying such a table copied from a single-file module
would leave the rest of the patch module (our hook, code from other objects) without
one: an unpatched return thunk makes 6.12 warn (`__warn_thunk`). The probe compiles
the same code as a single-file module and as part of a composite one; whatever only
the former has is written by objtool at link time, so a patch object must not carry it.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.cache import temporary_for
from builder.elf import ElfObject
from builder.errors import BuildError

PROBE = Path(__file__).resolve().parents[1] / "kmod" / "layout_probe.c"
FIELDS = ("alt_instr", "jump_entry", "bug_entry", "exception_table_entry", "static_call_site",
          "orc_entry", "paravirt_patch_site")
# Tables objtool writes (tools/objtool: each is skipped if the object already has it).
OBJTOOL_TABLES = (".static_call_sites", ".retpoline_sites", ".return_sites", ".call_sites",
                  ".ibt_endbr_seal", ".cfi_sites", "__mcount_loc", ".orc_unwind",
                  ".orc_unwind_ip", ".orc_header")


@dataclass(frozen=True)
class Layout:
    alt_instr: int
    jump_entry: int
    bug_entry: int
    exception_table_entry: int
    static_call_site: int
    orc_entry: int
    paravirt_patch_site: int  # 0 where the kernel has none (6.8 and later)
    # objtool's tables that kbuild writes when it links the patch module (see above)
    linked_tables: tuple[str, ...] = ()

    def special_sections(self) -> dict[str, tuple[int, int]]:
        """Section name → (entry size, offset of the relocation naming its function), for
        the tables the patch object carries (objtool writes the linked ones)."""
        return {name: entry for name, entry in self.tables().items()
                if name not in self.linked_tables}

    def tables(self) -> dict[str, tuple[int, int]]:
        """Every table of fixed-size entries a module may have: name → (entry size,
        offset of the relocation naming its function)."""
        table = {
            "__jump_table": (self.jump_entry, 0),
            ".altinstructions": (self.alt_instr, 0),
            "__bug_table": (self.bug_entry, 0),
            "__ex_table": (self.exception_table_entry, 0),
            ".static_call_sites": (self.static_call_site, 0),
            "__mcount_loc": (8, 0),
            ".return_sites": (4, 0),
            ".retpoline_sites": (4, 0),
            ".call_sites": (4, 0),
            ".smp_locks": (4, 0),
            ".orc_unwind_ip": (4, 0),  # paired by index with .orc_unwind
        }
        if self.paravirt_patch_site:
            table[".parainstructions"] = (self.paravirt_patch_site, 0)
        return table


def probe(headers_dir: Path, cache_file: Path, toolchain: list[str] = ()) -> Layout:
    """Compile the probe against the headers once per kernel; cache the answer."""
    if cache_file.is_file():
        cached = json.loads(cache_file.read_text())
        if "linked_tables" in cached:  # written by this version of the probe
            return Layout(**{**cached, "linked_tables": tuple(cached["linked_tables"])})
    with tempfile.TemporaryDirectory(prefix="klp-layout-") as tmp:
        work = Path(tmp)
        shutil.copy(PROBE, work / PROBE.name)
        shutil.copy(PROBE, work / "layout_part.c")
        # layout_probe.o: a single-file module; layout_part.o: part of a composite one.
        (work / "Kbuild").write_text("obj-m := layout_probe.o klp_layout_composite.o\n"
                                     "klp_layout_composite-y := layout_part.o\n")
        proc = subprocess.run([*toolchain, "make", "-C", str(headers_dir), f"M={work}",
                               "layout_probe.o", "layout_part.o"],
                              capture_output=True, text=True, check=False)
        objects = [work / "layout_probe.o", work / "layout_part.o"]
        if proc.returncode != 0 or not all(path.is_file() for path in objects):
            raise BuildError(stage="generate", message="could not compile the layout probe "
                             f"against {headers_dir}:\n" + proc.stderr[-1500:],
                             hint="check that the kernel headers package is complete")
        single, part = (ElfObject.read(path) for path in objects)
        sym = single.symbol("klp_layout")
        values = struct.unpack(f"<{len(FIELDS)}I",
                               sym.section.data[sym.value:sym.value + 4 * len(FIELDS)])
    layout = Layout(**dict(zip(FIELDS, values, strict=True)),
                    linked_tables=linked_tables(single, part))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(cache_file)  # an update's unit threads may probe at once
    tmp.write_text(json.dumps(asdict(layout)) + "\n")
    tmp.replace(cache_file)
    return layout


def linked_tables(single: ElfObject, part: ElfObject) -> tuple[str, ...]:
    """objtool's tables a module gets only when linked: none if objtool annotated the
    part as it did the single-file module; else every table the part lacks (a table the
    compiler writes, such as `__mcount_loc` from -mrecord-mcount, is in both)."""
    in_single = {sec.name for sec in single.sections} & set(OBJTOOL_TABLES)
    in_part = {sec.name for sec in part.sections} & set(OBJTOOL_TABLES)
    if in_single <= in_part:
        return ()
    return tuple(name for name in OBJTOOL_TABLES if name not in in_part)
