# SPDX-License-Identifier: GPL-3.0-or-later
"""Debian 13 (trixie): the corpus on lab VMs running trixie with its newest kernels,
amd64 and cloud-amd64, built on this controller whatever its own Debian release; and a
patch persisted across a reboot there. The rollout over a mixed Debian 12 and 13 fleet
is tests/vm/test_rollout.py's.

The builder takes trixie's gcc-14 from a build root when the controller has no such
compiler (a Debian 12 controller), and still proves every rebuilt original against the
shipped binary; the manifest says which compiler and where it ran. The guests are
trixie systems (Python 3.13, systemd 257), not only trixie kernels.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from builder.providers.archive import host_suite
from lab.kernels import release_flavour, resolve
from tests.vm.corpus import CORPUS, REPO, Case, assert_refused, cases, ci_subset, run_on_vm
from tests.vm.expect import running_build_id
from tests.vm.playbook import patch, playbook, task

SPECS = ("newest-13-amd64", "newest-13-cloud-amd64")
PORTED = cases(REPO / "tests" / "corpus" / "debian-13")
# See tests/corpus/debian-13/README.md.
LEFT_OUT = {"header-wide-inline"}
UNCHANGED = [c for c in cases(CORPUS / "debian-12") + cases(REPO / "tests" / "corpus" / "debian-12")
             if c.name not in {p.name for p in PORTED} | LEFT_OUT] \
    if (CORPUS / "debian-12").is_dir() else []
# make test runs one case of each kind on both flavours (tests/vm/corpus.py: CI_CASES).
CASES = ci_subset(PORTED + UNCHANGED)
LIVE = [c for c in CASES if c.kind != "fail"]
FLAVOURS = ("amd64", "cloud-amd64")

pytestmark = pytest.mark.skipif(not UNCHANGED, reason=f"corpus not found at {CORPUS}")


@pytest.fixture(scope="module")
def trixie(lab, lab_inventory, tmp_path_factory) -> dict:
    """Per flavour: (VM, builds, results, build dir). The VMs go down after the module
    (conftest: _module_vms_go_down)."""
    releases = {resolve(spec): spec for spec in SPECS}
    vms = [vm for vm in lab.up(list(SPECS)) if vm.release in releases]

    # Made here, not in the threads: the first mktemp of a session creates its base
    # directory, and two threads doing that at once collide.
    roots = {vm.name: tmp_path_factory.mktemp(f"trixie-{release_flavour(vm.release)}")
             for vm in vms}

    def run(vm) -> tuple:
        return (vm, *run_on_vm(vm, lab_inventory, roots[vm.name], LIVE), roots[vm.name])

    with ThreadPoolExecutor(max_workers=len(vms)) as pool:
        return dict(zip([release_flavour(vm.release) for vm in vms], pool.map(run, vms),
                        strict=True))


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", LIVE, ids=lambda c: c.name)
def test_case_builds_loads_and_passes_its_check(case: Case, flavour, trixie):
    vm, builds, results, _root = trixie[flavour]
    assert builds[case.name].returncode == 0, builds[case.name].stderr
    result = results.get(case.module_name, "no result")
    assert result.startswith("OK:"), f"{vm.release}: {case.name}: {result}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_manifest_names_debian_13_its_compiler_and_the_running_kernel(flavour, trixie):
    vm, builds, _results, root = trixie[flavour]
    case = next(c for c in LIVE if c.name == "cmdline-suffix")
    manifest = json.loads((root / case.name / f"{case.module_name}.json").read_text())
    assert manifest["kernel_release"] == vm.release
    assert manifest["distribution"] == "debian-13"
    assert re.match(r"(x86_64-linux-gnu-)?gcc-14 \(Debian 14\.", manifest["compiler"])
    # Built with the controller's own compiler only on a trixie controller.
    assert manifest["build_root"] == (None if host_suite() == "trixie" else "trixie")
    assert manifest["kernel_build_id"] == running_build_id(vm)
    assert manifest["package_version"] in vm.ssh(["cat", "/proc/version"], check=True).stdout


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_guest_is_a_trixie_system(flavour, trixie):
    vm = trixie[flavour][0]
    release = vm.ssh(["cat", "/etc/os-release"], check=True).stdout
    assert "VERSION_CODENAME=trixie" in release
    python = vm.ssh(["python3", "-c", "import sys; print(sys.version_info[:2])"],
                    check=True).stdout
    assert python.strip() == "(3, 13)"


@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "fail"], ids=lambda c: c.name)
def test_refused_cases_say_why_and_write_nothing(case: Case, trixie, tmp_path):
    vm = trixie["amd64"][0]
    assert_refused(case, vm.release, tmp_path)


def test_a_persisted_patch_is_loaded_again_after_a_reboot(
        trixie, lab, lab_inventory, collections_path, tmp_path):
    """persist=true on a trixie host (systemd 257): the boot unit loads the patch again."""
    vm, _builds, _results, root = trixie["amd64"]
    case = next(c for c in LIVE if c.name == "meminfo-label")  # harmless at boot
    ko = root / case.name / f"{case.module_name}.ko"

    def run(step: str, tasks: list) -> dict:
        (tmp_path / step).mkdir()
        return playbook(lab_inventory, vm.name, collections_path, tmp_path / step, tasks,
                        {"keep": [t["register"] for t in tasks]})

    before = run("before", [task("persist", patch(src=str(ko), persist=True))])
    lab.restart(vm.name)
    after = run("after", [
        task("boot", {"klp.livepatch.info": {}}),
        task("unit", {"ansible.builtin.command": "systemctl is-active klp-livepatch.service"},
             changed_when=False, failed_when=False),
        task("check", {"ansible.builtin.command": "grep -c ^VMALLOCCHUNK: /proc/meminfo"},
             changed_when=False),
        task("absent", patch(name=case.module_name, state="absent")),
    ])
    assert before["persist"]["changed"] is True and before["persist"]["persisted"] is True
    boot = after["boot"]
    assert [(p["name"], p["enabled"]) for p in boot["patches"]] == [(case.module_name, True)]
    assert boot["distribution"]["id"] == "debian-13"
    assert after["unit"]["stdout"] == "active"
    assert after["check"]["stdout"] == "1"
    assert after["absent"]["changed"] is True and after["absent"]["persisted"] is False
