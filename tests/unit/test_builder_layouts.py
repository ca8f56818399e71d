# SPDX-License-Identifier: GPL-3.0-or-later
"""Struct and union layouts read with pahole from host-gcc objects (DWARF)."""

from __future__ import annotations

import difflib
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.layouts import changed_layouts, layouts

pytestmark = pytest.mark.skipif(not (shutil.which("gcc") and shutil.which("pahole")),
                                reason="needs gcc and pahole")

SOURCE = """\
struct keep { int a; long b; };
struct moved { int a; int b; char name[16]; unsigned f:3; int (*show)(void *); };
union u { int i; char c[8]; };
int use(struct keep *k, struct moved *m, union u *x) { return k->a + m->b + x->i + m->f; }
"""


def compile_c(tmp_path: Path, name: str, source: str) -> Path:
    (tmp_path / f"{name}.c").write_text(source)
    subprocess.run(["gcc", "-g", "-O2", "-c", "-o", str(tmp_path / f"{name}.o"),
                    str(tmp_path / f"{name}.c")], check=True)
    return tmp_path / f"{name}.o"


def test_layouts_have_every_member_with_offset_and_size(tmp_path):
    found = layouts(compile_c(tmp_path, "a", SOURCE))
    assert found["struct keep"] == (("int a;", 0, 4), ("long int b;", 8, 8), ("", 16, 0))
    assert ("int (*show)(void *);", 32, 8) in found["struct moved"]
    assert found["union u"][:2] == (("int i;", 0, 4), ("char c[8];", 0, 8))


@pytest.mark.parametrize(("edit", "changed"), [
    (("int b; char", "long extra; int b; char"), ["struct moved"]),  # a member added
    (("union u { int i; char c[8]; }", "union u { int i; char c[16]; }"), ["union u"]),
    (("int a; long b;", "long b; int a;"), ["struct keep"]),  # reordered
    (("return k->a", "return 2 * k->a"), []),  # code only
])
def test_changed_layouts_names_exactly_the_types_that_moved(tmp_path, edit, changed):
    orig = compile_c(tmp_path, "orig", SOURCE)
    patched = compile_c(tmp_path, "patched", SOURCE.replace(*edit))
    assert changed_layouts(orig, patched) == changed


@pytest.mark.parametrize(("edit", "changed"), [
    (("struct keep { int a;", "struct keep { unsigned int a;"), []),  # same bytes
    (("struct keep { int a;", "struct keep { const int a;"), []),
    (("struct keep { int a;", "struct keep { float a;"), ["struct keep"]),  # another kind
    (("struct keep { int a; long b;", "struct keep { int a; long z;"), ["struct keep"]),  # renamed
    (("int (*show)(void *)", "int (*shown)(void *)"), ["struct moved"]),
    (("union u { int i; char c[8]; }", "union u { int i; struct { int lo; int hi; } w; }"),
     ["union u"]),
])
def test_changed_layouts_ignore_only_what_changes_no_byte(tmp_path, edit, changed):
    orig = compile_c(tmp_path, "orig", SOURCE)
    patched = compile_c(tmp_path, "patched", SOURCE.replace(*edit))
    assert changed_layouts(orig, patched) == changed


def test_members_of_nested_anonymous_types_are_compared(tmp_path):
    source = ("struct n { int a; union { int x; struct { short lo; short hi; }; }; };\n"
              "int use(struct n *p) { return p->a + p->lo; }\n")
    orig = compile_c(tmp_path, "orig", source)
    patched = compile_c(tmp_path, "patched", source.replace("short lo; short hi;",
                                                            "short hi; short lo;"))
    assert changed_layouts(orig, patched) == ["struct n"]


HEADER = """\
/* a { brace in a comment */
struct outer {
\tint a;
\tunion {
\t\tint b;
\t\tlong c;
\t};
\tstruct inner {
\t\tint d;
\t} in;
};

struct
spaced
{
\tint e;
};

#define NEW_FLAG 1
static inline int f(struct outer *o) { return o->a; }
"""


@pytest.mark.parametrize(("old", "new", "types"), [
    ("\t\tint b;\n", "\t\tint b;\n\t\tint b2;\n", ["outer"]),  # in an anonymous union
    ("\t\tint d;\n", "", ["inner"]),  # removed from the nested named struct
    ("\tint e;\n", "\tlong e;\n", ["spaced"]),  # opened on a line of its own
    ("#define NEW_FLAG 1\n", "#define NEW_FLAG 2\n", []),  # not a type's body
    ("return o->a;", "return o->a + 1;", []),  # a function's body
    ("};\n\nstruct\n", "};\nint x;\n\nstruct\n", []),  # after a closing brace
])
def test_changed_types_are_the_named_types_whose_bodies_the_hunks_edit(old, new, types):
    from builder.layouts import changed_types
    from builder.patchset import PatchFile

    edited = HEADER.replace(old, new, 1)
    text = "".join(difflib.unified_diff(HEADER.splitlines(True), edited.splitlines(True),
                                        "a/h.h", "b/h.h", n=1))
    assert changed_types(HEADER, PatchFile.parse(text).files[0].hunks) == types
