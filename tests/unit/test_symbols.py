# SPDX-License-Identifier: GPL-3.0-or-later
"""Shipped-kernel knowledge and the verify stage, on tiny objects built with the host gcc."""

from __future__ import annotations

import lzma
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from builder.artifacts import CompiledUnit
from builder.elf import ElfObject
from builder.errors import BuildError
from builder.stages.verify import mask, object_functions, verify
from builder.symbols import (
    Exports,
    KSymbol,
    ModuleImage,
    VmlinuxImage,
    extract_vmlinux,
    find_module,
    reloc_size,
)

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("ld") is None,
                               reason="needs gcc and ld")
# Kernel-like code generation: absolute addresses in 32-bit sign-extended form, no
# padding before jump targets (arch/x86/Makefile), one section per function (as the
# builder compiles originals).
CFLAGS = ["-O2", "-fno-pic", "-mcmodel=kernel", "-ffunction-sections", "-fdata-sections",
          "-fno-asynchronous-unwind-tables", "-mno-red-zone", "-fno-inline",
          "-falign-jumps=1", "-falign-loops=1"]

SOURCE = """\
extern int counter;
extern int report(const char *what, int value);

int scaled(int x)
{
\tcounter += x;
\treturn report("scaled", x * %(factor)d) + counter;
}

static int helper(int x)
{
\treturn report("helper", x + %(add)d);
}

int use_helper(int x)
{
\treturn helper(x) * 3;
}
"""
SUPPORT = """\
int counter;
int report(const char *what, int value) { return value + (what[0] == 's'); }
void _start(void) { }
"""


def _cc(tmp: Path, name: str, text: str, extra: list[str] | None = None) -> Path:
    src = tmp / f"{name}.c"
    src.write_text(text)
    obj = tmp / f"{name}.o"
    subprocess.run(["gcc", *CFLAGS, *(extra or []), "-c", str(src), "-o", str(obj)], check=True)
    return obj


def _unit(obj: Path, target: str = "vmlinux") -> CompiledUnit:
    return CompiledUnit(source="fixture.c", object_name="fixture.o", target_object=target,
                        original=obj, patched=obj)


def _verify(obj: Path, functions: list[str], image, target: str = "vmlinux"):
    """The verify stage on one object, parsed here as the diff stage parses it."""
    return verify(_unit(obj, target), ElfObject.read(obj), functions, image)


def _linked_image(tmp: Path, objs: list[Path], letters: dict[str, str] | None = None
                  ) -> VmlinuxImage:
    """Link like vmlinux: relocations resolved, so reloc sites hold real values. The
    symbols are listed as kallsyms lists them (by address), with a letter per ELF type
    (functions only unless `letters` says more; upper case for globals)."""
    letters = letters or {"STT_FUNC": "t"}
    exe = tmp / "vmlinux"
    subprocess.run(["ld", "-static", "-e", "_start", "-Ttext=0x1000000", "-o", str(exe),
                    *map(str, objs)], check=True)
    symbols = []
    with open(exe, "rb") as fh:
        for sym in ELFFile(fh).get_section_by_name(".symtab").iter_symbols():
            letter = letters.get(sym["st_info"]["type"])
            if letter and sym.name:
                if sym["st_info"]["bind"] != "STB_LOCAL":
                    letter = letter.upper()
                symbols.append(KSymbol(sym.name, sym["st_value"], letter))
    symbols.sort(key=lambda s: s.address)
    return VmlinuxImage(exe, symbols)


# ---------------------------------------------------------------- exports
SYMVERS = (
    "0x1b2e9b0a\tseq_puts\tvmlinux\tEXPORT_SYMBOL\t\n"
    "0x11223344\tusb_stor_probe1\tdrivers/usb/storage/usb-storage\tEXPORT_SYMBOL_GPL\tUSB_STORAGE\n"
    "0x00000001\t__register_binfmt\tvmlinux\tEXPORT_SYMBOL\t\n"
    "garbage line\n"
)


def test_exports_from_module_symvers():
    exports = Exports.parse(SYMVERS)
    assert len(exports) == 3
    assert exports.is_exported("seq_puts") and not exports.is_exported("saved_command_line")
    assert exports.owner("seq_puts") == "vmlinux"
    assert exports.owner("usb_stor_probe1") == "usb_storage"  # module names use '_'
    assert exports.owner("saved_command_line") is None
    assert exports.namespace("usb_stor_probe1") == "USB_STORAGE"
    assert exports.namespace("seq_puts") == ""
    assert exports.get("seq_puts").crc == 0x1B2E9B0A
    assert "__register_binfmt" in exports.exported_names()


def test_reloc_sizes():
    assert reloc_size(1) == 8  # R_X86_64_64
    assert [reloc_size(t) for t in (2, 4, 10, 11)] == [4, 4, 4, 4]  # PC32 PLT32 32 32S


def test_sealed_endbr_counts_as_endbr(tmp_path):
    from builder.stages.verify import ObjectFunction, compare

    class Image:  # the shipped bytes: objtool sealed the ENDBR
        def read(self, address, size, at_most=False):
            return (bytes.fromhex("0f1f40d6") + b"\x90\xc3")[:size]

    fn = ObjectFunction("f", bytes.fromhex("f30f1efa") + b"\x90\xc3", [])
    assert compare(fn, Image(), 0).difference is None
    other = ObjectFunction("f", bytes.fromhex("f30f1efa") + b"\x91\xc3", [])
    assert compare(other, Image(), 0).difference == 4


def test_mask_zeroes_only_relocation_sites():
    assert mask(b"\xe8\x01\x02\x03\x04\xc3", [(1, 4)]) == b"\xe8\x00\x00\x00\x00\xc3"
    assert mask(b"\xaa\xbb", [(1, 8)]) == b"\xaa\x00"  # clipped at the end


# ---------------------------------------------------------------- vmlinux
def test_extract_vmlinux_finds_the_compressed_elf(tmp_path):
    elf = b"\x7fELF" + bytes(range(256)) * 8
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    vmlinuz = tmp_path / "vmlinuz"
    # setup code containing a false XZ magic first, then the real stream, then padding
    vmlinuz.write_bytes(b"MZ" + b"\xfd7zXZ\x00junk" + b"\x00" * 100 + payload + b"\x00" * 64)
    assert extract_vmlinux(vmlinuz) == elf
    vmlinuz.write_bytes(b"MZ no kernel here")
    with pytest.raises(BuildError, match="no compressed ELF kernel"):
        extract_vmlinux(vmlinuz)


def test_extract_vmlinux_lz4_legacy_as_cloud_kernels_use(tmp_path):
    lz4_block = pytest.importorskip("lz4.block")
    elf = b"\x7fELF" + bytes(range(256)) * 64
    chunks = [elf[:8000], elf[8000:]]  # two blocks, as the kernel's 8 MiB chunks
    stream = b"\x02\x21\x4c\x18"
    for chunk in chunks:
        block = lz4_block.compress(chunk, store_size=False)
        stream += len(block).to_bytes(4, "little") + block
    stream += len(elf).to_bytes(4, "little")  # kbuild's trailing size word
    vmlinuz = tmp_path / "vmlinuz"
    vmlinuz.write_bytes(b"MZ setup" + stream)
    assert extract_vmlinux(vmlinuz) == elf


def test_sympos_is_kallsyms_order(tmp_path):
    exe = tmp_path / "x"
    exe.write_bytes(_minimal_elf())
    image = VmlinuxImage(exe, [KSymbol("dup", 0x10, "t"), KSymbol("uniq", 0x20, "T"),
                               KSymbol("dup", 0x30, "t")])
    assert image.positions("dup") == [0x10, 0x30]
    assert image.sympos("dup", 0x10) == 1 and image.sympos("dup", 0x30) == 2
    assert image.sympos("uniq", 0x20) == 0
    assert image.exists("uniq") and not image.exists("nope")
    with pytest.raises(BuildError):
        image.sympos("dup", 0x20)


def _minimal_elf() -> bytes:
    """An ELF64 header with no segments (enough for the symbol-table-only tests)."""
    import struct

    ident = b"\x7fELF\x02\x01\x01" + b"\x00" * 9
    return ident + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 0, 0, 0, 64, 56, 0, 64, 0, 0)


@needs_gcc
def test_verify_matches_outside_relocations_and_reports_the_first_difference(tmp_path):
    orig = _cc(tmp_path, "fixture", SOURCE % {"factor": 3, "add": 1})
    support = _cc(tmp_path, "support", SUPPORT)
    image = _linked_image(tmp_path, [orig, support])
    # Linking filled every relocation site: the bytes match only with masking.
    available = object_functions(ElfObject.read(orig))
    fn = available["scaled"]
    assert fn.relocs, "the fixture must have relocations"
    raw = image.read(image.positions("scaled")[0], len(fn.code))
    assert raw != fn.code and mask(raw, fn.relocs) == mask(fn.code, fn.relocs)
    results = _verify(orig, ["scaled", "use_helper", "helper"], image)
    sizes = {name: len(f.code) for name, f in available.items()}
    assert [(r.name, r.sympos, r.size) for r in results] == [
        ("scaled", 0, len(fn.code)), ("use_helper", 0, sizes["use_helper"]),
        ("helper", 0, sizes["helper"])]
    assert all(r.masked > 0 for r in results)

    # The "shipped" kernel was built from other source: refused, with the offset.
    other = tmp_path / "other"
    other.mkdir()
    changed = _cc(other, "fixture", SOURCE % {"factor": 5, "add": 1})
    with pytest.raises(BuildError) as err:
        _verify(changed, ["scaled"], image)
    text = str(err.value)
    assert "scaled" in text and "differs from the shipped vmlinux at offset 0x" in text
    assert "source package version, compiler or config" in text


@needs_gcc
def test_verify_refuses_functions_missing_from_the_shipped_kernel(tmp_path):
    orig = _cc(tmp_path, "fixture", SOURCE % {"factor": 3, "add": 1})
    support = _cc(tmp_path, "support", SUPPORT)
    image = _linked_image(tmp_path, [orig, support])
    image = VmlinuxImage(image.path, [s for s in image.symbols if s.name != "helper"])
    with pytest.raises(BuildError, match="inlined"):
        _verify(orig, ["helper"], image)
    with pytest.raises(BuildError, match="not a function of the rebuilt"):
        _verify(orig, ["no_such_function"], image)


# ---------------------------------------------------------------- modules
@needs_gcc
def test_module_image_symtab_order_sympos_and_own_relocations(tmp_path):
    one = _cc(tmp_path, "one", SOURCE % {"factor": 3, "add": 1})
    two_dir = tmp_path / "two"
    two_dir.mkdir()
    two = _cc(two_dir, "two", (SOURCE % {"factor": 3, "add": 2})
              .replace("scaled", "scaled2").replace("use_helper", "use_helper2"))
    modinfo = tmp_path / "modinfo.o"
    modinfo_src = tmp_path / "modinfo.c"
    modinfo_src.write_text('__attribute__((section(".modinfo"), used)) '
                           'static const char n[] = "license=GPL\\0depends=sunrpc,nfs-acl\\0'
                           'name=fix_mod";\n')
    subprocess.run(["gcc", "-c", str(modinfo_src), "-o", str(modinfo)], check=True)
    mods = tmp_path / "lib/modules/6.1.0-56-amd64/kernel/fs"
    mods.mkdir(parents=True)
    ko = mods / "fix-mod.ko"
    subprocess.run(["ld", "-r", "-o", str(ko), str(one), str(two), str(modinfo)], check=True)

    assert find_module(tmp_path / "lib/modules", "fix_mod") == ko
    with pytest.raises(BuildError, match="not in"):
        find_module(tmp_path / "lib/modules", "absent")
    module = ModuleImage(ko)
    assert module.name == "fix_mod"
    assert module.depends == {"sunrpc", "nfs_acl"}
    helpers = module.positions("helper")
    assert len(helpers) == 2  # two static helpers, in symtab order
    assert [module.sympos("helper", a) for a in helpers] == [1, 2]
    assert module.reloc_offsets("scaled")  # the .ko's own relocation sites

    # Each object's helper matches exactly one of the two (the immediates differ).
    first = _verify(one, ["helper", "scaled"], module, "fix_mod")
    assert [(r.name, r.sympos) for r in first] == [("helper", 1), ("scaled", 0)]
    second = _verify(two, ["helper"], module, "fix_mod")
    assert [(r.name, r.sympos) for r in second] == [("helper", 2)]


@needs_gcc
def test_identical_same_named_functions_are_ambiguous(tmp_path):
    one = _cc(tmp_path, "one", SOURCE % {"factor": 3, "add": 1})
    (tmp_path / "b").mkdir()
    two = _cc(tmp_path / "b", "two", (SOURCE % {"factor": 3, "add": 1})
              .replace("scaled", "scaled2").replace("use_helper", "use_helper2"))
    ko = tmp_path / "dup.ko"
    subprocess.run(["ld", "-r", "-o", str(ko), str(one), str(two)], check=True)
    with pytest.raises(BuildError, match="2 identical copies of helper"):
        _verify(one, ["helper"], ModuleImage(ko), "dup")


def test_identical_copies_are_told_apart_by_their_place(tmp_path):
    """Two files with the same static helper (a static inline of a header, say)."""
    from builder.stages.verify import ObjectFunction, verify_function

    code = bytes.fromhex("8d047fc3")  # lea eax,[rdi+rdi*2]; ret
    (tmp_path / "x").write_bytes(_minimal_elf())
    image = VmlinuxImage(tmp_path / "x", [KSymbol("helper", 0x1000, "t"),
                                          KSymbol("other_file_fn", 0x1040, "t"),
                                          KSymbol("helper", 0x90000, "t"),
                                          KSymbol("this_file_fn", 0x90040, "T")])
    image.read = lambda address, size, at_most=False: code[:size]  # both copies: same bytes
    fn = ObjectFunction("helper", code, [])
    found = verify_function(_unit(tmp_path / "f.o"), fn, image, ["this_file_fn"])
    assert (found.address, found.sympos) == (0x90000, 2)
    with pytest.raises(BuildError, match="none lies clearly nearer"):
        verify_function(_unit(tmp_path / "f.o"), fn, image, ["not_in_kallsyms"])


@pytest.mark.parametrize(("rebuilt", "shipped", "accepted"), [
    ("eb5a", "6690", True),              # 6.12: objtool NOPs the site at vmlinux link
    ("e910000000", "0f1f440000", True),  # the 5-byte forms
    ("6690", "6690", True),
    ("eb5a", "9090", False),             # not the kernel's 2-byte NOP
    ("eb5a", "0f1f440000", False),       # another size is another site
])
def test_jump_label_sites_accept_exactly_their_two_forms(tmp_path, rebuilt, shipped, accepted):
    from builder.stages.verify import ObjectFunction, compare

    head, tail = bytes.fromhex("55"), bytes.fromhex("5dc3")
    site = bytes.fromhex(rebuilt)
    fn = ObjectFunction("f", head + site + tail, [], jump_labels=[1])
    shipped_code = head + bytes.fromhex(shipped) + tail

    class Image:
        name = "vmlinux"

        def read(self, address, size, at_most=False):
            return (shipped_code + bytes(8))[:size]

    difference = compare(fn, Image(), 0).difference
    assert (difference is None) == accepted


TAIL_CALL = """\
extern int report(const char *what, int value);

__attribute__((noinline)) int lookup(int x)
{
\treturn report("lookup", x) + 1;
}

__attribute__((noinline)) int other(int x)
{
\treturn report("other", x) - 1;
}

int lookup_wrapper(int x)
{
\treturn lookup(x);
}

int dispatch(int x)
{
\tif (x > 3)
\t\treturn lookup(x);
\tif (x < -3)
\t\treturn other(x);
\treturn report("dispatch", x);
}

int guarded(int x)
{
\tif (__builtin_expect(x > 0, 1))
\t\treturn lookup(x);
\treturn report(0, x);
}
"""


@needs_gcc
def test_tail_calls_the_shipped_kernel_encoded_short_are_the_same_function(tmp_path):
    from builder.stages.verify import compare

    # The shipped kernel's objects have one .text: the assembler wrote a tail call to a
    # near function of the same file as `jmp rel8`. The builder's -ffunction-sections
    # object must use `jmp rel32` with a relocation (6.1's irq_from_evtchn); in the
    # middle of a function that moves the rest, and the branches over it (handle_sysrq).
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    shipped = _cc(shipped_dir, "fixture", TAIL_CALL, ["-fno-function-sections"])
    image = _linked_image(shipped_dir, [shipped, _cc(shipped_dir, "support", SUPPORT)])
    rebuilt = _cc(tmp_path, "fixture", TAIL_CALL)
    functions = object_functions(ElfObject.read(rebuilt))
    for name in ("lookup_wrapper", "dispatch"):
        shipped_code = image.read(image.positions(name)[0], len(functions[name].code))
        assert shipped_code != functions[name].code and 0xEB in shipped_code
        assert "lookup" in functions[name].function_sites.values()
        assert compare(functions[name], image, image.positions(name)[0]).realigned
    assert [r.name for r in _verify(rebuilt, ["lookup_wrapper", "dispatch"], image)] == \
        ["lookup_wrapper", "dispatch"]


@needs_gcc
def test_tail_calls_a_shipped_module_encoded_short_are_the_same_function(tmp_path):
    # In a module the shipped object keeps its own relocations (the call to report()),
    # at the shipped code's offsets: after a shorter jump they no longer line up with
    # the rebuilt code's (6.1's nfsd4_lm_put_owner in nfsd.ko).
    shipped_dir = tmp_path / "shipped"
    shipped_dir.mkdir()
    shipped = _cc(shipped_dir, "fixture", TAIL_CALL, ["-fno-function-sections"])
    ko = shipped_dir / "tail-mod.ko"
    subprocess.run(["ld", "-r", "-o", str(ko), str(shipped)], check=True)
    module = ModuleImage(ko)
    assert module.reloc_offsets("guarded"), "the fixture needs the module's own relocations"
    rebuilt = _cc(tmp_path, "fixture", TAIL_CALL)
    names = ["lookup_wrapper", "dispatch", "guarded"]
    assert [r.name for r in _verify(rebuilt, names, module, module.name)] == names


def test_a_short_jump_to_another_function_still_differs():
    from builder.stages.verify import ObjectFunction, compare

    class Image:  # `jmp rel8` from 0 lands at 0x2 - 0x10 = -0xe: not `lookup` at -0x20
        name = "vmlinux"

        def read(self, address, size, at_most=False):
            return (bytes.fromhex("ebf0") + bytes(8))[:size]

        def positions(self, name):
            return [-0x20] if name == "lookup" else []

    fn = ObjectFunction("f", bytes.fromhex("e900000000"), [(1, 4)],
                        function_sites={1: "lookup"})
    assert compare(fn, Image(), 0).difference == 0


@needs_gcc
def test_referenced_value_reads_back_what_the_linker_or_the_ko_resolved(tmp_path):
    from builder.elf import ElfObject

    one = _cc(tmp_path, "one", SOURCE % {"factor": 3, "add": 1})
    support = _cc(tmp_path, "support", SUPPORT)
    image = _linked_image(tmp_path, [one, support])
    with open(tmp_path / "vmlinux", "rb") as fh:
        counter = next(s["st_value"] for s in ELFFile(fh).get_section_by_name(".symtab")
                       .iter_symbols() if s.name == "counter")
    obj = ElfObject.read(one)
    scaled = obj.symbol("scaled")
    uses = [r for r in scaled.section.relocs if r.symbol.name == "counter"]
    assert uses
    start = image.positions("scaled")[0]
    for rel in uses:  # PC-relative or absolute, the field gives back S + A
        assert image.referenced_value(start + rel.offset - scaled.value, rel.type) == \
            counter + rel.addend

    ko = tmp_path / "m.ko"
    subprocess.run(["ld", "-r", "-o", str(ko), str(one)], check=True)
    module = ModuleImage(ko)
    caller = obj.symbol("use_helper")
    helper = obj.symbol("helper")  # its own section, at offset 0: named or by section
    call = next(r for r in caller.section.relocs if r.symbol.section is helper.section)
    site = module.positions("use_helper")[0] + call.offset - caller.value
    assert module.referenced_value(site, call.type) == module.positions("helper")[0] + call.addend
    counter_use = module.positions("scaled")[0] + uses[0].offset - scaled.value
    assert module.referenced_value(counter_use, uses[0].type) is None  # undefined here


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_all_depends_follows_modinfo_depends_through_every_module(tmp_path):
    from builder.symbols import all_depends

    modules = {"mt76_usb": "mt76,usbcore", "mt76": "mac80211", "mac80211": "cfg80211",
               "cfg80211": "", "usbcore": "", "unrelated": "mac80211"}
    for name, depends in modules.items():
        source = tmp_path / f"{name}.c"
        source.write_text(f'const char info[] __attribute__((section(".modinfo"))) = '
                          f'"depends={depends}";\n')
        folder = tmp_path / "kernel" / ("net" if "mac" in name else "drivers")
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-c", "-o", str(folder / f"{name.replace('_', '-')}.ko"),
                        str(source)], check=True)
    # mt76-usb calls mac80211 directly after a fix, but only mt76 and usbcore are its own
    assert all_depends(tmp_path / "kernel", frozenset({"mt76", "usbcore"})) == {
        "mt76", "usbcore", "mac80211", "cfg80211"}


def test_a_read_may_stop_where_its_section_ends():
    # A rebuilt function with 5-byte jumps is longer than the shipped one; the last
    # function of a module's .text then reaches past the section (xen_pciback).
    from builder.symbols import _read_region

    data = bytes(range(16))
    assert _read_region(data, [(0x1000, 0, 16)], 0x1008, 16, at_most=True) == data[8:]
    assert _read_region(data, [(0x1000, 0, 16)], 0x1008, 16, at_most=False) is None
    assert _read_region(data, [(0x1000, 0, 16)], 0x1010, 4, at_most=True) is None


def test_kallsyms_reads_in_threads_leave_stdout_alone(monkeypatch, tmp_path):
    """vmlinux-to-elf prints; an update's unit threads read kallsyms at the same time.

    Two overlapping stdout swaps that end first-in-first-out once left sys.stdout on a
    StringIO, and an update's result line was lost (exit 0, nothing printed).
    """
    import sys
    import threading
    import types

    from builder import symbols

    second_inside, first_done = threading.Event(), threading.Event()
    entered = []

    class ChattyFinder:
        def __init__(self, _data, _bits):
            print("progress chatter")
            entered.append(self)
            if len(entered) == 1:  # the first reader leaves first, once the second is in
                second_inside.wait(timeout=1)
                first_done.set()
            else:
                second_inside.set()
                first_done.wait(timeout=1)
            self.symbols = [types.SimpleNamespace(name=f"f{i}", virtual_address=i,
                                                  symbol_type=None, is_global=True)
                            for i in range(1000)]

    fake = types.ModuleType("vmlinux_to_elf.core.kallsyms")
    fake.KallsymsFinder = ChattyFinder
    monkeypatch.setitem(sys.modules, "vmlinux_to_elf.core.kallsyms", fake)
    image = tmp_path / "vmlinux"
    image.write_bytes(b"")
    before = sys.stdout
    threads = [threading.Thread(target=symbols.read_kallsyms, args=(image,)),
               threading.Thread(target=symbols.read_kallsyms, args=(image,))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sys.stdout is before
