#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Verify benchmark: do the rebuilt originals equal the code the kernel ships?

The builder's claim is that a function rebuilt from the source package is the function
the target runs. This checks it wide: every function of every original object this
machine has compiled for the kernel (cached under its prepared tree by earlier builds,
updates or bench runs) is compared with the shipped vmlinux or module, as the verify
stage compares a function a patch changes. It prints, for vmlinux and for modules:
objects, functions compared, the same (of which only instruction by instruction, where
the shipped code has shorter jumps), weak functions another file overrides, functions
not in the shipped image (inlined or discarded at link), and every difference.

Usage: .venv/bin/python bench/verify.py [--kernel RELEASE|ALIAS] [--limit N]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from builder.elf import ElfObject  # noqa: E402
from builder.errors import BuildError  # noqa: E402
from builder.kbuild import Kbuild  # noqa: E402
from builder.providers import provider_for  # noqa: E402
from builder.stages.prepare import prepare  # noqa: E402
from builder.stages.verify import compare, load_image, object_functions  # noqa: E402
from lab.kernels import package_version, resolve  # noqa: E402

ROWS = ("objects", "functions compared", "same", "  of which instruction by instruction",
        "weak, overridden elsewhere", "not in the shipped image", "differ")


def cached_originals(build_dir: Path) -> dict[str, Path]:
    """Source-relative object path → one cached original object of it."""
    found: dict[str, Path] = {}
    for obj in sorted((build_dir / ".klp-orig").glob("*/**/*.o")):
        rel = obj.relative_to(build_dir / ".klp-orig").parts[1:]
        name = "/".join(rel)
        if not name.endswith(".mod.o"):
            found.setdefault(name, obj)
    return found


def survey(release: str, version: str, limit: int | None) -> tuple[dict, list]:
    provider = provider_for(release)
    packages = provider.acquire(provider.resolve(release, version))
    tree = prepare(packages)
    kbuild = Kbuild(tree.source_dir, tree.build_dir, tree.make_args)
    counts: dict[str, Counter] = {"vmlinux": Counter(), "modules": Counter()}
    differences = []
    images: dict = {}
    originals = cached_originals(tree.build_dir)
    for name, obj in list(originals.items())[:limit]:
        source = name[:-2] + ".c"
        target = kbuild.placement(source).target if (tree.source_dir / source).is_file() \
            else None
        if target is None:
            continue
        if target not in images:
            if len(images) > 32:  # module images are read whole: keep memory bounded
                images = {k: v for k, v in images.items() if k == "vmlinux"}
            try:
                images[target] = load_image(packages, target)
            except (BuildError, OSError):
                continue  # a module this package does not ship
        image = images[target]
        row = counts["vmlinux" if target == "vmlinux" else "modules"]
        row["objects"] += 1
        for fn in object_functions(ElfObject.read(obj)).values():
            candidates = image.positions(fn.name)
            if not candidates:
                row["not in the shipped image"] += 1
                continue
            row["functions compared"] += 1
            found = [compare(fn, image, address) for address in candidates]
            same = [c for c in found if c.difference is None]
            if same:
                row["same"] += 1
                row["  of which instruction by instruction"] += all(c.realigned for c in same)
            elif fn.weak:
                row["weak, overridden elsewhere"] += 1
            else:
                row["differ"] += 1
                differences.append((target, name, fn.name,
                                    max(c.difference for c in found), len(fn.code)))
    return counts, differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kernel", default="newest-6.1-amd64",
                        help="a kernel release or a lab alias (default %(default)s)")
    parser.add_argument("--limit", type=int, help="at most this many cached objects")
    args = parser.parse_args()
    release = resolve(args.kernel)
    version = package_version(release)
    start = time.monotonic()
    counts, differences = survey(release, version, args.limit)
    print(f"{release} ({version}): every cached original against the shipped code "
          f"({time.monotonic() - start:.0f} s)")
    print(f"{'':40} {'vmlinux':>10} {'modules':>10}")
    for row in ROWS:
        print(f"{row:40} {counts['vmlinux'][row]:>10} {counts['modules'][row]:>10}")
    for target, obj, function, offset, size in differences:
        print(f"differs: {target}: {obj}: {function} at offset {offset:#x} of {size} bytes")


if __name__ == "__main__":
    main()
