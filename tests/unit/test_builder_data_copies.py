# SPDX-License-Identifier: GPL-3.0-or-later
"""Read-only data a patch changes, data only a jump label names, and duplicate names
pinned by the shipped code's own references: small C fixtures compiled with the host gcc."""

from __future__ import annotations

import pytest

from builder.correlation import Side
from builder.elf import STT_FUNC, Symbol
from builder.errors import BuildError
from builder.stages.diff import UnitDiff, _mark_changed, diff_unit
from builder.stages.generate import generate_unit
from tests.unit.test_builder_diff import (
    BASE,
    LAYOUT_6_1,
    Exports,
    Symbols,
    build,
    changed_names,
    line_map,
)

TABLE = """
static const int steps[] = { 1, 2, 3 };

int step(int i)
{
\treturn steps[i & 1];
}
"""


def diff_of(tmp_path, base: str, new: str, skip_init: bool = False):
    orig, patched = build(tmp_path, "orig", base), build(tmp_path, "patched", new)
    return orig, patched, diff_unit(orig, patched, "f.c", "vmlinux", line_map(base, new),
                                    skip_init=skip_init)


def test_a_static_table_only_functions_use_travels_as_a_new_copy(tmp_path):
    base = BASE + TABLE
    _o, _p, diff = diff_of(tmp_path, base, base.replace("{ 1, 2, 3 }", "{ 1, 2, 4 }"))
    assert changed_names(diff) == ["step"]
    assert diff.new_data == ["steps"]


def test_a_changed_global_table_is_refused_other_files_hold_it(tmp_path):
    base = BASE + TABLE.replace("static const", "const")
    with pytest.raises(BuildError) as err:
        diff_of(tmp_path, base, base.replace("{ 1, 2, 3 }", "{ 1, 2, 4 }"))
    assert "read-only data 'steps', which is global" in str(err.value)


def test_a_changed_table_that_other_data_points_at_is_refused_naming_the_holder(tmp_path):
    # A driver's id_table or an ops pointer: the running kernel's copy keeps the old one.
    base = BASE + TABLE + "struct driver { const int *ids; };\n" \
        "struct driver my_driver = { steps };\n"
    with pytest.raises(BuildError) as err:
        diff_of(tmp_path, base, base.replace("{ 1, 2, 3 }", "{ 1, 2, 4 }"))
    assert "'my_driver' holds its address" in str(err.value)


def test_a_changed_table_init_code_used_is_an_init_change(tmp_path):
    base = BASE + TABLE + '__attribute__((section(".init.text"))) int register_steps(void)\n' \
        "{\n\treturn printk(\"%p\", steps);\n}\n"
    new = base.replace("{ 1, 2, 3 }", "{ 1, 2, 4 }")
    with pytest.raises(BuildError) as err:
        diff_of(tmp_path, base, new)
    assert "register_steps" in str(err.value) and "__init" in str(err.value)
    _o, _p, diff = diff_of(tmp_path, base, new, skip_init=True)
    assert any("register_steps" in entry for entry in diff.skipped_init)
    assert changed_names(diff) == ["step"]


def test_a_changed_cold_part_is_patched_through_its_parent():
    def fn(name: str) -> Symbol:
        return Symbol(name=name, type=STT_FUNC)

    orig = Side.__new__(Side)
    orig.functions = {"probe": fn("probe"), "probe.cold": fn("probe.cold")}
    result = UnitDiff(source="f.c", target_object="vmlinux", correlation={})
    rename = {"probe": "probe", "probe.cold": "probe.cold"}
    _mark_changed(result, orig, rename, "probe.cold", "probe.cold", "uses read-only data 't'")
    _mark_changed(result, orig, rename, "probe", "probe", "size 10 → 12 bytes")
    assert [(c.name, c.reason) for c in result.changed] == [("probe", "size 10 → 12 bytes")]


JUMP_LABEL_DEBUG = """
struct ddebug { const char *format; unsigned int lineno; long key; };

static inline __attribute__((always_inline)) int debug_on(struct ddebug *d)
{
\tasm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\\n\\t"
\t\t ".pushsection __jump_table, \\"aw\\"\\n\\t.balign 8\\n\\t"
\t\t ".long 1b - ., %l[on] - .\\n\\t.quad %c0 + 16 + 2 - .\\n\\t.popsection"
\t\t : : "i" (d) : : on);
\treturn 0;
on:
\treturn 1;
}

int dump(int v)
{
\tstatic struct ddebug __attribute__((section("__dyndbg"), used)) desc = { "dump", 7 };
\tif (debug_on(&desc))
\t\treport("dump", v);
\treturn v + 1;
}
"""


def test_a_descriptor_only_a_jump_label_names_comes_with_the_patch(tmp_path):
    # print_hex_dump_debug(): the descriptor is the branch's key and nothing else.
    base = BASE + JUMP_LABEL_DEBUG
    orig, patched, diff = diff_of(tmp_path, base, base.replace("v + 1", "v + 2"))
    assert changed_names(diff) == ["dump"]
    unit = generate_unit(diff, Symbols(), Exports(), prefix="u0",
                         layout=LAYOUT_6_1)
    jump_table = unit.object.section("__jump_table")
    assert jump_table is not None and unit.object.section("__dyndbg") is not None
    assert all(r.symbol.section is not None for r in jump_table.relocs)
    assert not any("desc" in name for name in unit.klp_symbols)


class TwoLimits(Symbols):
    """kallsyms with two `limit`s, equally far from this file's functions: only the shipped
    code of set_limit, which refers to the second, can tell."""

    def __init__(self, orig) -> None:
        side, fsym = Side(orig), orig.symbol("set_limit")
        self.values = {0x1800 + r.offset - fsym.value: 0x2000 + r.addend
                       for r in side.relocs_in(fsym) if "limit" in r.symbol.name}
        assert self.values, "set_limit refers to limit"

    def addresses(self, name: str) -> list[int]:
        return [0x1000, 0x2000] if name == "limit" else [0x1800]

    def referenced_value(self, site: int, rtype: int) -> int | None:
        return self.values.get(site)


def test_a_duplicate_named_variable_is_pinned_by_the_shipped_codes_reference(tmp_path):
    new = BASE.replace("return x * 3 + limit;", "return x * 5 + limit;")
    orig, patched, diff = diff_of(tmp_path, BASE, new)
    unit = generate_unit(diff, TwoLimits(orig), Exports(), prefix="u0",
                         layout=LAYOUT_6_1)
    assert ".klp.sym.vmlinux.limit,2" in unit.klp_symbols


def test_references_that_name_no_candidate_pin_nothing(tmp_path):
    new = BASE.replace("return x * 3 + limit;", "return x * 5 + limit;")
    orig, patched, diff = diff_of(tmp_path, BASE, new)
    symbols = TwoLimits(orig)
    symbols.values = dict.fromkeys(symbols.values, 12288)
    with pytest.raises(BuildError) as err:
        generate_unit(diff, symbols, Exports(), prefix="u0", layout=LAYOUT_6_1)
    assert "'limit' exists 2 times" in str(err.value)
