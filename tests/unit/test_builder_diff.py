# SPDX-License-Identifier: GPL-3.0-or-later
"""Diff and generate stages on small C fixtures compiled with the host gcc."""

from __future__ import annotations

import difflib
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.correlation import Side, canonical, reference_key
from builder.elf import (
    R_X86_64_PC32,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_MERGE,
    SHN_UNDEF,
    ElfObject,
    Reloc,
    Section,
    Symbol,
)
from builder.errors import BuildError
from builder.layout import Layout
from builder.patchset import LineMap, PatchFile
from builder.stages.diff import diff_unit, require_change
from builder.stages.generate import generate_unit
from builder.stages.link import patch_table

LAYOUT_6_1 = Layout(12, 16, 12, 12, 8, 6, 16)

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

# Kernel-like code generation: no PIC, one section per function and object.
CFLAGS = ["-O2", "-fno-pic", "-mcmodel=kernel", "-ffunction-sections", "-fdata-sections",
          "-fno-asynchronous-unwind-tables", "-mno-red-zone", "-fno-inline-small-functions",
          "-pg", "-mfentry", "-mrecord-mcount"]  # __mcount_loc, as kbuild with ftrace

BASE = """\
extern int printk(const char *fmt, ...);
extern void report(const char *file, int line);
extern int hidden_counter;

static int limit = 45;

void set_limit(int v)
{
\tlimit = v;
}

static inline __attribute__((always_inline)) int scale(int x)
{
\treturn x * 7;
}

__attribute__((noinline)) static int helper(int x)
{
\treturn x * 3 + limit;
}

int show(int v)
{
\tprintk("value %d\\n", helper(scale(v)));
\treturn 0;
}

int other(void)
{
\tprintk("other\\n");
\treturn hidden_counter;
}

int where(void)
{
\treport("f.c", __LINE__);
\treturn 1;
}

__attribute__((section(".init.text"))) int setup(void)
{
\treturn printk("setup\\n");
}
"""


class Exports:
    """Module.symvers stand-in: printk and report are exported by vmlinux."""

    def owner(self, name: str) -> str | None:
        return "vmlinux" if name in ("printk", "report", "__fentry__") else None

    def namespace(self, name: str) -> str:
        return ""


class Symbols:
    """kallsyms stand-in: every symbol is unique."""

    depends: frozenset[str] = frozenset()

    def addresses(self, name: str) -> list[int]:
        return [0xFFFFFFFF81000000]

    def read(self, address: int, size: int) -> bytes:
        raise AssertionError("unique symbols need no bytes")

    def referenced_value(self, site: int, rtype: int) -> int | None:
        return None  # no linked code to read a reference back from


def build(tmp_path: Path, name: str, source: str) -> ElfObject:
    c = tmp_path / f"{name}.c"
    c.write_text(source)
    o = tmp_path / f"{name}.o"
    subprocess.run(["gcc", *CFLAGS, "-c", "-o", str(o), str(c)], check=True)
    return ElfObject.read(o)


def patch_text(old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        "a/f.c", "b/f.c"))


def line_map(old: str, new: str) -> LineMap:
    """The old→new line map of the patch that turns `old` into `new`."""
    return PatchFile.parse(patch_text(old, new), "f.patch").files[0].line_map


def run_diff(tmp_path: Path, new: str):
    orig = build(tmp_path, "orig", BASE)
    patched = build(tmp_path, "patched", new)
    return orig, patched, diff_unit(orig, patched, "f.c", "vmlinux", line_map(BASE, new))


def changed_names(diff) -> list[str]:
    return sorted(c.name for c in diff.changed)


@pytest.mark.parametrize(("name", "expected"), [
    ("foo", "foo"), ("count.12", "count"), ("foo.part.3", "foo.part"),
    ("foo.constprop.0.isra.1", "foo.constprop.isra"), ("foo.cold", "foo.cold"),
])
def test_canonical_names_drop_gcc_numbering(name, expected):
    assert canonical(name) == expected


def test_changed_string_is_found_even_though_string_offsets_move(tmp_path):
    new = BASE.replace('"other\\n"', '"other, patched\\n"').replace(
        '"value %d\\n"', '"value %d\\n"')
    _orig, _patched, diff = run_diff(tmp_path, new)
    assert changed_names(diff) == ["other"]
    assert "other, patched" in diff.changed[0].reason


def test_a_changed_callee_is_patched_alone(tmp_path):
    _orig, _patched, diff = run_diff(tmp_path, BASE.replace("x * 3", "x * 5"))
    assert changed_names(diff) == ["helper"]


def test_a_change_inlined_into_a_caller_patches_the_caller(tmp_path):
    _orig, _patched, diff = run_diff(tmp_path, BASE.replace("x * 7", "x * 9"))
    assert changed_names(diff) == ["show"]


def test_line_number_moves_alone_are_not_a_change(tmp_path):
    # Adding a line above where() changes the __LINE__ it passes, nothing else.
    new = BASE.replace("int where(void)\n", "/* moved */\nint where(void)\n")
    new = new.replace('\tprintk("other\\n");', '\tprintk("other!\\n");')
    _orig, _patched, diff = run_diff(tmp_path, new)
    assert changed_names(diff) == ["other"]


def test_new_function_and_new_data_are_reported(tmp_path):
    new = BASE.replace(
        "int other(void)\n{\n",
        "static int calls;\n__attribute__((noinline)) static void bump(void) { calls++; }\n"
        "int other(void)\n{\n\tbump();\n")
    _orig, _patched, diff = run_diff(tmp_path, new)
    assert changed_names(diff) == ["other"]
    assert diff.new_functions == ["bump"]
    assert diff.new_data == ["calls"]


def test_changed_init_code_is_refused_naming_the_function(tmp_path):
    with pytest.raises(BuildError, match=r"(?s)setup.*__init"):
        run_diff(tmp_path, BASE.replace('"setup\\n"', '"setup!\\n"'))


def test_init_and_runtime_changes_name_both_parts_and_the_way_out(tmp_path):
    new = BASE.replace('"setup\\n"', '"setup!\\n"').replace("x * 3", "x * 5")
    with pytest.raises(BuildError) as err:
        run_diff(tmp_path, new)
    text = str(err.value)
    assert "__init code (setup in .init.text)" in text
    assert "runtime part (helper) could be live-patched alone with --skip-init-changes" in text


def test_skip_init_changes_leaves_init_out_and_records_it(tmp_path):
    new = BASE.replace('"setup\\n"', '"setup!\\n"').replace("x * 3", "x * 5")
    orig, patched = build(tmp_path, "orig", BASE), build(tmp_path, "patched", new)
    diff = diff_unit(orig, patched, "f.c", "vmlinux", line_map(BASE, new), skip_init=True)
    assert changed_names(diff) == ["helper"]
    assert diff.skipped_init == ["setup in .init.text"]


def test_changed_initial_value_of_existing_data_is_refused(tmp_path):
    with pytest.raises(BuildError, match="limit") as err:
        run_diff(tmp_path, BASE.replace("limit = 45", "limit = 30"))
    assert "shadow variable" in str(err.value)


def test_comment_only_patch_is_refused(tmp_path):
    _orig, _patched, diff = run_diff(tmp_path, BASE.replace("int show(int v)\n",
                                                            "/* hi */\nint show(int v)\n"))
    with pytest.raises(BuildError, match="no functional change in f.c"):
        require_change([diff])


def test_generate_uses_livepatch_symbols_for_what_the_loader_cannot_resolve(tmp_path):
    new = BASE.replace("return hidden_counter;", "return hidden_counter + limit + helper(2);")
    orig, patched, diff = run_diff(tmp_path, new)
    unit = generate_unit(diff, Symbols(), Exports(), prefix="u0", layout=LAYOUT_6_1)
    assert [f.old_name for f in unit.functions] == ["other"]
    # unexported global, static data and an unchanged static function: livepatch symbols
    assert unit.klp_symbols == [".klp.sym.vmlinux.helper,0",
                                ".klp.sym.vmlinux.hidden_counter,0",
                                ".klp.sym.vmlinux.limit,0"]
    undefined = {s.name for s in unit.object.symbols if s.section is None
                 and s.shndx == SHN_UNDEF}
    assert "printk" in undefined  # exported: a normal reference
    # The written object is a valid relocatable the linker accepts.
    out = tmp_path / "patch.o"
    unit.object.write(out)
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "linked.o"), str(out)], check=True)
    reread = ElfObject.read(out)
    assert reread.section(".text.other") is not None
    assert any(s.name == unit.functions[0].new_symbol for s in reread.symbols)


def test_generate_copies_strings_and_new_functions(tmp_path):
    new = BASE.replace('"other\\n"', '"other %d\\n"').replace(
        "int other(void)\n{\n",
        "__attribute__((noipa)) static int twice(int x) { return 2 * x; }\n"
        "int other(void)\n{\n\thidden_counter = twice(hidden_counter);\n")
    orig, patched, diff = run_diff(tmp_path, new)
    unit = generate_unit(diff, Symbols(), Exports(), prefix="u0", layout=LAYOUT_6_1)
    names = {s.name for s in unit.object.sections}
    assert ".text.other" in names and ".text.twice" in names
    assert any(n.startswith(".rodata") for n in names)
    assert ".text.show" not in names


class DuplicateHelper(Symbols):
    """kallsyms with two identical `helper`s; this file's other functions sit by the second."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def addresses(self, name: str) -> list[int]:
        if name == "helper":
            return [0xFFFFFFFF81000000, 0xFFFFFFFF81400000]
        return [0xFFFFFFFF81400100 + 0x40 * len(name)]

    def read(self, address: int, size: int) -> bytes:
        return self.body[:size]


def test_a_duplicate_named_static_helper_is_found_next_to_its_file(tmp_path):
    new = BASE.replace("return hidden_counter;", "return hidden_counter + helper(2);")
    orig, patched, diff = run_diff(tmp_path, new)
    helper = orig.symbol("helper")
    symbols = DuplicateHelper(helper.section.data[helper.value:helper.value + helper.size])
    unit = generate_unit(diff, symbols, Exports(), prefix="u0", layout=LAYOUT_6_1)
    assert ".klp.sym.vmlinux.helper,2" in unit.klp_symbols


def test_a_duplicate_name_far_from_the_file_is_refused_saying_what_was_tried(tmp_path):
    new = BASE.replace("return hidden_counter;", "return hidden_counter + helper(2);")
    orig, patched, diff = run_diff(tmp_path, new)
    helper = orig.symbol("helper")
    symbols = DuplicateHelper(helper.section.data[helper.value:helper.value + helper.size])
    symbols.addresses = lambda name: [0x1000, 0x2000] if name == "helper" else [0x1800]
    with pytest.raises(BuildError) as err:
        generate_unit(diff, symbols, Exports(), prefix="u0", layout=LAYOUT_6_1)
    assert "'helper' exists 2 times" in str(err.value)
    assert "no symbol of this file with a unique name lies clearly nearer" in str(err.value)


DYNDBG = """\
struct ddebug { const char *format; unsigned int lineno; };
#define pr_debug(fmt) ({ static struct ddebug __attribute__((section("__dyndbg"), used)) \\
\t__UNIQUE_ID_ddebug = { fmt, __LINE__ }; report(__UNIQUE_ID_ddebug.format, \\
\t__UNIQUE_ID_ddebug.lineno); })
"""


def test_a_moved_pr_debug_is_not_changed_data_and_the_patch_brings_its_own(tmp_path):
    base = BASE + DYNDBG + "int noisy(void)\n{\n\tpr_debug(\"noisy\");\n\treturn 2;\n}\n"
    new = base.replace("int noisy(void)\n", "/* moved */\nint noisy(void)\n").replace(
        "return 2;", "return 3;")
    orig, patched = build(tmp_path, "orig", base), build(tmp_path, "patched", new)
    diff = diff_unit(orig, patched, "f.c", "vmlinux", line_map(base, new))
    assert changed_names(diff) == ["noisy"] and diff.new_data == []
    unit = generate_unit(diff, Symbols(), Exports(), prefix="u0", layout=LAYOUT_6_1)
    assert unit.object.section("__dyndbg") is not None
    assert not any("ddebug" in name for name in unit.klp_symbols)


def test_a_new_global_in_one_file_is_called_from_another_changed_file(tmp_path):
    # file a.c adds a global helper; f.c (another object) calls it
    a_old = "extern int printk(const char *fmt, ...);\nint a_old(void) { return 1; }\n"
    a_new = a_old + "int shared_fix(int v) { return printk(\"fix %d\\n\", v); }\n"
    a_diff = diff_unit(build(tmp_path, "a_orig", a_old), build(tmp_path, "a_patched", a_new),
                       "a.c", "vmlinux", line_map(a_old, a_new))
    assert a_diff.changed == [] and a_diff.provides == ["shared_fix"]
    b_new = BASE.replace("extern int hidden_counter;",
                         "extern int hidden_counter;\nextern int shared_fix(int v);").replace(
        "return hidden_counter;", "return shared_fix(hidden_counter);")
    b_orig, b_patched, b_diff = run_diff(tmp_path, b_new)
    require_change([a_diff, b_diff])
    provided = frozenset(a_diff.provides)
    b_unit = generate_unit(b_diff, Symbols(), Exports(), prefix="u1",
                           layout=LAYOUT_6_1, provided=provided)
    assert not any("shared_fix" in name for name in b_unit.klp_symbols)
    a_unit = generate_unit(a_diff, Symbols(), Exports(), prefix="u0", layout=LAYOUT_6_1,
                           provided=provided)
    a_unit.object.write(tmp_path / "a.o")
    b_unit.object.write(tmp_path / "b.o")
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "ab.o"), str(tmp_path / "a.o"),
                    str(tmp_path / "b.o")], check=True)
    linked = ElfObject.read(tmp_path / "ab.o")
    assert linked.symbol("shared_fix").defined


CALLBACK_ONLY = """\
struct klp_object;
void fix_up(struct klp_object *obj) { (void)obj; }
__attribute__((used, section(".discard.klp_callback_ptrs")))
void (*__klp_post_patch_callback_0)(struct klp_object *) = fix_up;
"""


def test_a_patch_of_callbacks_only_is_accepted_and_wired_to_its_object(tmp_path):
    old = "int untouched(void) { return 0; }\n"
    new = old + CALLBACK_ONLY
    orig, patched = build(tmp_path, "orig", old), build(tmp_path, "patched", new)
    diff = diff_unit(orig, patched, "m.c", "demo_mod", line_map(old, new))
    require_change([diff])
    unit = generate_unit(diff, Symbols(), Exports(), prefix="u0",
                         layout=LAYOUT_6_1)
    table = patch_table([unit], replace=True, description="test")
    assert '.name = "demo_mod", .funcs = klp_funcs_0, .callbacks = { .post_patch = ' in table


def _label_object(label: str, constants: bytes, value: int) -> tuple:
    """An object whose code refers, PC-relative, to a label in merged 2-byte constants."""
    text = Section(name=".text.f", flags=SHF_ALLOC | SHF_EXECINSTR,
                   data=bytes.fromhex("488d0500000000c3"))  # lea LABEL(%rip),%rax; ret
    cst = Section(name=".rodata.cst2", flags=SHF_ALLOC | SHF_MERGE, entsize=2, data=constants)
    sym = Symbol(name=label, value=value, section=cst)
    text.relocs = [Reloc(3, R_X86_64_PC32, sym, -4)]
    return Side(ElfObject(sections=[text, cst], symbols=[sym])), text


def test_renumbered_constant_labels_are_meant_by_content():
    # GCC numbers the labels of merged constants by order (.LC6 becomes .LC3 when the
    # patch adds or drops constants elsewhere): the reference is to the value.
    orig, otext = _label_object(".LC6", b"\x0a\x00\x0b\x00", 2)
    same, stext = _label_object(".LC3", b"\x0b\x00", 0)
    other, xtext = _label_object(".LC3", b"\x0c\x00", 0)
    key = reference_key(orig, otext, otext.relocs[0], {})
    assert reference_key(same, stext, stext.relocs[0], {}) == key
    assert reference_key(other, xtext, xtext.relocs[0], {}) != key
