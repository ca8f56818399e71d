# SPDX-License-Identifier: GPL-3.0-or-later
"""Every case of the shared corpus and of tests/corpus on a lab VM running Debian's
newest 6.1 amd64 kernel, and one case of each kind on cloud-amd64 (every case there too
with KLP_VM_FULL=1).

Must-build cases are built on the controller, loaded through Ansible and checked
before, during and after the patch; -FAIL cases must be refused with the
expected text and leave no module behind.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from lab.kernels import release_flavour
from tests.vm.corpus import CORPUS, REPO, Case, assert_refused, cases, ci_subset, run_on_vm

DEBIAN_12 = CORPUS / "debian-12"
# The shared corpus is the floor; the project's own cases add to it.
OWN = REPO / "tests" / "corpus" / "debian-12"
CASES = (cases(DEBIAN_12) + cases(OWN)) if DEBIAN_12.is_dir() else []
FLAVOURS = ("amd64", "cloud-amd64")
# The two configurations differ in what they build, not in how a case is patched: the
# second flavour gets the subset, which keeps make test inside CI's time.
CASES_ON = {"amd64": CASES, "cloud-amd64": ci_subset(CASES)}
LIVE_ON = {flavour: [c for c in found if c.kind != "fail"] for flavour, found in CASES_ON.items()}

pytestmark = pytest.mark.skipif(not CASES, reason=f"corpus not found at {DEBIAN_12}")


def _vm_for(vms, flavour: str):
    for vm in vms:
        if release_flavour(vm.release) == flavour and vm.release.startswith("6.1."):
            return vm
    pytest.fail(f"no lab VM runs a {flavour} kernel: {[vm.release for vm in vms]}")


@pytest.fixture(scope="session")
def corpus_runs(session_vms, lab_inventory, tmp_path_factory) -> dict:
    """Per flavour: the VM, the builder runs and each case's result on the VM.

    The flavours run side by side: one's builds overlap the other's play on its VM
    (the tier's longest step; a guest under TCG keeps one host core busy on its own)."""
    # Made here, not in the threads: the first mktemp of a session creates its base
    # directory, and two threads doing that at once collide.
    roots = {flavour: tmp_path_factory.mktemp(f"corpus-{flavour}") for flavour in FLAVOURS}

    def run(flavour: str) -> tuple:
        vm = _vm_for(session_vms, flavour)
        return (vm, *run_on_vm(vm, lab_inventory, roots[flavour], LIVE_ON[flavour]))

    with ThreadPoolExecutor(max_workers=len(FLAVOURS)) as pool:
        return dict(zip(FLAVOURS, pool.map(run, FLAVOURS), strict=True))


def _pairs(kind_is_fail: bool) -> list:
    return [pytest.param(case, flavour, id=f"{case.name}-{flavour}")
            for flavour, found in CASES_ON.items() for case in found
            if (case.kind == "fail") == kind_is_fail]


@pytest.mark.parametrize(("case", "flavour"), _pairs(kind_is_fail=True))
def test_refused_cases_say_why_and_write_nothing(case: Case, flavour, lab_vms, tmp_path):
    vm = _vm_for(lab_vms, flavour)
    assert_refused(case, vm.release, tmp_path)


@pytest.mark.parametrize(("case", "flavour"), _pairs(kind_is_fail=False))
def test_case_builds_loads_and_passes_its_check(case: Case, flavour, corpus_runs):
    vm, builds, results = corpus_runs[flavour]
    built = builds[case.name]
    assert built.returncode == 0, built.stderr
    result = results.get(case.module_name, "no result")
    assert result.startswith("OK:"), f"{vm.release}: {case.name}: {result}"
