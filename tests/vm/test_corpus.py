# SPDX-License-Identifier: GPL-3.0-or-later
"""Every case of the shared corpus and of tests/corpus, on lab VMs running Debian's
newest 6.1 kernels (amd64 and cloud-amd64).

Must-build cases are built on the controller, loaded through Ansible and checked
before, during and after the patch; -FAIL cases must be refused with the
expected text and leave no module behind.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from lab.kernels import release_flavour
from tests.vm.corpus import CORPUS, REPO, Case, assert_refused, cases, run_on_vm

DEBIAN_12 = CORPUS / "debian-12"
# The shared corpus is the floor; the project's own cases add to it.
OWN = REPO / "tests" / "corpus" / "debian-12"
CASES = (cases(DEBIAN_12) + cases(OWN)) if DEBIAN_12.is_dir() else []
LIVE = [c for c in CASES if c.kind != "fail"]
FLAVOURS = ("amd64", "cloud-amd64")

pytestmark = pytest.mark.skipif(not CASES, reason=f"corpus not found at {DEBIAN_12}")


def _vm_for(lab_vms, flavour: str):
    for vm in lab_vms:
        if release_flavour(vm.release) == flavour and vm.release.startswith("6.1."):
            return vm
    pytest.fail(f"no lab VM runs a {flavour} kernel: {[vm.release for vm in lab_vms]}")


@pytest.fixture(scope="session")
def corpus_runs(lab_vms, lab_inventory, tmp_path_factory) -> dict:
    """Per flavour: the VM, the builder runs and each case's result on the VM.

    The flavours run side by side: one's builds overlap the other's play on its VM
    (the tier's longest step; a guest under TCG keeps one host core busy on its own)."""
    # Made here, not in the threads: the first mktemp of a session creates its base
    # directory, and two threads doing that at once collide.
    roots = {flavour: tmp_path_factory.mktemp(f"corpus-{flavour}") for flavour in FLAVOURS}

    def run(flavour: str) -> tuple:
        vm = _vm_for(lab_vms, flavour)
        return (vm, *run_on_vm(vm, lab_inventory, roots[flavour], LIVE))

    with ThreadPoolExecutor(max_workers=len(FLAVOURS)) as pool:
        return dict(zip(FLAVOURS, pool.map(run, FLAVOURS), strict=True))


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "fail"], ids=lambda c: c.name)
def test_refused_cases_say_why_and_write_nothing(case: Case, flavour, lab_vms, tmp_path):
    vm = _vm_for(lab_vms, flavour)
    assert_refused(case, vm.release, tmp_path)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", LIVE, ids=lambda c: c.name)
def test_case_builds_loads_and_passes_its_check(case: Case, flavour, corpus_runs):
    vm, builds, results = corpus_runs[flavour]
    built = builds[case.name]
    assert built.returncode == 0, built.stderr
    result = results.get(case.module_name, "no result")
    assert result.startswith("OK:"), f"{vm.release}: {case.name}: {result}"
