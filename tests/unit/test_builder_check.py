# SPDX-License-Identifier: GPL-3.0-or-later
"""Patches of a module object: special-section entries the kernel reads at load, and the
check stage that proves a linked module is safe to load (host-gcc fixtures)."""

from __future__ import annotations

import difflib
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from builder.elf import (
    R_X86_64_64,
    R_X86_64_PC32,
    R_X86_64_PC64,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_INFO_LINK,
    SHF_RELA_LIVEPATCH,
    SHT_RELA,
    ElfObject,
    Reloc,
    Section,
)
from builder.errors import BuildError
from builder.layout import Layout, linked_tables
from builder.patchset import LineMap, PatchFile
from builder.stages.check import check_module
from builder.stages.diff import diff_unit
from builder.stages.generate import generate_unit
from builder.stages.link import convert_livepatch_relocations

LAYOUT_6_1 = Layout(12, 16, 12, 12, 8, 6, 16)
CFLAGS = ["-O2", "-fno-pic", "-mcmodel=kernel", "-ffunction-sections", "-fdata-sections",
          "-fno-asynchronous-unwind-tables", "-mno-red-zone", "-pg", "-mfentry",
          "-mrecord-mcount"]

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")

# A module's function with a tracepoint (jump label + static call, as the kernel's
# headers and objtool emit them) and, optionally, a branch on the module's own key.
MODULE = """\
struct static_key { int enabled; };
struct tracepoint { const char *name; struct static_key key; };
extern struct tracepoint __tracepoint_demo;
extern struct static_key feature_key;
extern void __SCT__tp_func_demo(int);
extern int printk(const char *fmt, ...);

#define BRANCH(key, label) asm goto("1: .byte 0x0f,0x1f,0x44,0x00,0x00\\n\\t" \\
\t".pushsection __jump_table, \\"aw\\"\\n\\t.balign 8\\n\\t" \\
\t".long 1b - ., %l[" #label "] - .\\n\\t.quad %c0 - .\\n\\t.popsection" \\
\t: : "i"(key) : : label)

int handle(int v)
{
\tBRANCH(&__tracepoint_demo.key, trace);
back:
\tFEATURE
\treturn printk("value %d\\n", v + 1);
trace:
\tasm volatile("2: call __SCT__tp_func_demo\\n\\t"
\t\t".pushsection .static_call_sites, \\"aw\\"\\n\\t"
\t\t".long 2b - ., __SCT__tp_func_demo - .\\n\\t.popsection" : : "D"(v));
\tgoto back;
feature:
\treturn 0;
}
"""
FEATURE = "BRANCH(&feature_key, feature);"


class Exports:
    def owner(self, name: str) -> str | None:
        return "vmlinux" if name in ("printk", "__fentry__") else None

    def namespace(self, name: str) -> str:
        return ""


class Symbols:
    """Every symbol is unique in its object."""

    def addresses(self, name: str) -> list[int]:
        return [0x1000]

    def read(self, address: int, size: int) -> bytes:
        raise AssertionError("unique symbols need no bytes")


class KeyTypes(Symbols):
    """vmlinux whose every static key is off (or on) by default."""

    def __init__(self, on: bool = False) -> None:
        self.on = on

    def read(self, address: int, size: int) -> bytes:
        return bytes([int(self.on)]) + bytes(size - 1)


def compile_c(tmp_path: Path, name: str, source: str) -> ElfObject:
    (tmp_path / f"{name}.c").write_text(source)
    subprocess.run(["gcc", *CFLAGS, "-c", "-o", str(tmp_path / f"{name}.o"),
                    str(tmp_path / f"{name}.c")], check=True)
    return ElfObject.read(tmp_path / f"{name}.o")


# The same site where objtool runs on the linked module (6.12's IBT kernels): still the
# jmp that objtool turns into a NOP, and the entry's key + 2 asks it to.
JMP_BRANCH = """#define BRANCH(key, label) asm goto("1: jmp %l[" #label "]\\n\\t" \\
\t".pushsection __jump_table, \\"aw\\"\\n\\t.balign 8\\n\\t" \\
\t".long 1b - ., %l[" #label "] - .\\n\\t.quad %c0 + 2 - .\\n\\t.popsection" \\
\t: : "i"(key) : : label)
"""


def generate(tmp_path: Path, feature: str = "", module: str = MODULE,
             layout: Layout = LAYOUT_6_1, exports: Exports | None = None,
             target: str = "demo_mod"):
    old = module.replace("FEATURE", feature)
    new = old.replace("v + 1", "v + 2")
    orig, patched = compile_c(tmp_path, "orig", old), compile_c(tmp_path, "patched", new)
    text = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                        "a/m.c", "b/m.c"))
    diff = diff_unit(orig, patched, "m.c", target,
                     PatchFile.parse(text, "m.patch").files[0].line_map)
    return generate_unit(diff, Symbols(), exports or Exports(), prefix="u0", layout=layout)


def link(tmp_path: Path, unit, exported: tuple[str, ...] = ()) -> ElfObject:
    """ld -r and livepatch relocation sections, as the link stage does (no kbuild)."""
    unit.object.write(tmp_path / "patch.o")
    ko = tmp_path / "patch.ko"
    subprocess.run(["ld", "-r", "-o", str(ko), str(tmp_path / "patch.o")], check=True)
    convert_livepatch_relocations(ko, {"printk", "__fentry__", "__x86_return_thunk",
                                       *exported})
    linked = ElfObject.read(ko)
    # what the hook's MODULE_INFO(livepatch, "Y") gives a real module
    linked.sections.append(Section(name=".modinfo", flags=SHF_ALLOC, align=1,
                                   data=b"license=GPL\0livepatch=Y\0"))
    return linked


def test_tracepoint_sites_of_a_module_are_left_out_with_a_note(tmp_path):
    unit = generate(tmp_path)
    assert [f.old_name for f in unit.functions] == ["handle"]
    assert unit.object.section("__jump_table") is None
    assert unit.object.section(".static_call_sites") is None
    assert unit.notes == [
        "handle: tracepoint __tracepoint_demo (demo_mod) stays off in the patched function",
        "handle: static call __SCT__tp_func_demo (demo_mod) is called through its trampoline"]
    ko = link(tmp_path, unit)
    report = check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())
    # the trampoline call: resolved when demo_mod is patched, before the function runs
    assert report.functions == 1 and report.late_relocations == 1


def test_a_tracepoint_site_objtool_would_turn_off_is_turned_off(tmp_path):
    nop_define = MODULE[MODULE.index("#define BRANCH"):MODULE.index("int handle")]
    module = MODULE.replace(nop_define, JMP_BRANCH + "\n")
    unit = generate(tmp_path, module=module)
    assert unit.notes[0] == ("handle: tracepoint __tracepoint_demo (demo_mod) stays off in "
                             "the patched function")
    compiled = ElfObject.read(tmp_path / "patched.o").section(".text.handle").data
    emitted = unit.object.section(".text.handle").data
    changed = [i for i, (a, b) in enumerate(zip(compiled, emitted, strict=True)) if a != b]
    site = changed[0]  # the jmp became a NOP of its length; nothing else changed
    length = {0xeb: 2, 0xe9: 5}[compiled[site]]
    assert emitted[site:site + length] in (b"\x66\x90", b"\x0f\x1f\x44\x00\x00")
    assert changed[-1] < site + length
    ko = link(tmp_path, unit)
    assert check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols()).functions == 1


def test_a_tracepoint_site_that_starts_taken_is_refused(tmp_path):
    nop_define = MODULE[MODULE.index("#define BRANCH"):MODULE.index("int handle")]
    module = MODULE.replace(nop_define, JMP_BRANCH.replace("%c0 + 2", "%c0") + "\n")
    with pytest.raises(BuildError, match="needs a __jump_table entry for __tracepoint_demo"):
        generate(tmp_path, module=module)


def test_a_branch_on_a_module_key_is_refused_naming_function_and_key(tmp_path):
    with pytest.raises(BuildError) as err:
        generate(tmp_path, FEATURE)
    text = str(err.value)
    assert "handle" in text and "feature_key" in text and "demo_mod" in text
    assert "static_key_enabled" in text


def _late_jump_entry(ko: ElfObject) -> None:
    """What the builder used to emit: a jump entry whose key only livepatch resolves."""
    text = ko.section(".text.handle")
    table = Section(name="__jump_table", flags=SHF_ALLOC, data=bytes(16), align=8)
    ko.sections.append(table)
    key = next(s for s in ko.symbols if s.name.startswith(".klp.sym.demo_mod."))
    table.relocs = [Reloc(0, R_X86_64_PC32, ko.section_symbol(text), 0),
                    Reloc(4, R_X86_64_PC32, ko.section_symbol(text), 5)]
    rela = Section(name=".klp.rela.demo_mod.__jump_table", type=SHT_RELA,
                   flags=SHF_ALLOC | SHF_INFO_LINK | SHF_RELA_LIVEPATCH, align=8, entsize=24)
    ko.extra_relas.append((rela, table, [Reloc(8, R_X86_64_PC64, key, 0)]))


def test_check_refuses_what_crashed_the_kernel(tmp_path):
    ko = link(tmp_path, generate(tmp_path))
    _late_jump_entry(ko)
    with pytest.raises(BuildError) as err:
        check_module(ko, LAYOUT_6_1, [], lambda objname: Symbols())
    text = str(err.value)
    assert "__jump_table+0x8 refers to .klp.sym.demo_mod." in text
    assert "only when it patches demo_mod" in text


def test_check_refuses_nonzero_and_overlapping_relocation_sites(tmp_path):
    ko = link(tmp_path, generate(tmp_path))
    text = ko.section(".text.handle")
    rel = text.relocs[0]
    text.data = text.data[:rel.offset] + b"\x01" + text.data[rel.offset + 1:]
    text.relocs.append(Reloc(rel.offset + 2, rel.type, rel.symbol, 0))
    with pytest.raises(BuildError) as err:
        check_module(ko, LAYOUT_6_1, [], lambda objname: Symbols())
    assert "existing value is nonzero" in str(err.value)
    assert "two relocations overlap" in str(err.value)


def test_check_refuses_unresolvable_or_ambiguous_livepatch_symbols(tmp_path):
    unit = generate(tmp_path)
    ko = link(tmp_path, unit)

    class Twice(Symbols):
        def addresses(self, name: str) -> list[int]:
            return [0x1000, 0x2000]

    with pytest.raises(BuildError) as err:
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Twice())
    assert "occurs 2 times in demo_mod but has position 0" in str(err.value)

    class Empty(Symbols):
        def addresses(self, name: str) -> list[int]:
            return []

    with pytest.raises(BuildError) as err:
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Empty())
    assert "function handle is not in demo_mod's symbol table" in str(err.value)


def test_a_function_without_ftrace_entry_is_refused(tmp_path):
    old = MODULE.replace("FEATURE", "").replace("int handle(int v)",
                                                "__attribute__((no_instrument_function)) "
                                                "int handle(int v)")
    new = old.replace("v + 1", "v + 2")
    orig, patched = compile_c(tmp_path, "orig", old), compile_c(tmp_path, "patched", new)
    with pytest.raises(BuildError) as err:
        diff_unit(orig, patched, "kernel/trace/m.c", "demo_mod", LineMap())
    assert "handle has no ftrace entry" in str(err.value)


def test_check_refuses_a_module_that_depends_on_another(tmp_path):
    ko = link(tmp_path, generate(tmp_path))
    ko.section(".modinfo").data = b"license=GPL\0depends=mac80211\0livepatch=Y\0"
    with pytest.raises(BuildError, match="the module depends on mac80211: insmod fails"):
        check_module(ko, LAYOUT_6_1, [], lambda objname: Symbols())


# A function whose return is a return-thunk jump listed in .return_sites, as objtool
# writes it into a single-file module's object.
RETURN_MODULE = """\
extern int printk(const char *fmt, ...);

int handle(int v)
{
\tprintk("value %d\\n", v + 1);
\tasm volatile("3: jmp __x86_return_thunk\\n\\t"
\t\t".pushsection .return_sites, \\"a\\"\\n\\t.long 3b - .\\n\\t.popsection");
\treturn 0;
}
"""
LINKED_TABLES_6_12 = (".static_call_sites", ".retpoline_sites", ".return_sites",
                      ".call_sites", ".ibt_endbr_seal", ".cfi_sites", ".orc_unwind",
                      ".orc_unwind_ip", ".orc_header")  # what the probe finds on 6.12


class VmlinuxExports(Exports):
    """vmlinux exports these names too."""

    def __init__(self, exported: tuple[str, ...]) -> None:
        self.exported = exported

    def owner(self, name: str) -> str | None:
        return "vmlinux" if name in self.exported else super().owner(name)


def generate_return(tmp_path: Path, layout: Layout):
    return generate(tmp_path, module=RETURN_MODULE, layout=layout,
                    exports=VmlinuxExports(("__x86_return_thunk",)))


def test_objtool_tables_are_copied_only_where_objtool_annotates_each_object(tmp_path):
    unit = generate_return(tmp_path, LAYOUT_6_1)
    assert unit.object.section(".return_sites") is not None
    ko = link(tmp_path, unit)
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())

    # Where kbuild runs objtool on the linked module, a copied table would make objtool
    # skip the whole module's ("file already has .return_sites, skipping").
    layout = Layout(12, 16, 12, 12, 8, 6, 16, linked_tables=LINKED_TABLES_6_12)
    unit = generate_return(tmp_path, layout)
    assert unit.object.section(".return_sites") is None
    # ...and were objtool not to run, the check names the return nothing lists.
    ko = link(tmp_path, unit)
    with pytest.raises(BuildError, match=r"the return at \.text\.handle\+0x[0-9a-f]+ is not "
                                         r"listed in \.return_sites"):
        check_module(ko, layout, unit.functions, lambda objname: Symbols())


def test_check_refuses_code_without_unwind_entries(tmp_path):
    ko = link(tmp_path, generate(tmp_path))
    text = ko.section(".text.handle")
    ko.sections.append(Section(name=".orc_unwind_ip", flags=SHF_ALLOC, data=bytes(4), align=4))
    ko.sections[-1].relocs = [Reloc(0, R_X86_64_PC32, ko.section_symbol(text), 0)]
    check_module(ko, LAYOUT_6_1, [], lambda objname: Symbols())
    ko.sections.append(Section(name=".text.hook", flags=SHF_ALLOC | SHF_EXECINSTR,
                               data=b"\xc3", align=16))
    with pytest.raises(BuildError, match=r"\.text\.hook has no ORC unwind entries"):
        check_module(ko, LAYOUT_6_1, [], lambda objname: Symbols())


def test_linked_tables_are_what_only_the_single_file_module_has():
    def obj(*names):
        return SimpleNamespace(sections=[SimpleNamespace(name=n) for n in (".text", *names)])

    # 6.12 with IBT: objtool annotated the single-file module only; the compiler wrote
    # __mcount_loc in both (-mrecord-mcount), so it stays a table the patch object carries.
    assert linked_tables(obj(".return_sites", ".orc_unwind", "__mcount_loc"),
                         obj("__mcount_loc")) == LINKED_TABLES_6_12
    # objtool annotated both: every object carries its own tables.
    assert linked_tables(obj(".return_sites", ".orc_unwind"),
                         obj(".return_sites", ".orc_unwind")) == ()


# A module's function that calls a tracepoint vmlinux exports (EXPORT_TRACEPOINT_SYMBOL:
# its static call's key and trampoline), as static_call() compiles: the call to the
# trampoline, the key kept addressable for objtool, and, where objtool annotates each
# object (6.1), the site it wrote.
EXPORTED_CALL = """\
extern void __SCT__tp_func_demo(int);
extern char __SCK__tp_func_demo[];
extern int printk(const char *fmt, ...);
static void *key_ref __attribute__((section(".discard.addressable"), used)) =
\t&__SCK__tp_func_demo;

int handle(int v)
{
\tprintk("value %d\\n", v + 1);
\tasm volatile("2: call __SCT__tp_func_demo\\n\\t"
\t\t".pushsection .static_call_sites, \\"aw\\"\\n\\t"
\t\t".long 2b - ., KEY - .\\n\\t.popsection" : : "D"(v));
\treturn 0;
}
"""


class TrampolineKeys(Symbols):
    """vmlinux with a static_call_tramp_key table at 0x2000 listing `keyed` trampolines."""

    def __init__(self, keyed: dict[str, int]) -> None:
        self.keyed = keyed

    def addresses(self, name: str) -> list[int]:
        return {"__start_static_call_tramp_key": [0x2000],
                "__stop_static_call_tramp_key": [0x2000 + 8 * len(self.keyed)],
                "__SCT__tp_func_demo": [0x5000], "__SCK__tp_func_demo": [0x9000]}.get(
            name, [0x1000])

    def read(self, address: int, size: int) -> bytes:
        assert (address, size) == (0x2000, 8 * len(self.keyed))
        return b"".join((tramp - (0x2000 + 8 * i)).to_bytes(4, "little", signed=True)
                        + (0x7000 - (0x2004 + 8 * i)).to_bytes(4, "little", signed=True)
                        for i, tramp in enumerate(self.keyed.values()))


def test_a_called_trampoline_gets_its_exported_key_back_where_objtool_runs_on_link(tmp_path):
    """On 6.12 objtool writes the site at link; without `__SCK__X` in the object it names
    the trampoline, and insmod fails ("Failed to fixup __raw_static_call() usage")."""
    both = VmlinuxExports(("__SCT__tp_func_demo", "__SCK__tp_func_demo"))
    layout = Layout(12, 16, 12, 12, 8, 6, 16, linked_tables=LINKED_TABLES_6_12)
    module = EXPORTED_CALL.replace("KEY", "__SCT__tp_func_demo")
    unit = generate(tmp_path, module=module, layout=layout, exports=both)
    addressable = unit.object.section(".discard.addressable")
    assert [(r.type, r.symbol.name) for r in addressable.relocs] == [
        (R_X86_64_64, "__SCK__tp_func_demo")]
    # Where objtool annotated each object, its table is copied and names the key already.
    unit = generate(tmp_path, module=module, layout=LAYOUT_6_1, exports=both)
    assert unit.object.section(".discard.addressable") is None
    # A key vmlinux does not export (EXPORT_STATIC_CALL_TRAMP) cannot be named: the kernel
    # finds it from the trampoline.
    unit = generate(tmp_path, module=module, layout=layout,
                    exports=VmlinuxExports(("__SCT__tp_func_demo",)))
    assert unit.object.section(".discard.addressable") is None


def test_check_refuses_a_trampoline_key_the_kernel_cannot_look_up(tmp_path):
    exports = VmlinuxExports(("__SCT__tp_func_demo", "__SCK__tp_func_demo"))
    unit = generate(tmp_path, module=EXPORTED_CALL.replace("KEY", "__SCT__tp_func_demo"),
                    exports=exports)
    ko = link(tmp_path, unit, exports.exported)
    check_module(ko, LAYOUT_6_1, unit.functions,
                 lambda objname: TrampolineKeys({"__SCT__tp_func_demo": 0x5000}))
    with pytest.raises(BuildError, match=r"static call site 0 names the trampoline "
                                         r"__SCT__tp_func_demo as its key, and the kernel "
                                         r"has no key for it"):
        check_module(ko, LAYOUT_6_1, unit.functions,
                     lambda objname: TrampolineKeys({"__SCT__other": 0x6000}))
    # The same site naming the key: nothing to look up.
    unit = generate(tmp_path, module=EXPORTED_CALL.replace("KEY", "__SCK__tp_func_demo"),
                    exports=exports)
    check_module(link(tmp_path, unit, exports.exported), LAYOUT_6_1, unit.functions,
                 lambda objname: TrampolineKeys({}))


class ReadOnlyKeys(KeyTypes):
    """vmlinux whose __ro_after_init data spans 0x8000-0x9000; `sealed`: the kernel seals
    such keys at boot (6.12's jump_label_init_ro)."""

    def __init__(self, key_at: int, sealed: bool = False) -> None:
        super().__init__()
        self.at = {"__start_ro_after_init": [0x8000], "__end_ro_after_init": [0x9000],
                   "feature_key": [key_at]}
        if sealed:
            self.at["jump_label_init_ro"] = [0x3000]

    def addresses(self, name: str) -> list[int]:
        return self.at.get(name, [] if name == "jump_label_init_ro" else [0x1000])


def test_check_refuses_a_branch_on_a_read_only_key_where_the_kernel_would_write_it(tmp_path):
    """6.1 links a module into every vmlinux key its branches use, a write: on a key that
    is read-only after boot (DEFINE_STATIC_KEY_FALSE_RO, mm/usercopy.c's
    bypass_usercopy_checks) that faults at insmod."""
    unit = generate(tmp_path, feature=FEATURE, target="vmlinux")
    ko = link(tmp_path, unit)
    assert ".klp.sym.vmlinux.feature_key,0" in {s.name for s in ko.symbols}
    with pytest.raises(BuildError, match=r"a jump label uses static key feature_key, which "
                                         r"is read-only after boot"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: ReadOnlyKeys(0x8800))
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: ReadOnlyKeys(0x9800))
    check_module(ko, LAYOUT_6_1, unit.functions,
                 lambda objname: ReadOnlyKeys(0x8800, sealed=True))


def test_check_refuses_what_livepatch_would_not_enable(tmp_path):
    unit = generate(tmp_path)
    ko = link(tmp_path, unit)
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())
    with pytest.raises(BuildError, match="function handle of demo_mod is patched twice"):
        check_module(ko, LAYOUT_6_1, unit.functions * 2, lambda objname: Symbols())
    ko.section(".modinfo").data = b"license=GPL\0"
    with pytest.raises(BuildError, match="lacks modinfo livepatch=Y"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())


class InitSymbols(KeyTypes):
    def addresses(self, name: str) -> list[int]:
        return {"__init_begin": [0x4000], "__init_end": [0x6000],
                "feature_key": [0x5000]}.get(name, [0x1000])


def test_check_refuses_a_reference_to_vmlinux_init_memory(tmp_path):
    unit = generate(tmp_path, feature=FEATURE, target="vmlinux")
    with pytest.raises(BuildError, match="refers to feature_key, init code or data of "
                                         "vmlinux, freed after boot"):
        check_module(link(tmp_path, unit), LAYOUT_6_1, unit.functions,
                     lambda objname: InitSymbols())


def test_a_kernel_that_keeps_module_relocations_written_gets_a_reload_note():
    from builder.pipeline import _reload_notes

    class Kernel:
        def __init__(self, *names):
            self.names = names

        def addresses(self, name):
            return [0x1000] if name in self.names else []

    sections = [".klp.rela.vmlinux..text.a", ".klp.rela.nfsd..text.nfsd_open",
                ".klp.rela.nfsd..rodata"]
    assert _reload_notes(sections, Kernel()) == [
        "nfsd: once unloaded, nfsd cannot be loaded again while this patch is loaded (this "
        "kernel's livepatch leaves its relocations written); remove the patch before "
        "reloading nfsd"]
    assert _reload_notes(sections, Kernel("clear_relocate_add")) == []  # 6.6 and later
    assert _reload_notes(sections[:1], Kernel()) == []


def test_check_refuses_partial_table_entries_and_unpaired_unwind_tables(tmp_path):
    unit = generate(tmp_path, feature=FEATURE, target="vmlinux")
    ko = link(tmp_path, unit)
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: KeyTypes())
    table = ko.section("__jump_table")
    table.data += bytes(4)
    with pytest.raises(BuildError, match=r"__jump_table is 36 bytes, not a whole number of "
                                         r"16-byte entries"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: KeyTypes())
    table.data = table.data[:-4]
    text = ko.section(".text.handle")
    ko.sections.append(Section(name=".orc_unwind_ip", flags=SHF_ALLOC, data=bytes(8), align=4,
                               relocs=[Reloc(i * 4, R_X86_64_PC32, ko.section_symbol(text), i)
                                       for i in range(2)]))
    ko.sections.append(Section(name=".orc_unwind", flags=SHF_ALLOC, data=bytes(6), align=2))
    with pytest.raises(BuildError, match=r"\.orc_unwind_ip has 2 entries but \.orc_unwind 1"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: KeyTypes())


def test_check_refuses_a_static_call_whose_entry_and_instruction_disagree(tmp_path):
    exports = VmlinuxExports(("__SCT__tp_func_demo", "__SCK__tp_func_demo"))
    unit = generate(tmp_path, module=EXPORTED_CALL.replace("KEY", "__SCK__tp_func_demo"),
                    exports=exports)
    ko = link(tmp_path, unit, exports.exported)
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: TrampolineKeys({}))
    key = next(r for r in ko.section(".static_call_sites").relocs if r.offset == 4)
    key.addend |= 1  # "tail call", at a call instruction
    with pytest.raises(BuildError, match=r"static call at \.text\.handle\+0x[0-9a-f]+ is a "
                                         r"call but its entry says tail call"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: TrampolineKeys({}))


def test_a_module_position_must_name_the_same_copy_while_loading_and_once_live(tmp_path):
    """Two static helper()s in one module, the first in .init.text: livepatch counts it
    while the module loads, not once it is live, so position 2 would name another copy
    (or none) depending on which of patch and module loads first."""
    from builder.stages.check import _check_position, _Problems
    from builder.symbols import ModuleImage

    (tmp_path / "a.c").write_text(
        "static __attribute__((section(\".init.text\"), noinline)) int helper(void)\n"
        "{ return 1; }\nint use_a(void) { return helper(); }\n")
    (tmp_path / "b.c").write_text(
        "static __attribute__((noinline)) int helper(void) { return 2; }\n"
        "int use_b(void) { return helper(); }\n")
    for name in ("a", "b"):
        subprocess.run(["gcc", *CFLAGS, "-c", "-o", str(tmp_path / f"{name}.o"),
                        str(tmp_path / f"{name}.c")], check=True)
    subprocess.run(["ld", "-r", "-o", str(tmp_path / "m.ko"), str(tmp_path / "a.o"),
                    str(tmp_path / "b.o")], check=True)
    image = ModuleImage(tmp_path / "m.ko")
    assert len(image.addresses("helper")) == 2 and len(image.live_positions("helper")) == 1

    def problems(pos: int) -> list[str]:
        found = _Problems()
        _check_position("m", "helper", pos, lambda objname: image, found, "function")
        return found.items

    assert problems(1) == ["function helper (position 1) is in m's init code or data, freed "
                           "once the module is live"]
    assert problems(2) == ["function helper is copy 2 of m while it loads but copy 1 once it "
                           "is live (a copy in its init code comes first): livepatch would "
                           "resolve another copy depending on which loads first"]


def test_check_refuses_a_return_site_that_is_not_a_return_thunk_jump(tmp_path):
    unit = generate_return(tmp_path, LAYOUT_6_1)
    ko = link(tmp_path, unit)
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())
    site = ko.section(".return_sites").relocs[0]
    site.addend -= 1  # the entry now points one byte before the jump
    with pytest.raises(BuildError, match=r"\.return_sites lists \.text\.handle\+0x[0-9a-f]+, "
                                         r"which is not a jump to __x86_return_thunk"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())


def test_check_refuses_an_ftrace_site_that_is_not_a_call_to_fentry(tmp_path):
    unit = generate(tmp_path)
    ko = link(tmp_path, unit)
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())
    site = ko.section("__mcount_loc").relocs[0]
    site.addend += 1  # the entry now points into the call
    with pytest.raises(BuildError, match=r"__mcount_loc lists \.text\.\w+\+0x1, which is not "
                                         r"a call to __fentry__: ftrace fails on it"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())


# An indirect call through a retpoline thunk, CS-prefixed and listed as objtool lists it.
RETPOLINE_MODULE = """\
extern int printk(const char *fmt, ...);

int handle(int v)
{
\tprintk("value %d\\n", v + 1);
\tasm volatile("4: .byte 0x2e\\n\\tcall __x86_indirect_thunk_rax\\n\\t"
\t\t".pushsection .retpoline_sites, \\"a\\"\\n\\t.long 4b - .\\n\\t.popsection");
\treturn 0;
}
"""


def test_check_refuses_a_retpoline_site_that_is_not_a_thunk_call(tmp_path):
    unit = generate(tmp_path, module=RETPOLINE_MODULE,
                    exports=VmlinuxExports(("__x86_indirect_thunk_rax",)))
    ko = link(tmp_path, unit, exported=("__x86_indirect_thunk_rax",))
    assert len(ko.section(".retpoline_sites").relocs) == 1
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())
    ko.section(".retpoline_sites").relocs[0].addend -= 1
    with pytest.raises(BuildError, match=r"\.retpoline_sites lists \.text\.handle\+0x[0-9a-f]+, "
                                         r"which is not a call or jump to an "
                                         r"__x86_indirect_thunk_\* thunk"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: Symbols())


def test_check_refuses_a_jump_label_that_starts_against_its_key(tmp_path):
    unit = generate(tmp_path, FEATURE, target="vmlinux")  # NOP sites, branch bit clear
    ko = link(tmp_path, unit)
    check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: KeyTypes(on=False))
    with pytest.raises(BuildError, match=r"jump label at \.text\.handle\+0x[0-9a-f]+ starts as "
                                         r"a NOP, but its key feature_key \(on by default: "
                                         r"True\) and branch say jump: the kernel would BUG"):
        check_module(ko, LAYOUT_6_1, unit.functions, lambda objname: KeyTypes(on=True))
