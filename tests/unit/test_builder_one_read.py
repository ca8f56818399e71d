# SPDX-License-Identifier: GPL-3.0-or-later
"""Each object file of a build is parsed once: the diff stage reads a unit's two objects
and its UnitDiff carries them on to verify and generate (host-gcc and ld fixtures)."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from builder import pipeline
from builder.artifacts import CompiledUnit, CompileResult
from builder.elf import ElfObject
from builder.patchset import PatchSet
from builder.stages import verify as verify_stage
from builder.symbols import VmlinuxImage
from tests.unit.test_builder_diff import BASE, CFLAGS, LAYOUT_6_1, Exports, patch_text
from tests.unit.test_symbols import _linked_image

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ld") is None,
                               reason="needs gcc and ld")

NEW = BASE.replace("return hidden_counter;", "return hidden_counter + 1;")
# What the fixture's code calls and reads, for a vmlinux-like link.
SUPPORT = """\
int hidden_counter;
int printk(const char *fmt, ...) { return fmt[0]; }
void report(const char *file, int line) { (void)file; (void)line; }
void __fentry__(void) { }
void _start(void) { }
"""
KALLSYMS_TYPES = {"STT_FUNC": "t", "STT_OBJECT": "d"}


def _cc(directory: Path, name: str, source: str, flags: list[str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.c").write_text(source)
    obj = directory / f"{name}.o"
    subprocess.run(["gcc", *flags, "-c", "-o", str(obj), str(directory / f"{name}.c")],
                   check=True)
    return obj


def _vmlinux(tmp_path: Path, objects: list[Path]) -> VmlinuxImage:
    return _linked_image(tmp_path, objects, KALLSYMS_TYPES)


@needs_gcc
def test_diff_verify_and_generate_parse_each_object_once(tmp_path, monkeypatch):
    orig = _cc(tmp_path / "orig", "f", BASE, CFLAGS)
    patched = _cc(tmp_path / "patched", "f", NEW, CFLAGS)
    support = _cc(tmp_path / "support", "support", SUPPORT, ["-O2", "-fno-pic"])
    image = _vmlinux(tmp_path, [orig, support])
    patch = tmp_path / "fix.patch"
    patch.write_text(patch_text(BASE, NEW))
    compiled = CompileResult(units=[CompiledUnit(source="f.c", object_name="f.o",
                                                 target_object="vmlinux", original=orig,
                                                 patched=patched)],
                             patches=PatchSet.read([patch]))

    reads: Counter[str] = Counter()
    read = ElfObject.read.__func__

    def counting_read(cls, path):
        reads[str(path)] += 1
        return read(cls, path)

    monkeypatch.setattr(ElfObject, "read", classmethod(counting_read))
    monkeypatch.setattr("builder.layouts.refuse_layout_changes", lambda unit: None)  # pahole's
    monkeypatch.setattr(verify_stage, "load_image", lambda packages, objname: image)

    diffs = pipeline._diff_all(compiled)
    assert [c.name for c in diffs[0].changed] == ["other"]
    images, verified = pipeline._verify_all(None, compiled, diffs)
    assert [v.name for v in verified["f.c"]] == ["other"]
    units = pipeline._generate_all(compiled, diffs, images, verified, Exports(), LAYOUT_6_1)
    assert [f.old_name for u in units for f in u.functions] == ["other"]
    assert reads == {str(orig): 1, str(patched): 1}


@needs_gcc
def test_verify_reads_the_original_the_diff_stage_parsed(tmp_path, monkeypatch):
    """The verify stage takes the parsed object: it opens no file of its own."""
    orig = _cc(tmp_path / "orig", "f", BASE, CFLAGS)
    support = _cc(tmp_path / "support", "support", SUPPORT, ["-O2", "-fno-pic"])
    image = _vmlinux(tmp_path, [orig, support])
    parsed = ElfObject.read(orig)
    orig.unlink()  # gone: only the parsed object can be verified
    unit = CompiledUnit(source="f.c", object_name="f.o", target_object="vmlinux",
                        original=orig, patched=orig)
    found = verify_stage.verify(unit, parsed, ["other", "show"], image)
    assert [(v.name, v.sympos) for v in found] == [("other", 0), ("show", 0)]


def test_the_builder_opens_elf_in_one_place():
    """pyelftools is entered through builder/elf.py:open_elf only (objects and images)."""
    root = Path(__file__).resolve().parents[2]
    found = subprocess.run(["grep", "-rln", "--include=*.py", "ELFFile(", "builder"], cwd=root,
                           capture_output=True, text=True, check=False).stdout.split()
    assert found == ["builder/elf.py"]
