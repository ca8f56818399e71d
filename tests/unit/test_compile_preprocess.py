# SPDX-License-Identifier: GPL-3.0-or-later
"""The compile stage leaves out includers of a changed header whose preprocessed text
shows no change gcc emits code for: a small tree whose Makefile has kbuild's `%.i`
targets (the real gcc -E), a header patch, and the files that do and do not use what
it changes."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.patchset import PatchSet
from builder.stages import compile as compile_stage
from builder.stages.compile import Planned

HEADER = """\
#define FOO_LIMIT 8
static inline int foo_get(int x)
{
\treturn x + 1;
}
"""
PATCH = """\
--- a/include/foo.h
+++ b/include/foo.h
@@ -1,5 +1,9 @@
-#define FOO_LIMIT 8
+#define FOO_LIMIT 16
 static inline int foo_get(int x)
 {
-\treturn x + 1;
+\treturn x + 2;
+}
+static inline int foo_new(int x)
+{
+\treturn x * 3;
 }
"""
MAKEFILE = """\
%.i: FORCE
\t@mkdir -p $(dir $(OUT)/$@)
\tgcc -E -I$(SRC)/include $(KCFLAGS) $(SRC)/$*.c -o $(OUT)/$@
FORCE:
"""
FILES = {
    "calls.c": '#include "foo.h"\nint calls(int x) { return foo_get(x); }\n',
    "limit.c": '#include "foo.h"\nint limit(void) { return FOO_LIMIT; }\n',
    **{f"plain{n}.c": f'#include "foo.h"\nint plain{n}(int x) {{ return x; }}\n'
       for n in range(4)},
}


@pytest.fixture
def tree(tmp_path):
    if not shutil.which("gcc") or not shutil.which("patch"):
        pytest.skip("needs gcc and GNU patch")
    source, build = tmp_path / "src" / "linux", tmp_path / "build"
    (source / "include").mkdir(parents=True)
    build.mkdir()
    (source / "include" / "foo.h").write_text(HEADER)
    for name, text in FILES.items():
        (source / name).write_text(text)
    makefile = tmp_path / "kbuild.mk"
    makefile.write_text(MAKEFILE)
    return SimpleNamespace(source_dir=source, build_dir=build,
                           make_args=["make", "-s", "-f", str(makefile), f"SRC={source}",
                                      f"OUT={build}"],
                           kernel=SimpleNamespace(package_version="test"))


def test_only_includers_that_use_the_change_are_compiled(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(compile_stage, "PREPROCESS_FROM", 2)
    patch = tmp_path / "foo.patch"
    patch.write_text(PATCH)
    planned = [Planned(name, "includes include/foo.h") for name in FILES]
    same = compile_stage._unaffected(tree, PatchSet.read([patch]), planned, None,
                                     tmp_path / "work", None)
    # calls.c inlines the changed helper, limit.c expands the changed macro
    assert same == {f"plain{n}.c" for n in range(4)}
    # the tree is as shipped again, and nothing preprocessed is left behind
    assert (tree.source_dir / "include" / "foo.h").read_text() == HEADER
    assert not list(tree.build_dir.rglob("*.i"))
    assert not (tmp_path / "work" / "preprocessed").exists()


def test_few_includers_are_compiled_without_preprocessing(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(compile_stage, "PREPROCESS_FROM", len(FILES) + 1)
    patch = tmp_path / "foo.patch"
    patch.write_text(PATCH)
    planned = [Planned(name, "includes include/foo.h") for name in FILES]
    assert compile_stage._unaffected(tree, PatchSet.read([patch]), planned, None,
                                     tmp_path / "work", None) == set()
    assert not list(Path(tree.build_dir).rglob("*.i"))


def test_the_bound_counts_the_files_left_to_compile(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(compile_stage, "PREPROCESS_FROM", 2)
    patch = tmp_path / "foo.patch"
    patch.write_text(PATCH)
    planned = [Planned(name, "includes include/foo.h") for name in FILES]
    with pytest.raises(compile_stage.TooManyFiles) as refused:
        compile_stage._compile(tree, PatchSet.read([patch]), planned, tmp_path / "work",
                               None, None, {}, max_files=1)
    message = refused.value.message
    assert message.startswith("6 built files include the changed header(s); 4 of them "
                              "compile to the same code (gcc -E); the other 2 files"), message
    assert {p.source for p in refused.value.planned} == {"calls.c", "limit.c"}
    assert (tree.source_dir / "include" / "foo.h").read_text() == HEADER


def test_a_rerun_of_the_same_patch_keeps_the_verdicts(tree, tmp_path, monkeypatch):
    monkeypatch.setattr(compile_stage, "PREPROCESS_FROM", 2)
    patch = tmp_path / "foo.patch"
    patch.write_text(PATCH)
    planned = [Planned(name, "includes include/foo.h") for name in FILES]
    first = compile_stage._unaffected(tree, PatchSet.read([patch]), planned, None,
                                      tmp_path / "work", None)
    calls = []
    monkeypatch.setattr(compile_stage, "preprocess", lambda *a, **k: calls.append(a) or {})
    again = compile_stage._unaffected(tree, PatchSet.read([patch]), planned, None,
                                      tmp_path / "work", None)
    assert again == first and len(calls) == 2  # only calls.c and limit.c, once each way
    # another change to the header is judged afresh
    other = tmp_path / "other.patch"
    other.write_text(PATCH.replace("x * 3", "x * 4"))
    calls.clear()
    compile_stage._unaffected(tree, PatchSet.read([other]), planned, None,
                              tmp_path / "work", None)
    assert calls and len(calls[0][1]) == len(FILES)
