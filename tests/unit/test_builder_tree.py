# SPDX-License-Identifier: GPL-3.0-or-later
"""What kbuild builds (Makefiles evaluated by make) and who includes a header, on small
fake kernel trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.includes import IncludeGraph
from builder.kbuild import Kbuild


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    src, build = tmp_path / "src", tmp_path / "build"
    write(src, {
        "scripts/Kbuild.include": "",
        "arch/x86/Makefile": "libs-y  += arch/x86/lib/\n",
        "Kbuild": "obj-y += fs/ arch/$(SRCARCH)/ $(ARCH_LIB)\nobj-$(CONFIG_NET) += net/\n",
        "arch/x86/Kbuild": "obj-y += kernel/\n",
        "arch/x86/kernel/Makefile": "obj-y += bugs.o\n",
        "arch/x86/lib/Makefile": "lib-y += usercopy_$(BITS).o\n",
        "fs/Makefile": "obj-y += proc/\nobj-$(CONFIG_NFSD) += nfsd/\n"
                       "obj-$(CONFIG_EXT2_FS) += ext2/\n",
        "fs/proc/Makefile": "obj-y += meminfo.o\nobj-$(CONFIG_PROC_VMCORE) += vmcore.o\n",
        "fs/nfsd/Makefile": "obj-$(CONFIG_NFSD) += nfsd.o\nnfsd-y := nfsfh.o vfs.o\n"
                            "nfsd-$(CONFIG_NFSD_V4) += nfs4state.o\n",
        "fs/ext2/Makefile": "obj-$(CONFIG_EXT2_FS) += ext2.o\next2-y := super.o\n",
        "net/Makefile": "obj-y += core.o\n",
    })
    write(build, {"include/config/auto.conf": "CONFIG_NFSD=m\nCONFIG_NFSD_V4=y\n"})
    return src, build


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize(("source", "target"), [
    ("fs/proc/meminfo.c", "vmlinux"),
    ("fs/nfsd/nfsfh.c", "nfsd"),
    ("fs/nfsd/nfs4state.c", "nfsd"),
    ("arch/x86/kernel/bugs.c", "vmlinux"),
    ("arch/x86/lib/usercopy_64.c", "vmlinux"),
    ("fs/proc/vmcore.c", None),
    ("fs/ext2/super.c", None),
    ("net/core.c", None),
])
def test_kbuild_places_sources_by_evaluating_the_makefiles(tree, source, target):
    src, build = tree
    placement = Kbuild(src, build, []).placement(source)
    assert placement.target == target
    if target is None:
        assert source in placement.reason and "not built in this configuration" in placement.reason


def test_kbuild_answers_are_cached_per_tree(tree):
    src, build = tree
    Kbuild(src, build, []).placement("fs/nfsd/nfsfh.c")
    (src / "fs/nfsd/Makefile").write_text("this would not parse: $(error no)\n")
    assert Kbuild(src, build, []).placement("fs/nfsd/vfs.c").target == "nfsd"


def test_include_graph_finds_direct_indirect_and_local_includers(tree):
    src, build = tree
    write(src, {
        "include/linux/helper.h": "static inline int helper(void) { return 1; }\n",
        "include/linux/wrapper.h": "#include <linux/helper.h>\n",
        "fs/nfsd/nfsfh.h": "#include <linux/wrapper.h>\n",
        "fs/nfsd/nfsfh.c": '#include "nfsfh.h"\n',
        "fs/nfsd/vfs.c": "#include <linux/fs.h>\n",
        "fs/proc/meminfo.c": "  #  include <linux/helper.h>\n",
        "Documentation/x.c": "#include <linux/helper.h>\n",
        "arch/arm64/kernel/y.c": "#include <linux/helper.h>\n",
    })
    graph = IncludeGraph.load(src, build)
    assert graph.dependents(["include/linux/helper.h"]) == ["fs/nfsd/nfsfh.c",
                                                            "fs/proc/meminfo.c"]
    assert graph.dependents(["fs/nfsd/nfsfh.h"]) == ["fs/nfsd/nfsfh.c"]
    assert IncludeGraph.load(src, build).includers == graph.includers  # from the cache


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_a_c_file_built_only_through_a_file_that_includes_it_is_planned_as_a_header(tree):
    from builder.artifacts import KernelId, PreparedTree
    from builder.errors import BuildError
    from builder.patchset import PatchSet
    from builder.stages.compile import Planned, plan_units

    src, build = tree
    # like kernel/sched/rt.c, which build_policy.c #includes
    write(src, {"fs/proc/meminfo.c": '#include "table.c"\n', "fs/proc/table.c": "int t;\n",
                "fs/proc/orphan.c": "int o;\n"})
    prepared = PreparedTree(kernel=KernelId("6.1.0-56-amd64", "6.1.192-2"), source_dir=src,
                            build_dir=build)

    def patch(path: str) -> PatchSet:
        (src.parent / "p.patch").write_text(f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n"
                                            f"-int t;\n+int t = 1;\n")
        return PatchSet.read([src.parent / "p.patch"])

    assert plan_units(prepared, patch("fs/proc/table.c")) == [
        Planned("fs/proc/meminfo.c", "includes fs/proc/table.c")]
    with pytest.raises(BuildError, match="fs/proc/orphan.c is not built"):
        plan_units(prepared, patch("fs/proc/orphan.c"))  # built nowhere, included by none
