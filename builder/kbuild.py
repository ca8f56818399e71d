# SPDX-License-Identifier: GPL-3.0-or-later
"""What kbuild builds, and into which object: asked of the kernel's own Makefiles.

kbuild compiles any single .o on request, even one this configuration links nowhere,
so "it compiled" proves nothing. Instead each directory's Kbuild/Makefile is evaluated
by make itself with the target's include/config/auto.conf (the same variables kbuild
sees), and its obj-y / obj-m / lib-y lists and composite objects (`nfsd-y := …`) are
read back. A source is built when every directory above it is descended into.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.cache import temporary_for
from builder.errors import BuildError

# Evaluates one directory's kbuild file the way scripts/Makefile.build includes it.
PROBE = r"""
include $(objtree)/include/config/auto.conf
include $(srctree)/scripts/Kbuild.include
src := $(obj)
include $(or $(wildcard $(srctree)/$(src)/Kbuild),$(srctree)/$(src)/Makefile)
$(info KLP obj-y $(obj-y) $(lib-y))
$(info KLP obj-m $(obj-m))
klp-parts = $($(1:.o=-y)) $($(1:.o=-objs)) $($(1:.o=-m))
$(foreach o,$(filter %.o,$(sort $(obj-y) $(obj-m) $(lib-y))),\
  $(info KLP part $(o) $(call klp-parts,$(o))))
klp-probe: ;
"""
_ARCH_LISTS = re.compile(r"^(core|libs|drivers)-y\s*\+?:?=\s*(.*)$", re.M)


@dataclass(frozen=True)
class Directory:
    """What one kbuild directory builds: objects and subdirectories, by kind."""

    builtin: tuple[str, ...]  # obj-y and lib-y entries (objects and "dir/")
    modular: tuple[str, ...]  # obj-m entries
    parts: dict[str, tuple[str, ...]]  # composite object -> its parts


@dataclass(frozen=True)
class Placement:
    """Where a source ends up: "vmlinux", a module name, or None with the reason."""

    target: str | None
    reason: str = ""


class Kbuild:
    """Answers 'is this source built, and into what' for one prepared tree (cached)."""

    def __init__(self, source_dir: Path, build_dir: Path, make_args: list[str]) -> None:
        self.source_dir = source_dir
        self.build_dir = build_dir
        self.make_args = [a for a in make_args if a.startswith(("ARCH=", "SRCARCH="))]
        self.cache_file = build_dir / ".klp-kbuild.json"
        self._dirs: dict[str, Directory] = {}
        raw = json.loads(self.cache_file.read_text()) if self.cache_file.is_file() else {}
        if raw.pop(".probe", None) == PROBE:  # answers of an older probe are redone
            self._dirs = {d: Directory(tuple(v["builtin"]), tuple(v["modular"]),
                                       {k: tuple(p) for k, p in v["parts"].items()})
                          for d, v in raw.items()}

    # ---- make ---------------------------------------------------------------------
    def directory(self, path: str) -> Directory:
        if path not in self._dirs:
            self._dirs[path] = self._evaluate(path)
            self._save()
        return self._dirs[path]

    def _evaluate(self, path: str) -> Directory:
        probe = self.build_dir / ".klp-kbuild-probe.mk"
        if not probe.is_file() or probe.read_text() != PROBE:
            probe.write_text(PROBE)
        # --include-dir: kbuild's own for out-of-tree builds (`include $(src)/x/Makefile`)
        argv = ["make", "-s", "--no-print-directory", f"--include-dir={self.source_dir}",
                "-f", str(probe), "-C", str(self.build_dir), f"srctree={self.source_dir}",
                "objtree=.",
                f"obj={path or '.'}", "SRCARCH=x86", "ARCH=x86", "BITS=64", *self.arch_lists(),
                *self.make_args, "klp-probe"]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BuildError(stage="compile", file=f"{path or '.'}/Makefile",
                             message="make could not evaluate this kbuild file: "
                                     + proc.stderr.strip()[-800:],
                             hint="report this with the kernel release")
        builtin: list[str] = []
        modular: list[str] = []
        parts: dict[str, tuple[str, ...]] = {}
        for line in proc.stdout.splitlines():
            words = line.split()
            if words[:2] == ["KLP", "obj-y"]:
                builtin = words[2:]
            elif words[:2] == ["KLP", "obj-m"]:
                modular = words[2:]
            elif words[:2] == ["KLP", "part"] and len(words) > 3:
                parts[words[2]] = tuple(dict.fromkeys(words[3:]))
        return Directory(tuple(builtin), tuple(modular), parts)

    def arch_lists(self) -> list[str]:
        """ARCH_CORE/ARCH_LIB/ARCH_DRIVERS, which the top Makefile takes from the arch's."""
        text = (self.source_dir / "arch/x86/Makefile").read_text(errors="replace")
        lists: dict[str, list[str]] = {"core": [], "libs": ["lib/"], "drivers": []}
        for kind, rhs in _ARCH_LISTS.findall(text):
            lists[kind] += [w for w in rhs.split() if w.endswith("/")]
        return [f"ARCH_CORE={' '.join(lists['core'])}", f"ARCH_LIB={' '.join(lists['libs'])}",
                f"ARCH_DRIVERS={' '.join(lists['drivers'])}"]

    def _save(self) -> None:
        tmp = temporary_for(self.cache_file)
        answers = {d: {"builtin": v.builtin, "modular": v.modular, "parts": v.parts}
                   for d, v in self._dirs.items()}
        tmp.write_text(json.dumps({".probe": PROBE, **answers}))
        tmp.replace(self.cache_file)

    # ---- questions ------------------------------------------------------------------
    def placement(self, source: str) -> Placement:
        """Where `source` (a .c path relative to the tree) is linked in this config."""
        obj = str(Path(source).with_suffix(".o"))
        current, mode = "", "y"  # descend from the top; a directory entered by obj-m
        while True:               # builds modules only
            listing = self.directory(current)
            rel = obj[len(current) + 1:] if current else obj
            placed = self._place_in(listing, rel, mode)
            if placed is not None:
                return placed
            by_kind = (("y", listing.builtin), ("m", listing.modular))
            entered = [(len(e), kind, e) for kind, entries in by_kind
                       for e in entries if e.endswith("/") and rel.startswith(e)]
            if not entered:
                where = f"{current}/" if current else "the top-level Kbuild"
                what = "its object" if "/" not in rel else f"{rel.split('/', 1)[0]}/"
                return Placement(None, f"{source} is not built in this configuration ({what} "
                                       f"is in no obj-y/obj-m/lib-y list of {where})")
            _length, kind, entry = max(entered, key=lambda e: (e[0], e[1] == "y"))
            mode = "m" if "m" in (kind, mode) else "y"
            current = f"{current}/{entry[:-1]}" if current else entry[:-1]

    @staticmethod
    def _place_in(listing: Directory, name: str, mode: str) -> Placement | None:
        if mode == "y" and name in listing.builtin:
            return Placement("vmlinux")
        if name in listing.modular:
            return Placement(Path(name).stem.replace("-", "_"))
        for composite, members in listing.parts.items():
            if name not in members:
                continue
            if mode == "y" and composite in listing.builtin:
                return Placement("vmlinux")
            if composite in listing.modular:
                return Placement(Path(composite).stem.replace("-", "_"))
        return None


__all__ = ["Kbuild", "Placement", "Directory"]
