# SPDX-License-Identifier: GPL-3.0-or-later
"""Sizes of the kernel's special-section entries, measured by compiling kmod/layout_probe.c.

struct alt_instr is 12 bytes on 6.1 and 14 on 6.12; asking the target's own
headers keeps the generate stage free of per-version tables.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from builder.elf import ElfObject
from builder.errors import BuildError

PROBE = Path(__file__).resolve().parents[1] / "kmod" / "layout_probe.c"
FIELDS = ("alt_instr", "jump_entry", "bug_entry", "exception_table_entry", "static_call_site",
          "orc_entry", "paravirt_patch_site")


@dataclass(frozen=True)
class Layout:
    alt_instr: int
    jump_entry: int
    bug_entry: int
    exception_table_entry: int
    static_call_site: int
    orc_entry: int
    paravirt_patch_site: int  # 0 where the kernel has none (6.8 and later)

    def special_sections(self) -> dict[str, tuple[int, int]]:
        """Section name → (entry size, offset of the relocation naming its function)."""
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
        return Layout(**json.loads(cache_file.read_text()))
    with tempfile.TemporaryDirectory(prefix="klp-layout-") as tmp:
        work = Path(tmp)
        shutil.copy(PROBE, work / PROBE.name)
        (work / "Kbuild").write_text("obj-m := layout_probe.o\n")
        proc = subprocess.run([*toolchain, "make", "-C", str(headers_dir), f"M={work}",
                               "layout_probe.o"],
                              capture_output=True, text=True, check=False)
        obj_path = work / "layout_probe.o"
        if proc.returncode != 0 or not obj_path.is_file():
            raise BuildError(stage="generate", message="could not compile the layout probe "
                             f"against {headers_dir}:\n" + proc.stderr[-1500:],
                             hint="check that the kernel headers package is complete")
        obj = ElfObject.read(obj_path)
        sym = obj.symbol("klp_layout")
        values = struct.unpack(f"<{len(FIELDS)}I",
                               sym.section.data[sym.value:sym.value + 4 * len(FIELDS)])
    layout = Layout(**dict(zip(FIELDS, values, strict=True)))
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_text(json.dumps(asdict(layout)) + "\n")
    return layout
