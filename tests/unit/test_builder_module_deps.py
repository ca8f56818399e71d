# SPDX-License-Identifier: GPL-3.0-or-later
"""A patch to a module that calls another module's exports (nfsd calling sunrpc): the
patch module must not need that module at insmod; livepatch resolves the symbols when the
patched module loads, after its dependencies — and only then."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from builder.errors import BuildError
from builder.stages.check import _loaded_before
from builder.stages.diff import diff_unit
from builder.stages.generate import generate_unit
from builder.stages.link import _home
from tests.unit.test_builder_diff import BASE, LAYOUT_6_1, Symbols, build, line_map


class ModuleExports:
    """report() is exported by the module sunrpc, printk by vmlinux."""

    def owner(self, name: str) -> str | None:
        return {"report": "sunrpc", "printk": "vmlinux", "__fentry__": "vmlinux"}.get(name)

    def namespace(self, name: str) -> str:
        return ""


class NfsdSymbols(Symbols):
    def __init__(self, depends: frozenset[str]) -> None:
        self.depends = depends


def generated(tmp_path, depends: frozenset[str]):
    new = BASE.replace('report("f.c", __LINE__);', 'report("f.c", 7);')
    orig, patched = build(tmp_path, "orig", BASE), build(tmp_path, "patched", new)
    diff = diff_unit(orig, patched, "f.c", "nfsd", line_map(BASE, new))
    return generate_unit(diff, NfsdSymbols(depends), ModuleExports(),
                         prefix="u0", layout=LAYOUT_6_1)


def test_an_export_of_a_dependency_is_a_livepatch_symbol_of_that_module(tmp_path):
    unit = generated(tmp_path, frozenset({"sunrpc"}))
    assert ".klp.sym.sunrpc.report,0" in unit.klp_symbols
    assert not any(s.name == "report" and s.section is None for s in unit.object.symbols)


def test_an_export_of_a_module_that_is_no_dependency_is_refused(tmp_path):
    # A normal reference would make the patch module depend on sunrpc: insmod fails
    # wherever sunrpc is not loaded (mac80211 for mt76_usb on Debian 12's 6.12 update).
    with pytest.raises(BuildError, match="calls report, exported by module sunrpc, which "
                                         "nfsd does not depend on"):
        generated(tmp_path, frozenset())


def test_a_borrowed_symbol_goes_with_the_module_whose_code_holds_it():
    homes = {".text.nfsd4_sequence": {"nfsd"}, ".rodata.str1.1": {"nfsd", "vmlinux"}}
    assert _home(".text.nfsd4_sequence", ".klp.sym.sunrpc.svc_reserve,0", homes) == "nfsd"
    with pytest.raises(BuildError, match="no safe time"):
        _home(".rodata.str1.1", ".klp.sym.sunrpc.svc_reserve,0", homes)
    only_vmlinux = {".text.cmdline_proc_show": {"vmlinux"}}
    with pytest.raises(BuildError, match="no safe time"):
        _home(".text.cmdline_proc_show", ".klp.sym.sunrpc.x,0", only_vmlinux)


def test_check_allows_exactly_what_the_kernel_resolves_safely():
    tables = {"nfsd": SimpleNamespace(depends=frozenset({"sunrpc"})),
              "ext4": SimpleNamespace(depends=frozenset({"jbd2", "mbcache"})),
              "vmlinux": SimpleNamespace(depends=frozenset())}
    assert _loaded_before("sunrpc", "nfsd", tables.__getitem__)
    assert not _loaded_before("sunrpc", "ext4", tables.__getitem__)  # may not be loaded
    assert not _loaded_before("vmlinux", "nfsd", tables.__getitem__)  # the kernel refuses
    assert not _loaded_before("sunrpc", "vmlinux", tables.__getitem__)
