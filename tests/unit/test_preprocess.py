# SPDX-License-Identifier: GPL-3.0-or-later
"""builder/preprocess.py: which includers of a changed header can be left unbuilt.

The texts are shaped like gcc -E output of a kernel file (line markers, attributes,
#pragma lines from _Pragma); the real thing is proven by tests/vm header cases and
bench/headers.py, where every file left out would have shown up as a missing change.
"""

from __future__ import annotations

import pytest

from builder.preprocess import Item, compare, droppable_name, items

HEAD = """\
# 1 "fs/foo.c"
# 1 "<built-in>"
# 1 "./include/linux/foo.h" 1
struct foo { int a; long b; };
extern int foo_register(struct foo *f) __attribute__((__warn_unused_result__));
static inline __attribute__((__always_inline__)) int foo_get(struct foo *f)
{
 return f->a;
}
"""
TAIL = """\
# 12 "fs/foo.c" 2
int foo_user(struct foo *f)
{
 return foo_get(f) + 1;
}
"""


def test_only_line_markers_differ():
    moved = HEAD.replace('# 1 "./include/linux/foo.h" 1', '# 3 "./include/linux/foo.h" 1')
    assert compare(HEAD + TAIL, moved + TAIL).same


def test_a_new_static_inline_nothing_calls_is_left_out():
    new = HEAD + "static inline int foo_put(struct foo *f)\n{\n return f->b != 0;\n}\n"
    verdict = compare(HEAD + TAIL, new + TAIL)
    assert verdict.same and "foo_put" in verdict.reason


def test_a_changed_static_inline_the_file_calls_is_built():
    new = HEAD.replace("return f->a;", "return f->a ? f->a : -1;")
    verdict = compare(HEAD + TAIL, new + TAIL)
    assert not verdict.same and "foo_get" in verdict.reason


def test_a_changed_static_inline_the_file_does_not_call_is_left_out():
    tail = TAIL.replace("foo_get(f)", "f->b")
    new = HEAD.replace("return f->a;", "return f->a ? f->a : -1;")
    assert compare(HEAD + tail, new + tail).same


def test_a_new_prototype_is_left_out_unless_used():
    new = HEAD + "extern void foo_flush(struct foo *f);\n"
    assert compare(HEAD + TAIL, new + TAIL).same
    used = TAIL.replace("return foo_get(f) + 1;", "foo_flush(f);\n return 1;")
    assert not compare(HEAD + used, new + used).same


def test_a_struct_layout_change_is_built():
    new = HEAD.replace("long b; }", "long b; int c; }")
    verdict = compare(HEAD + TAIL, new + TAIL)
    assert not verdict.same and "struct foo" in verdict.reason


def test_a_changed_macro_shows_where_it_is_expanded():
    # FOO_MAX went from 8 to 16: the macro is gone after preprocessing, its use is not
    old = HEAD + "int foo_limit(void)\n{\n return 8;\n}\n"
    new = HEAD + "int foo_limit(void)\n{\n return 16;\n}\n"
    assert not compare(old + TAIL, new + TAIL).same
    # ... and where nothing expands it, the outputs are equal
    assert compare(HEAD + TAIL, HEAD + TAIL).same


@pytest.mark.parametrize("attribute", ["__used__", "used", "__constructor__", "__alias__"])
def test_a_static_function_gcc_must_keep_is_built(attribute):
    new = HEAD + (f"static void __attribute__(({attribute})) foo_keep(void)\n"
                  "{\n}\n")
    assert not compare(HEAD + TAIL, new + TAIL).same


def test_a_name_in_a_string_counts_as_a_use():
    # top-level asm may call a static function by name
    tail = TAIL + 'asm(".pushsection .text; call foo_put; .popsection");\n'
    new = HEAD + "static inline int foo_put(struct foo *f)\n{\n return 0;\n}\n"
    verdict = compare(HEAD + tail, new + tail)
    assert not verdict.same and "foo_put is used" in verdict.reason


def test_unused_helpers_that_call_each_other_are_left_out():
    new = HEAD + ("static inline int foo_a(struct foo *f)\n{\n return f->a;\n}\n"
                  "static inline int foo_b(struct foo *f)\n{\n return foo_a(f) * 2;\n}\n")
    assert compare(HEAD + TAIL, new + TAIL).same


def test_a_pragma_inside_a_body_stays_in_its_item():
    text = ("static inline void foo_quiet(void)\n{\n"
            "#pragma GCC diagnostic push\n x();\n"
            "#pragma GCC diagnostic pop\n}\n"
            "#pragma GCC visibility push(default)\n"
            "int y;\n")
    found = [item.text for item in items(text)]
    assert len(found) == 3
    assert found[0].startswith("static inline void foo_quiet") and found[0].endswith("}")
    assert found[1] == "#pragma GCC visibility push(default)" and found[2] == "int y;"
    assert droppable_name(Item(found[1])) is None


def test_a_changed_pragma_between_items_is_built():
    old = HEAD + "#pragma GCC optimize(\"O2\")\n" + TAIL
    new = HEAD + "#pragma GCC optimize(\"O3\")\n" + TAIL
    assert not compare(old, new).same


@pytest.mark.parametrize(("text", "name"), [
    ("static inline int foo_get(struct foo *f)\n{\n return 0;\n}", "foo_get"),
    # a plain static function gcc keeps under optimize("O0"), a pragma or per-file flags
    ("static __attribute__((__noinline__)) void foo_slow(void) { }", None),
    ("static inline __attribute__((__optimize__(\"O0\"))) int foo_o0(void) { return 0; }",
     None),
    ("static inline __attribute__((always_inline)) struct foo *foo_of(void *p) { return p; }",
     "foo_of"),
    ("extern int foo_register(struct foo *f) __attribute__((__warn_unused_result__));",
     "foo_register"),
    ("void foo_flush(struct foo *f);", "foo_flush"),
    ("static int foo_fwd(int);", "foo_fwd"),
    ("extern struct foo foo_table[];", "foo_table"),
    ("extern int foo_count;", "foo_count"),
    # not droppable: definitions gcc emits, types, pointers, arrays with calls
    ("int foo_user(struct foo *f)\n{\n return 1;\n}", None),
    ("int foo_count;", None),
    ("static int foo_state = 1;", None),
    ("void (*foo_hook)(void);", None),
    ("int foo_sizes[__builtin_choose_expr(1, 2, 3)];", None),
    ("struct foo { int a; };", None),
    ("typedef int foo_fn(void);", None),
    ("int foo_strict(int a[static 4])\n{\n return a[0];\n}", None),
    ("_Static_assert(sizeof(struct foo) == 16, \"size\");", None),
    ("enum foo_kind { FOO_A, FOO_B };", None),
    # one declaration of several names; a library function gcc calls on its own
    ("extern int foo_a, foo_b;", None),
    ("extern int foo_a, foo_b(void);", None),
    ("void *memcpy(void *d, const void *s, unsigned long n) __asm__(\"__memcpy\");", None),
    ("extern void abort(void);", None),
    # a per-CPU extern is still one declaration
    ("extern __attribute__((section(\".data..percpu\"))) __typeof__(int) foo_pcpu;",
     "foo_pcpu"),
])
def test_droppable_names(text, name):
    assert droppable_name(Item(text)) == name


def test_line_builtins_make_line_markers_count():
    old = HEAD + "static inline int foo_line(void)\n{\n return __builtin_LINE();\n}\n" + TAIL
    moved = old.replace('# 1 "./include/linux/foo.h" 1', '# 3 "./include/linux/foo.h" 1')
    assert not compare(old, moved).same


def test_a_function_returning_an_array_pointer_is_one_item():
    text = ("struct s (*get(void))[2]\n{\n return &tbl[helper()];\n}\n"
            "int y;\n")
    assert [item.text.split()[-1] for item in items(text)] == ["}", "y;"]


def test_items_split_definitions_and_declarations():
    text = ("struct s { int (*f)(void); } __attribute__((packed));\n"
            "static int g(void) __attribute__((cold));\n"
            "static int g(void)\n{\n if (1) { return 1; }\n return 0;\n}\n"
            "int table[] = { 1, 2 };\n")
    assert [item.text.split()[0] for item in items(text)] == ["struct", "static", "static", "int"]


def test_a_member_of_the_same_name_is_no_use():
    # 6.12's close_on_exec(): a static inline and a member of struct fdtable
    head = HEAD.replace("long b; }", "long b; unsigned long *foo_put; }")
    tail = TAIL + ("long peek(struct foo *f, struct foo g)\n"
                   "{\n return *f->foo_put + *g.foo_put;\n}\n")
    new = head + "static inline int foo_put(struct foo *f)\n{\n return 0;\n}\n"
    verdict = compare(head + tail, new + tail)
    assert verdict.same, verdict
    # ... but a call or an address taken is
    called = tail + "int put(struct foo *f)\n{\n return foo_put(f);\n}\n"
    assert not compare(head + called, new + called).same
    taken = tail + "int (*hook)(struct foo *) = foo_put;\n"
    assert not compare(head + taken, new + taken).same


@pytest.mark.parametrize(("text", "used"), [
    ("int f(struct foo *x)\n{\n return x->foo_put;\n}", False),
    ("int f(struct foo x)\n{\n return x . foo_put;\n}", False),
    ("struct foo { long *foo_put; int a; };", False),
    # a type made from it changes with its declaration
    ("typedef typeof(foo_put) foo_put_t;", True),
    ("struct foo { typeof(foo_put) *hook; char pad[sizeof(foo_put)]; };", True),
    ("struct foo { long *foo_put; } foo_global;", True),  # an object, not a type
    ("int f(void *p)\n{\n return __builtin_foo_put(p);\n}", True),
    ("struct foo bar = { .cb = foo_put };", True),
    ("int f(void)\n{\n return foo_put(0);\n}", True),
    ('asm(".globl x; x: jmp foo_put");', True),
    ("struct foo *foo_get(void) __attribute__((alias(\"foo_put\")));", True),
])
def test_uses(text, used):
    from builder.preprocess import uses

    assert uses(Item(text), "foo_put") is used
