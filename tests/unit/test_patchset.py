# SPDX-License-Identifier: GPL-3.0-or-later
"""The patch model: parsing the awkward cases, line maps, composition, offsets on apply."""

from __future__ import annotations

import difflib
import hashlib
import shutil
from pathlib import Path

import pytest

from builder.artifacts import KernelId, PreparedTree
from builder.errors import BuildError
from builder.patchset import LineMap, PatchFile, PatchSet
from builder.pipeline import BuildRequest

CORPUS = Path("/work/shared/klp-corpus/debian-12")


def udiff(old: str, new: str, name: str = "f.c", context: int = 3) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        f"a/{name}", f"b/{name}", n=context))


def true_map(old: str, new: str) -> dict[int, int]:
    """Where each line of `old` (all lines distinct) is in `new`, for the lines kept."""
    new_lines = new.splitlines()
    return {i: new_lines.index(line) + 1 for i, line in enumerate(old.splitlines(), 1)
            if line in new_lines}


def numbered(count: int, prefix: str = "line") -> list[str]:
    return [f"{prefix} {i}" for i in range(1, count + 1)]


def text(lines: list[str]) -> str:
    return "".join(f"{line}\n" for line in lines)


def one(patch: str, name: str = "p.patch"):
    files = PatchFile.parse(patch, name).files
    assert len(files) == 1
    return files[0]


# ---------------------------------------------------------------- corpus and headers
def test_parse_corpus_patches():
    if not CORPUS.is_dir():
        pytest.skip("corpus not present")
    assert PatchSet.read([CORPUS / "cmdline-suffix.patch"]).sources == ("fs/proc/cmdline.c",)
    assert PatchSet.read([CORPUS / "module-binfmt.patch", CORPUS / "callbacks.patch"]).sources \
        == ("fs/binfmt_misc.c", "fs/proc/meminfo.c")
    files = PatchFile.read(CORPUS / "callbacks.patch").files
    assert len(files) == 1 and len(files[0].hunks) == 2


MULTI = """\
diff --git a/fs/a.c b/fs/a.c
index 1111111..2222222 100644
--- a/fs/a.c\t2024-01-01 00:00:00.000000000 +0000
+++ b/fs/a.c\t2024-01-01 00:00:00.000000000 +0000
@@ -1,3 +1,3 @@
 int a;
---- looks like a header but is a removed line
+++ also not a header, an added line
 int b;
@@ -10 +10 @@
-x
+y
--- a/kernel/b.c
+++ b/kernel/b.c
@@ -5,2 +5,3 @@ static int f(void)
 {
+\treturn 1;
 }
\\ No newline at end of file
"""


def test_parse_counts_hunk_lines_so_dashes_in_bodies_are_not_headers():
    files = PatchFile.parse(MULTI, "multi.patch").files
    assert [(f.old, f.new, len(f.hunks)) for f in files] == [
        ("fs/a.c", "fs/a.c", 2), ("kernel/b.c", "kernel/b.c", 1)]
    assert files[0].hunks[0].old_lines == (
        "int a;", "--- looks like a header but is a removed line", "int b;")
    assert files[0].hunks[0].new_lines == ("int a;", "++ also not a header, an added line",
                                           "int b;")
    assert files[1].hunks[0].heading == "static int f(void)"
    assert all(f.patch == "multi.patch" for f in files)


def test_removed_line_starting_with_dashes_keeps_the_line_map_right():
    # `--count;` removed is `---count;` in the patch: the old line_map took it for a
    # file header and mapped every later line one too far.
    old = text(["int f(void)", "{", "--count;", "return count;", "}", "", "int g(void)",
                "{", "++count;", "return 1;", "}"])
    new = text(["int f(void)", "{", "return count;", "}", "", "int g(void)", "{",
                "++count;", "++count;", "return 1;", "}"])
    patch = udiff(old, new, context=1)
    assert "\n---count;\n" in patch and "\n+++count;\n" in patch
    fp = one(patch)
    assert [len(h.body) for h in fp.hunks] == [3, 3]
    lines = fp.line_map
    assert lines[4] == 3  # `return count;` moved up by the removed line (was 4 before)
    assert lines[10] == 10  # after the added `++count;`: down one again
    assert all(lines[o] == n for o, n in true_map(old, new).items()
               if old.splitlines()[o - 1] not in ("", "}", "{", "++count;"))


def test_not_a_unified_diff_names_the_patch_file():
    with pytest.raises(BuildError) as err:
        PatchFile.parse("just some text\n", "x.patch")
    assert "x.patch" in str(err.value) and "no file changes" in str(err.value)
    context_diff = "*** a/fs/x.c\n--- b/fs/x.c\n***************\n*** 1 ****\n! a\n--- 1 ----\n! b\n"
    with pytest.raises(BuildError, match=r"ctx\.patch: not a unified diff"):
        PatchFile.parse(context_diff, "ctx.patch")
    with pytest.raises(BuildError, match=r"y\.patch: line 5: malformed hunk line"):
        PatchFile.parse("--- a/x.c\n+++ b/x.c\n@@ -1,2 +1,2 @@\n a\n?b\n", "y.patch")
    with pytest.raises(BuildError, match=r"z\.patch: line 3: malformed hunk header"):
        PatchFile.parse("--- a/x.c\n+++ b/x.c\n@@ -1,2 +1 @\n a\n", "z.patch")


def test_truncated_and_miscounted_hunks_are_refused_with_the_line():
    with pytest.raises(BuildError, match=r"t\.patch: line 3: the patch ends inside this hunk"):
        PatchFile.parse("--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n a\n-b\n", "t.patch")
    # a hunk that counts one line too few leaves its last line outside any hunk
    with pytest.raises(BuildError, match=r"line 7: hunk outside a file's section"):
        PatchFile.parse("--- a/x.c\n+++ b/x.c\n@@ -1,1 +1,1 @@\n-a\n+b\n@@ -5 +5 @@\n-c\n+d\n"
                        .replace("+b\n", "+b\n c\n"), "m.patch")
    with pytest.raises(BuildError, match="before the end of the hunk before it"):
        PatchFile.parse("--- a/x.c\n+++ b/x.c\n@@ -5 +5 @@\n-c\n+d\n@@ -1 +1 @@\n-a\n+b\n",
                        "o.patch")
    # trailing empty context lines an editor dropped are assumed, as GNU patch does
    fp = one("--- a/x.c\n+++ b/x.c\n@@ -1,3 +1,3 @@\n-a\n+b\n c\n")
    assert fp.hunks[0].old_lines == ("a", "c", "")


NO_NEWLINE = """\
--- a/f.c
+++ b/f.c
@@ -1,3 +1,3 @@
 a
 b
-last
\\ No newline at end of file
+last
--- a/g.c
+++ b/g.c
@@ -1,3 +1,4 @@
 a
+x
 b
-last
+new last
\\ No newline at end of file
--- a/h.c
+++ b/h.c
@@ -1,2 +1,2 @@
-a
+b
 z
\\ No newline at end of file
--- a/i.c
+++ b/i.c
@@ -1 +1 @@
-i
+j
"""


def test_no_newline_at_end_of_file_on_either_side():
    files = PatchFile.parse(NO_NEWLINE, "p.patch").files
    assert [f.path for f in files] == ["f.c", "g.c", "h.c", "i.c"]
    f, g, h, _i = (fp.hunks[0] for fp in files)
    assert f.missing_newline == (True, False)
    assert f.old_lines == ("a", "b", "last") and f.new_lines == ("a", "b", "last")
    assert g.missing_newline == (False, True)
    assert (files[1].line_map[1], files[1].line_map[2]) == (1, 3)
    # after a hunk's last line: the marker belongs to it, the next file follows normally
    assert h.missing_newline == (True, True) and h.new_lines == ("b", "z")


def test_form_feed_and_carriage_return_do_not_split_lines():
    fp = one("--- a/f.c\n+++ b/f.c\n@@ -1,4 +1,5 @@\n a\n \f\n-b\n+b2\r\n+b3\v\n c\r\n")
    assert fp.hunks[0].old_lines == ("a", "\f", "b", "c\r")
    assert fp.hunks[0].new_lines == ("a", "\f", "b2\r", "b3\v", "c\r")
    assert fp.line_map[4] == 5


# ---------------------------------------------------------------- line maps
def test_line_map_follows_hunks():
    old = "a\nb\nc\nd\n"
    new = "a\nx\nb\nc\nd\n"
    mapping = one(udiff(old, new)).line_map
    assert mapping[1] == 1
    assert mapping[2] == 3
    assert mapping[4] == 5


def test_line_map_is_exact_for_kept_lines_and_shifted_elsewhere():
    old_lines = numbered(300)
    new_lines = list(old_lines)
    new_lines[10:13] = ["new a"]  # -2
    new_lines[98:98] = ["ins 1", "ins 2", "ins 3"]  # +3
    del new_lines[250]  # -1
    old, new = text(old_lines), text(new_lines)
    for context in (0, 1, 3):
        lines = one(udiff(old, new, context=context)).line_map
        assert {o: lines[o] for o in true_map(old, new)} == true_map(old, new), context
        assert lines[0] == 0 and lines[400] == 400  # beyond the file: the last shift


def test_zero_context_insertions_and_deletions():
    fp = one("--- a/f.c\n+++ b/f.c\n@@ -10,0 +11,2 @@\n+x\n+y\n@@ -20,2 +21,0 @@\n-p\n-q\n")
    lines = fp.line_map
    assert [lines[n] for n in (10, 11, 19, 22, 23)] == [10, 13, 21, 22, 23]


def test_two_patches_on_one_file_compose_in_order():
    v0 = text(numbered(120))
    v1_lines = numbered(120)
    v1_lines[5:5] = ["first 1", "first 2"]
    v1_lines[60] = "first changed"
    v1 = text(v1_lines)
    v2_lines = list(v1_lines)
    del v2_lines[30:34]
    v2_lines[100:100] = ["second"]
    v2 = text(v2_lines)
    one_ = PatchFile.parse(udiff(v0, v1), "1.patch")
    two = PatchFile.parse(udiff(v1, v2), "2.patch")
    patches = PatchSet((one_, two))
    lines = patches.line_map("f.c")
    assert {o: lines[o] for o in true_map(v0, v2)} == true_map(v0, v2)
    assert lines[50] == 50 + 2 - 4
    touched = patches.touched["f.c"]
    assert touched.patches == ("1.patch", "2.patch")
    assert len(touched.hunks) == len(one_.files[0].hunks) + len(two.files[0].hunks)
    # composed in the other order the map is wrong: patch 2's old lines are patch 1's new
    wrong = PatchSet((two, one_)).line_map("f.c")
    assert any(wrong[o] != n for o, n in true_map(v0, v2).items())
    assert patches.line_map("not/touched.c")[77] == 77


def test_line_map_values():
    assert LineMap()[5] == 5
    fp = one("--- a/f.c\n+++ b/f.c\n@@ -3,2 +3,3 @@\n a\n+b\n c\n")
    assert fp.line_map.then(fp.line_map)[4] == 6


# ---------------------------------------------------------------- git headers
RENAME = """\
From 1234 Mon Sep 17 00:00:00 2001
Subject: [PATCH] move it

---
 fs/{old.c => new.c} | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/fs/old.c b/fs/new.c
similarity index 90%
rename from fs/old.c
rename to fs/new.c
index 1111111..2222222 100644
--- a/fs/old.c
+++ b/fs/new.c
@@ -1,3 +1,4 @@
 a
+inserted
 b
 c
diff --git a/fs/x.c b/fs/y.c
similarity index 100%
rename from fs/x.c
rename to fs/y.c
diff --git a/fs/brand-new.c b/fs/brand-new.c
new file mode 100644
index 0000000..3333333
--- /dev/null
+++ b/fs/brand-new.c
@@ -0,0 +1,2 @@
+int n;
+int m;
diff --git a/fs/empty.c b/fs/empty.c
new file mode 100644
index 0000000..e69de29
diff --git a/fs/gone.c b/fs/gone.c
deleted file mode 100644
index 4444444..0000000
--- a/fs/gone.c
+++ /dev/null
@@ -1 +0,0 @@
-int gone;
diff --git "a/fs/sp ac\\303\\251.c" "b/fs/sp ac\\303\\251.c"
old mode 100644
new mode 100755
--
2.39.2
"""


def test_git_renames_new_deleted_and_mode_only_files():
    files = PatchFile.parse(RENAME, "series.patch").files
    summary = [(f.old, f.new, f.renamed, f.created, f.deleted, len(f.hunks)) for f in files]
    assert summary == [
        ("fs/old.c", "fs/new.c", True, False, False, 1),
        ("fs/x.c", "fs/y.c", True, False, False, 0),
        (None, "fs/brand-new.c", False, True, False, 1),
        (None, "fs/empty.c", False, True, False, 0),
        ("fs/gone.c", None, False, False, True, 1),
        ("fs/sp acé.c", "fs/sp acé.c", False, False, False, 0),
    ]
    assert files[2].new_mode == "100644" and files[5].old_mode == "100644"
    assert files[5].new_mode == "100755"
    assert files[0].at == 8  # its `diff --git` line
    patches = PatchSet((PatchFile.parse(RENAME, "series.patch"),))
    assert patches.sources == ("fs/new.c", "fs/y.c", "fs/brand-new.c", "fs/empty.c",
                               "fs/gone.c", "fs/sp acé.c")
    assert patches.line_map("fs/new.c")[2] == 3


def test_a_rename_carries_the_history_of_the_file_along():
    first = PatchFile.parse(udiff("a\nb\nc\nd\n", "a\nb1\nb2\nc\nd\n", name="fs/old.c"),
                            "1.patch")
    second = PatchFile.parse(RENAME, "2.patch")
    patches = PatchSet((first, second))
    touched = patches.touched
    assert "fs/old.c" not in touched
    assert [fp.patch for fp in touched["fs/new.c"].changes] == ["1.patch", "2.patch"]
    # c: line 3 → 4 (first patch) → 5 (second patch inserts above it)
    assert patches.line_map("fs/new.c")[3] == 5


def test_binary_patches_are_recorded_as_binary():
    text_ = ("diff --git a/fw.bin b/fw.bin\nindex 1..2 100644\nGIT binary patch\nliteral 4\n"
             "LcmZQz00000\n\nliteral 0\nHcmV?d00001\n\n"
             "diff --git a/fs/a.c b/fs/a.c\n--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-a\n+b\n"
             "Binary files a/logo.png and b/logo.png differ\n")
    files = PatchFile.parse(text_, "bin.patch").files
    assert [(f.path, f.binary) for f in files] == [("fw.bin", True), ("fs/a.c", False),
                                                   ("logo.png", True)]


# ---------------------------------------------------------------- hashes
def test_sha256_is_the_build_keys_patch_sha256(tmp_path):
    first, second = tmp_path / "1.patch", tmp_path / "2.patch"
    first.write_bytes(udiff("a\n", "b\n").encode())
    second.write_bytes(udiff("b\n", "c\xe9\n").encode("latin-1"))  # not UTF-8: still read
    patches = PatchSet.read([first, second])
    request = BuildRequest(kernel="6.1.0-56-amd64", patches=[first, second], name="t",
                           output=tmp_path)
    assert patches.sha256 == request.patch_sha256()
    assert [p.sha256 for p in patches.patches] == [
        hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)]
    assert patches.patches[1].data == second.read_bytes()
    assert patches.patches[0].basename == "1.patch"


def test_unreadable_patch_is_named(tmp_path):
    with pytest.raises(BuildError, match=r"missing\.patch: cannot read"):
        PatchSet.read([tmp_path / "missing.patch"])


# ---------------------------------------------------------------- applying: offset and fuzz
def _tree(tmp_path: Path) -> PreparedTree:
    source = tmp_path / "src" / "linux-source-6.1"
    (source / "fs").mkdir(parents=True)
    build = tmp_path / "build"
    build.mkdir()
    return PreparedTree(kernel=KernelId("6.1.0-56-amd64", "6.1.192-2"), source_dir=source,
                        build_dir=build)


def _offset_case(tmp_path: Path):
    """A patch written against a file without the kernel's first 3 lines: every hunk
    applies 3 lines further down than it says (patch says line 100, source has 103)."""
    kernel = numbered(203)
    base = kernel[3:]
    new = list(base)
    new[99] = "changed"  # base line 100, the kernel's line 103
    new[100:100] = ["added 1", "added 2"]
    del new[150]
    tree = _tree(tmp_path)
    (tree.source_dir / "fs" / "a.c").write_text(text(kernel))
    patch = PatchFile.parse(udiff(text(base), text(new), name="fs/a.c"), "offset.patch")
    assert patch.files[0].hunks[0].old_start == 97  # context from line 97 (100 - 3)
    return tree, patch, text(kernel)


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs GNU patch")
def test_hunks_applied_at_an_offset_move_the_line_map_with_them(tmp_path):
    from builder.stages.compile import apply_patch

    tree, patch, original = _offset_case(tmp_path)
    checked = apply_patch(tree, patch, dry_run=True)
    assert (tree.source_dir / "fs" / "a.c").read_text() == original
    applied = apply_patch(tree, patch, dry_run=False)
    assert checked == applied
    assert [h.old_start for h in applied.files[0].hunks] == [100, 149]
    patched = (tree.source_dir / "fs" / "a.c").read_text()
    truth = true_map(original, patched)
    lines = PatchSet((applied,)).line_map("fs/a.c")
    assert {o: lines[o] for o in truth} == truth
    assert lines[103 + 10] == 103 + 10 + 2
    # what the patch says alone is wrong where the hunk really is
    assert (patch.files[0].line_map[101], truth[101]) == (103, 101)
    assert applied.sha256 == patch.sha256 and applied.data == patch.data


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs GNU patch")
def test_hunks_that_need_fuzz_are_refused_before_anything_is_written(tmp_path):
    from builder.stages.compile import apply_patch

    tree, patch, original = _offset_case(tmp_path)
    # the kernel's copy differs in the hunk's last context line: patch would use fuzz 1
    last_context = patch.files[0].hunks[0].old_lines[-1]
    fuzzy = original.replace(f"{last_context}\n", f"{last_context} /* differs */\n")
    (tree.source_dir / "fs" / "a.c").write_text(fuzzy)
    with pytest.raises(BuildError) as err:
        apply_patch(tree, patch, dry_run=True)
    message = str(err.value)
    assert "offset.patch" in message and "hunk #1 of fs/a.c" in message
    assert "only with fuzz 1" in message and "rebase the patch" in message
    assert (tree.source_dir / "fs" / "a.c").read_text() == fuzzy


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs GNU patch")
def test_two_fixes_made_against_the_same_base_compose_after_the_offset(tmp_path):
    from builder.stages.compile import apply_patch

    base = numbered(200)
    first, second = list(base), list(base)
    first[20:20] = ["fix 1a", "fix 1b"]  # the second fix applies 2 lines further down
    second[120:121] = ["fix 2a", "fix 2b"]
    tree = _tree(tmp_path)
    (tree.source_dir / "fs" / "a.c").write_text(text(base))
    patches = [PatchFile.parse(udiff(text(base), text(new), name="fs/a.c"), f"{n}.patch")
               for n, new in ((1, first), (2, second))]
    applied = []
    for patch in patches:
        apply_patch(tree, patch, dry_run=True)
        applied.append(apply_patch(tree, patch, dry_run=False))
    assert [p.files[0].hunks[0].old_start for p in applied] == [18, 120]
    truth = true_map(text(base), (tree.source_dir / "fs" / "a.c").read_text())
    lines = PatchSet(tuple(applied)).line_map("fs/a.c")
    assert {o: lines[o] for o in truth} == truth
    unmoved = PatchSet(tuple(patches)).line_map("fs/a.c")  # hunks where they say
    assert any(unmoved[o] != n for o, n in truth.items())
