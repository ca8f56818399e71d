# SPDX-License-Identifier: GPL-3.0-or-later
"""builder update: changelog items between two uploads, tied to fix units; versions."""

from __future__ import annotations

import gzip
import shutil
import sys

import pytest

from builder.errors import BuildError
from builder.providers.archive import Archive
from builder.update import SLUG_LENGTH, _cves, _slug, target_version
from builder.update.changelog import items_between, read_changelog, tie

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
BOOKWORM = Archive("bookworm")

CHANGELOG = """\
linux (6.1.192-3) bookworm-security; urgency=high

  * nfsd: preflight SEQUENCE replies before accepting a slot (CVE-2026-99362)

 -- Debian Kernel Team <debian-kernel@lists.debian.org>  Mon, 23 Nov 2026 10:00:00 +0000

linux (6.1.192-2) bookworm-security; urgency=high

  * ext4: fix NULL folio dereference in mballoc (Closes: #1154101)

 -- Debian Kernel Team <debian-kernel@lists.debian.org>  Mon, 16 Nov 2026 10:00:00 +0000

linux (6.1.192-1) bookworm-security; urgency=high

  * New upstream stable update:
    https://www.kernel.org/pub/linux/kernel/v6.x/ChangeLog-6.1.191
    - io_uring/io-wq: don't lose the signal that ends work (CVE-2026-99228)
    - net/sched: act_pedit: use NLA_POLICY for parsing 'ex' keys
    - sched: fair: keep the clock monotonic
    - [x86] KVM: nVMX: Hide shadow VMCS right after VMCLEAR
      (CVE-2026-64562)

 -- Debian Kernel Team <debian-kernel@lists.debian.org>  Mon, 09 Nov 2026 10:00:00 +0000

linux (6.1.190-1) bookworm-security; urgency=high

  * sound: older upload (CVE-2026-00001)

 -- Debian Kernel Team <debian-kernel@lists.debian.org>  Mon, 02 Nov 2026 10:00:00 +0000
"""


def test_items_are_those_after_the_running_version_up_to_the_target():
    items = items_between(CHANGELOG, "6.1.192-1", "6.1.192-3")
    assert [(i.version, i.cves) for i in items] == [
        ("6.1.192-3", ["CVE-2026-99362"]), ("6.1.192-2", [])]
    assert items[0].text.startswith("nfsd: preflight SEQUENCE replies")


def test_stable_items_keep_their_wrapped_cve_and_drop_the_headings():
    items = items_between(CHANGELOG, "6.1.190-1", "6.1.192-1")
    texts = [i.text for i in items]
    assert not any(t.startswith(("New upstream", "https://")) for t in texts)
    kvm = next(i for i in items if "KVM" in i.text)
    assert kvm.cves == ["CVE-2026-64562"] and kvm.text.endswith("(CVE-2026-64562)")
    assert "6.1.190-1" not in {i.version for i in items}


def test_items_tie_to_the_unit_their_subsystem_names():
    items = items_between(CHANGELOG, "6.1.190-1", "6.1.192-3")
    units = {"fs/nfsd": ["fs/nfsd/nfs4state.c"], "fs/ext4": ["fs/ext4/mballoc.c"],
             "io_uring": ["io_uring/io-wq.c"], "net/sched": ["net/sched/act_pedit.c"],
             "kernel/sched": ["kernel/sched/core.c"]}
    tied = {name: [i.text.split(":")[0] for i in found]
            for name, found in tie(items, units).items()}
    assert tied["fs/nfsd"] == ["nfsd"] and tied["fs/ext4"] == ["ext4"]
    assert tied["io_uring"] == ["io_uring/io-wq"]
    assert tied["net/sched"] == ["net/sched"]
    assert tied["kernel/sched"] == []  # "sched:" could be either sched directory


def test_cves_of_live_units_and_the_rest():
    items = items_between(CHANGELOG, "6.1.192-1", "6.1.192-3")
    records = [{"status": "live", "changelog": [items[0].as_dict()]},
               {"status": "needs-reboot", "changelog": []}]
    assert _cves(records, items) == {"cves_live": ["CVE-2026-99362"], "cves_not_live": []}
    records[0]["status"] = "needs-reboot"
    assert _cves(records, items) == {"cves_live": [], "cves_not_live": ["CVE-2026-99362"]}


def test_read_changelog_reads_the_gzip_debian_ships(tmp_path):
    path = tmp_path / "changelog.Debian.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(CHANGELOG)
    assert read_changelog(path) == CHANGELOG


def test_latest_is_the_newest_source_the_archive_offers(monkeypatch):
    offered = ["6.1.192-3", "6.1.192-2", "6.1.192-1"]
    monkeypatch.setattr("builder.update.madison_versions", lambda package, archive: offered)
    assert target_version("6.1", "latest", "6.1.192-1", BOOKWORM) == "6.1.192-3"
    assert target_version("6.1", "6.1.192-2", "6.1.192-1", BOOKWORM) == "6.1.192-2"
    with pytest.raises(BuildError, match="has no version 6.1.999-1"):
        target_version("6.1", "6.1.999-1", "6.1.192-1", BOOKWORM)


def test_units_build_concurrently_each_in_a_work_directory_no_other_build_uses(
        monkeypatch, tmp_path):
    import threading
    import time

    from builder.progress import Progress
    from builder.update import UpdateRequest, _unit_records
    from builder.update.units import Unit

    in_use: set = set()
    most = [0]
    guard = threading.Lock()
    both_running = threading.Event()

    def fake_result(request, kernel, unit, patch, work, unit_work, progress, max_files):
        with guard:
            assert unit_work not in in_use, f"{unit_work} used by two builds at once"
            in_use.add(unit_work)
            most[0] = max(most[0], len(in_use))
            if len(in_use) == 2:
                both_running.set()
        # the first builds wait for a second one to start: one at a time would time out
        both_running.wait(timeout=10)
        time.sleep(0.02 if unit.name.endswith("0") else 0.0)  # finish out of order
        with guard:
            in_use.discard(unit_work)
        return {"key": {}, "status": "live", "reason": "", "built_in": unit_work.name}

    monkeypatch.setattr("builder.update._unit_result", fake_result)
    units = [Unit(name=f"dir{i}", sources=[f"dir{i}/a.c"]) for i in range(7)]
    units.insert(3, Unit(name="off", unbuilt=["off/x.c"], reason="CONFIG_OFF is not set"))
    patches = {u.name: tmp_path / f"{u.name}.patch" for u in units}
    request = UpdateRequest(kernel="k", to="latest", name="n", output=tmp_path, jobs=2)
    records = _unit_records(request, None, units, patches, tmp_path, Progress())

    assert [r["name"] for r in records] == [u.name for u in units]  # the units' order
    assert records[3]["status"] == "not-in-config"
    assert records[3]["reason"] == "CONFIG_OFF is not set"
    assert {r["built_in"] for r in records if r["status"] == "live"} == {"unit-work",
                                                                         "unit-work-2"}
    assert most[0] == 2


def test_a_unit_that_crashes_stops_the_units_still_queued(monkeypatch, tmp_path):
    """An error that is not a refusal (a full disk, a bug) surfaces at once, not after
    every queued unit was built (hours, on a stable update)."""
    from builder.progress import Progress
    from builder.update import UpdateRequest, _unit_records
    from builder.update.units import Unit

    started = []

    def failing_result(_request, _kernel, unit, *_rest):
        started.append(unit.name)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("builder.update._unit_result", failing_result)
    units = [Unit(name=f"dir{i}", sources=[f"dir{i}/a.c"]) for i in range(20)]
    patches = {u.name: tmp_path / f"{u.name}.patch" for u in units}
    request = UpdateRequest(kernel="k", to="latest", name="n", output=tmp_path, jobs=2)
    with pytest.raises(OSError, match="No space left"):
        _unit_records(request, None, units, patches, tmp_path, Progress())
    assert len(started) <= request.jobs  # the units already running when the first failed


# A stand-in for kbuild's single-object targets: "compiles" a .c file by copying it, and
# records what it read (the source and the files it #includes) in .<obj>.cmd as kbuild does.
FAKE_MAKE = r'''
import re, sys
from pathlib import Path
src, build = Path(sys.argv[1]), Path(sys.argv[2])
with open(build / "make.log", "a") as log:
    log.write(" ".join(sys.argv[3:]) + "\n")
for target in [a for a in sys.argv[3:] if a.endswith(".o")]:
    source = src / (target[:-2] + ".c")
    text = source.read_text()
    if "BROKEN" in text:
        continue
    read = [source] + [src / inc for inc in re.findall(r'#include "(.+)"', text)]
    (build / target).parent.mkdir(parents=True, exist_ok=True)
    (build / target).write_text(text)
    cmd = build / Path(target).parent / f".{Path(target).name}.cmd"
    cmd.write_text(f"cmd_{target} := gcc -c -o {target} {source}\n"
                   f"deps_{target} := \\\n" + "".join(f"  {p} \\\n" for p in read) + "\n")
'''


def _diff(path: str, old: str, new: str) -> str:
    return f"--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-{old}\n+{new}\n"


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs GNU patch")
def test_patched_files_of_units_without_headers_compile_together_and_are_cached(tmp_path):
    from builder.artifacts import KernelId, PreparedTree
    from builder.patchset import PatchSet
    from builder.progress import Progress
    from builder.stages import compile as compiling
    from builder.update import _warm_patched
    from builder.update.units import Unit

    source, build = tmp_path / "src" / "linux", tmp_path / "build"
    build.mkdir(parents=True)
    pristine = {"a/x.c": "int x;", "b/y.c": "int y;", "c/z.c": "int z;",
                "c/z.h": "int h;", "d/w.c": "int w;"}
    for rel, text in pristine.items():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_text(text + "\n")
    fake = tmp_path / "make.py"
    fake.write_text(FAKE_MAKE)
    tree = PreparedTree(kernel=KernelId("6.1.0-56-amd64", "6.1.192-2"), source_dir=source,
                        build_dir=build, make_args=[sys.executable, str(fake), str(source),
                                                    str(build)])
    changes = {"a": _diff("a/x.c", "int x;", "int x = 1;"),
               # b's patched file reads a file another unit changes: not its object alone
               "b": _diff("b/y.c", "int y;", '#include "a/x.c"'),
               "c": _diff("c/z.c", "int z;", "int z = 1;") + _diff("c/z.h", "int h;", "int i;"),
               "d": _diff("d/w.c", "int w;", "BROKEN")}
    patches = {}
    for name, text in changes.items():
        patches[name] = tmp_path / f"{name}.patch"
        patches[name].write_text(text)
    units = [Unit(name="a", sources=["a/x.c"]), Unit(name="b", sources=["b/y.c"]),
             Unit(name="c", sources=["c/z.c"], headers=["c/z.h"]),
             Unit(name="d", sources=["d/w.c"]), Unit(name="off", unbuilt=["e/v.c"])]

    _warm_patched(tree, units, patches, Progress())
    for rel, text in pristine.items():  # the shared tree is as shipped again
        assert (source / rel).read_text() == text + "\n"
    assert not [o for o in build.rglob("*.o") if ".klp-" not in str(o)]
    assert not list(source.rglob("*.orig"))
    compiled = (build / "make.log").read_text().splitlines()
    assert len(compiled) == 1 and "c/z.o" not in compiled[0]  # one batch, both units

    def alone(name: str, rel: str) -> str:
        """What the unit's own build of `rel` gets: the object's text; compiles counted."""
        patchset = PatchSet.read([patches[name]])
        with compiling.locked(tree):
            compiling.save_files(tree, list(patchset.sources))
            try:
                compiling.apply_patch(tree, patchset.patches[0], dry_run=False)
                objects = compiling.patched_objects(tree, patchset, [rel], compiling.COMPAT_INCLUDE)
                return objects[rel].path.read_text()
            finally:
                compiling.restore_files(tree)

    assert alone("a", "a/x.c") == "int x = 1;\n"
    assert (build / "make.log").read_text().splitlines() == compiled  # found, not compiled
    # b's batch object read unit a's change: b's own build compiles it without a's.
    assert alone("b", "b/y.c") == '#include "a/x.c"\n'
    assert len((build / "make.log").read_text().splitlines()) == len(compiled) + 1
    _warm_patched(tree, units, patches, Progress())  # a rerun compiles only what failed
    assert "d/w.o" in (build / "make.log").read_text().splitlines()[-1]
    assert "a/x.o" not in (build / "make.log").read_text().splitlines()[-1]


@pytest.mark.parametrize("joined_status", ["live", "needs-reboot", "partner refused"])
def test_a_unit_that_needs_another_units_declaration_is_built_with_it(
        monkeypatch, tmp_path, joined_status):
    """fs/b calls a helper that fs/a adds (declared in a header fs/a changes): alone it
    does not compile; built with fs/a it is live, and so is fs/a's new helper. A header
    fs/b also reads but that adds none of the names its errors quote stays out. A joined
    build still refused says what it was built with."""
    from builder.artifacts import KernelId, PreparedTree
    from builder.progress import Progress
    from builder.update import UpdateRequest, _join_units, _module_units
    from builder.update.units import Unit

    # Each tree in a directory of its own, as the cache keeps them (one lock each).
    old, new = tmp_path / "old" / "linux", tmp_path / "new" / "linux"
    build = tmp_path / "build"
    files = {"include/linux/s.h": ("struct s { int a; };\n",
                                   "struct s { int a; };\nint helper(void);\n"),
             "include/linux/other.h": ("int other;\n", "int other, unrelated;\n"),
             "fs/a/a.c": ('#include <linux/s.h>\n', '#include <linux/s.h>\n'
                                                    'int helper(void) { return 1; }\n'),
             "fs/b/b.c": ('#include <linux/s.h>\n#include <linux/other.h>\n'
                          'int f(struct s *x) { return x->a; }\n',
                          '#include <linux/s.h>\n#include <linux/other.h>\n'
                          'int f(struct s *x) { return x->a + helper(); }\n')}
    for rel, (before, after) in files.items():
        for root, text in ((old, before), (new, after)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    build.mkdir()
    tree = PreparedTree(kernel=KernelId("6.1.0-56-amd64", "6.1.192-2"), source_dir=old,
                        build_dir=build, make_args=[])
    units = [Unit("fs/a", sources=["fs/a/a.c"], headers=["include/linux/s.h"],
                  placements={"fs/a/a.c": "vmlinux"}),
             Unit("fs/b", sources=["fs/b/b.c"], placements={"fs/b/b.c": "vmlinux"}),
             Unit("include/linux/other.h", headers=["include/linux/other.h"])]
    (tmp_path / "patches").mkdir()
    patches = {}
    for unit in units:
        patches[unit.name] = tmp_path / "patches" / f"{unit.name.replace('/', '_')}.patch"
        patches[unit.name].write_text("".join(
            f"+{line}\n" for rel in unit.files for line in files[rel][1].splitlines()))
    records = [
        {"name": "fs/a", "status": "no-change",
         "reason": "diff: fs/a/a.c: no functional change in fs/a/a.c: the patch makes new "
                   "functions only, which nothing calls"} if joined_status != "partner refused"
        else {"name": "fs/a", "status": "needs-reboot",
              "reason": "diff: fs/a/a.c: the patch changes the layout of struct s"},
        {"name": "fs/b", "status": "needs-reboot",
         "reason": "compile: fs/b/b.c: compiling fs/b/b.o failed:",
         "compile_errors": ["fs/b/b.c:3:35: error: implicit declaration of function "
                            "\u2018helper\u2019 [-Werror=implicit-function-declaration]"]},
        {"name": "include/linux/other.h", "status": "live", "reason": ""}]
    built = []

    def fake_result(request, kernel, unit, patch, work, unit_work, progress, max_files):
        built.append((unit.name, unit.files, patch.read_text()))
        if joined_status != "live":
            return {"key": {}, "status": joined_status, "reason": "check: a refusal"}
        return {"key": {}, "status": "live", "reason": "",
                "functions": {"vmlinux": ["f", "helper"]}}

    monkeypatch.setattr("builder.update._unit_result", fake_result)
    request = UpdateRequest(kernel="k", to="latest", name="n", output=tmp_path)
    _join_units(request, None, tree, new, units, records, patches, tmp_path, Progress())
    if joined_status == "partner refused":  # fs/b needs what fs/a adds: no build can help
        assert built == [] and records[1]["status"] == "needs-reboot"
        assert records[1]["reason"] == (
            "does not compile without unit fs/a's change, which needs a reboot: "
            "diff: fs/a/a.c: the patch changes the layout of struct s")
        return

    assert [(name, files) for name, files, _text in built] == [
        ("fs/b", ["fs/a/a.c", "fs/b/b.c", "include/linux/s.h"])]
    assert "+int helper(void) { return 1; }" in built[0][2]  # a real diff of both trees
    b, a = records[1], records[0]
    if joined_status != "live":
        assert b["status"] == "needs-reboot" and a["status"] == "no-change"
        assert b["reason"] == ("does not compile alone; with unit(s) fs/a it needs-reboot: "
                               "check: a refusal")
        return
    assert b["status"] == "live" and b["joined"] == ["fs/a"]
    assert b["functions"] == {"vmlinux": ["f", "helper"]}
    assert a["status"] == "live" and a["joined"] == ["fs/b"] and a["reason"] == ""
    assert _module_units([r for r in records if r["status"] == "live"]) == [
        "fs/a", "fs/b", "include/linux/other.h"]


def test_the_names_a_compile_error_quotes():
    from builder.update import _missing_names

    assert _missing_names([
        "a.c:1:2: error: 'struct sock' has no member named 'sk_use_task_frag'",
        "a.c:3:4: error: \u2018FLAG_X\u2019 undeclared (first use in this function)",
        "a.c:5:6: error: implicit declaration of function 'helper_two'",
        "a.c:7:8: error: invalid use of undefined type \u2018struct tipc_key\u2019"]) == (
        {"sk_use_task_frag", "FLAG_X", "helper_two"}, {"sock", "tipc_key"})


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs GNU patch")
def test_a_patched_object_is_kept_under_the_header_it_read_through_dotdot(tmp_path):
    """gcc records `c/../c/z.h` as it was included: the key must name c/z.h, or a build
    that also changes the header would get the object compiled without that change."""
    from builder.artifacts import KernelId, PreparedTree
    from builder.patchset import PatchSet
    from builder.stages import compile as compiling

    source, build = tmp_path / "src" / "linux", tmp_path / "build"
    build.mkdir(parents=True)
    (source / "c").mkdir(parents=True)
    (source / "c/z.c").write_text('#include "c/../c/z.h"\nint z;\n')
    (source / "c/z.h").write_text("int h;\n")
    fake = tmp_path / "make.py"
    fake.write_text(FAKE_MAKE)
    tree = PreparedTree(kernel=KernelId("6.1.0-56-amd64", "6.1.192-2"), source_dir=source,
                        build_dir=build, make_args=[sys.executable, str(fake), str(source),
                                                    str(build)])
    own = tmp_path / "own.patch"
    own.write_text("--- a/c/z.c\n+++ b/c/z.c\n@@ -2 +2 @@\n-int z;\n+int z = 1;\n")
    both = tmp_path / "both.patch"
    both.write_text(own.read_text() + _diff("c/z.h", "int h;", "int h = 2;"))

    def build_with(patch) -> str:
        patchset = PatchSet.read([patch])
        with compiling.locked(tree):
            compiling.save_files(tree, list(patchset.sources))
            try:
                for one in patchset.patches:
                    compiling.apply_patch(tree, one, dry_run=False)
                objects = compiling.patched_objects(tree, patchset, ["c/z.c"],
                                                    compiling.COMPAT_INCLUDE)
                return objects["c/z.c"].path.read_text()
            finally:
                compiling.restore_files(tree)

    build_with(own)
    assert compiling.dependencies(tree, "c/z.o") == ["c/z.c", "c/z.h"]
    build_with(both)
    assert len((build / "make.log").read_text().splitlines()) == 2  # not the first object
    build_with(both)
    assert len((build / "make.log").read_text().splitlines()) == 2  # its own, found


def test_recorded_paths_are_relative_and_normal_through_a_symlinked_tree(tmp_path):
    from builder.artifacts import KernelId, PreparedTree
    from builder.stages.compile import _normal

    real = tmp_path / "real" / "linux"
    real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    tree = PreparedTree(kernel=KernelId("6.1.0-56-amd64", "6.1.192-2"),
                        source_dir=tmp_path / "link" / "linux", build_dir=tmp_path,
                        make_args=[])
    assert _normal(tree, f"{real}/drivers/mt76/mt7915/../mt76.h") == "drivers/mt76/mt76.h"
    assert _normal(tree, f"{tmp_path}/link/linux/fs/x.c") == "fs/x.c"
    assert _normal(tree, "include/generated/autoconf.h") == "include/generated/autoconf.h"


def test_units_together_create_a_new_header_they_share_once():
    from builder.update import _together
    from builder.update.units import Unit

    a = Unit("fs/a", sources=["fs/a/a.c"], headers=["include/linux/new.h"],
             placements={"fs/a/a.c": "vmlinux"})
    b = Unit("fs/b", sources=["fs/b/b.c"], headers=["include/linux/new.h"],
             placements={"fs/b/b.c": "b_mod"})
    both = _together("both", [a, b])
    assert both.files == ["fs/a/a.c", "fs/b/b.c", "include/linux/new.h"]
    assert both.placements == {"fs/a/a.c": "vmlinux", "fs/b/b.c": "b_mod"}


def test_unit_slugs_are_short_and_their_own():
    assert _slug("drivers/xen/events") == "drivers_xen_events"
    one = _slug("drivers/net/wireless/realtek/rtw88/pci/main")
    two = _slug("drivers/staging/wireless/realtek/rtw88/pci/main")
    assert one != two and max(len(one), len(two)) <= SLUG_LENGTH
    assert "rtw88_pci_main" in one and "rtw88_pci_main" in two
    # names the plain form would merge stay apart
    assert _slug("fs/a/b_c") != _slug("fs/a_b/c")
    assert _slug("include/uapi/linux/netfilter/xt_DSCP.h") != _slug(
        "include/uapi/linux/netfilter/xt_dscp.h")


def test_a_header_that_breaks_a_file_another_unit_fixes_is_built_with_it(monkeypatch, tmp_path):
    """A header drops a function fs/c's change stops calling. fs/c is live alone; the
    header alone fails in fs/c/c.c (its old code calls the dropped function), so it is
    built with fs/c, whose file the error names, and is live too."""
    from builder.artifacts import KernelId, PreparedTree
    from builder.progress import Progress
    from builder.update import UpdateRequest, _join_units
    from builder.update.units import Unit

    old, new = tmp_path / "old" / "linux", tmp_path / "new" / "linux"
    files = {"include/linux/h.h": ("int old_fn(void);\nint new_fn(void);\n",
                                   "int new_fn(void);\n"),
             "fs/c/c.c": ("#include <linux/h.h>\nint c(void) { return old_fn(); }\n",
                          "#include <linux/h.h>\nint c(void) { return new_fn(); }\n")}
    for rel, (before, after) in files.items():
        for root, text in ((old, before), (new, after)):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
    (tmp_path / "build").mkdir()
    tree = PreparedTree(kernel=KernelId("6.1.0-56-amd64", "6.1.192-2"), source_dir=old,
                        build_dir=tmp_path / "build", make_args=[])
    units = [Unit("fs/c", sources=["fs/c/c.c"], placements={"fs/c/c.c": "vmlinux"}),
             Unit("include/linux/h.h", headers=["include/linux/h.h"])]
    (tmp_path / "patches").mkdir()
    patches = {}
    for unit in units:
        patches[unit.name] = tmp_path / "patches" / f"{unit.name.replace('/', '_')}.patch"
        patches[unit.name].write_text("".join(
            f"+{line}\n" for rel in unit.files for line in files[rel][1].splitlines()))
    failed = "compile: fs/c/c.c: compiling fs/c/c.o failed:"
    records = [
        {"name": "fs/c", "status": "live", "reason": "", "functions": {"vmlinux": ["c"]}},
        {"name": "include/linux/h.h", "status": "needs-reboot", "reason": failed,
         "compile_errors": [
             "fs/c/c.c:2:23: error: implicit declaration of function \u2018old_fn\u2019"]}]
    built = []

    def fake_result(request, kernel, unit, patch, work, unit_work, progress, max_files):
        built.append(unit.files)
        return {"key": {}, "status": "live", "reason": "", "functions": {"vmlinux": ["c"]}}

    monkeypatch.setattr("builder.update._unit_result", fake_result)
    request = UpdateRequest(kernel="k", to="latest", name="n", output=tmp_path)
    _join_units(request, None, tree, new, units, records, patches, tmp_path, Progress())
    assert built == [["fs/c/c.c", "include/linux/h.h"]]
    assert [(r["status"], r.get("joined")) for r in records] == [
        ("live", None), ("live", ["fs/c"])]


def test_a_reason_that_introduces_a_list_keeps_its_first_entries():
    from builder.update import short_reason

    text = ("check: the generated module would not load safely:\n"
            "  - .rela.text: R_X86_64_PC32 to 'x' overflows\n"
            "  - __jump_table: key 'k' lives in module kvm\n"
            "  - a third\n  - a fourth\n"
            "  hint: nothing was written; report this patch")
    assert short_reason(text) == (
        "check: the generated module would not load safely: .rela.text: R_X86_64_PC32 to "
        "'x' overflows; __jump_table: key 'k' lives in module kvm; a third")
    assert short_reason("diff: a.c: f: no ftrace entry\n  hint: h") == \
        "diff: a.c: f: no ftrace entry"
