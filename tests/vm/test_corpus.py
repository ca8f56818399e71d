# SPDX-License-Identifier: GPL-3.0-or-later
"""Every case of the shared corpus and of tests/corpus, on lab VMs running Debian's
newest 6.1 kernels (amd64 and cloud-amd64).

Must-build cases are built on the controller, loaded through Ansible and checked
before, during and after the patch; -FAIL cases must be refused with the
expected text and leave no module behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from lab.kernels import release_flavour
from tests.vm.corpus import ANSIBLE_PLAYBOOK, CORPUS, REPO, Case, build, cases

DEBIAN_12 = CORPUS / "debian-12"
# The shared corpus is the floor; the project's own cases add to it.
OWN = REPO / "tests" / "corpus" / "debian-12"
CASES = (cases(DEBIAN_12) + cases(OWN)) if DEBIAN_12.is_dir() else []
LIVE = [c for c in CASES if c.kind != "fail"]
PLAYBOOK = REPO / "tests" / "vm" / "playbooks" / "corpus_case.yml"
FLAVOURS = ("amd64", "cloud-amd64")

pytestmark = pytest.mark.skipif(not CASES, reason=f"corpus not found at {DEBIAN_12}")


def _vm_for(lab_vms, flavour: str):
    for vm in lab_vms:
        if release_flavour(vm.release) == flavour and vm.release.startswith("6.1."):
            return vm
    pytest.fail(f"no lab VM runs a {flavour} kernel: {[vm.release for vm in lab_vms]}")


@pytest.fixture(scope="session")
def corpus_runs(lab_vms, lab_inventory, tmp_path_factory) -> dict:
    """Build every live case per kernel, run them all on that kernel's VM in one play."""
    runs = {}
    for flavour in FLAVOURS:
        vm = _vm_for(lab_vms, flavour)
        root = tmp_path_factory.mktemp(f"corpus-{flavour}")
        builds, staged = {}, root / "stage"
        for case in LIVE:
            out = root / case.name
            builds[case.name] = build(case, vm.release, out)
            if builds[case.name].returncode == 0:
                target = staged / case.module_name
                target.mkdir(parents=True)
                shutil.copy(out / f"{case.module_name}.ko", target / "patch.ko")
                shutil.copy(case.check, target / "check")
                if case.setup:
                    shutil.copy(case.setup, target / "setup")
        ready = [c for c in LIVE if builds[c.name].returncode == 0]
        results: dict[str, str] = {}
        if ready:
            play = subprocess.run(
                [ANSIBLE_PLAYBOOK, "-i", str(lab_inventory), "--limit", vm.name, str(PLAYBOOK),
                 "-e", json.dumps({"corpus_dir": str(staged), "corpus_cases": [
                     f"{c.module_name}:{c.kind}" for c in ready]})],
                capture_output=True, text=True, timeout=1800, check=False,
                env={**os.environ, "ANSIBLE_PIPELINING": "1"})
            assert play.returncode == 0, play.stdout[-4000:] + play.stderr[-2000:]
            for line in re.findall(r'"CASE (\S+) ([^"]*)"', play.stdout):
                results.setdefault(line[0], "")
                results[line[0]] += line[1] + "\n"
        runs[flavour] = (vm, builds, results)
    return runs


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "fail"], ids=lambda c: c.name)
def test_refused_cases_say_why_and_write_nothing(case: Case, flavour, lab_vms, tmp_path):
    vm = _vm_for(lab_vms, flavour)
    proc = build(case, vm.release, tmp_path)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    for pattern in case.expect:
        assert re.search(pattern, proc.stderr, re.IGNORECASE), \
            f"{case.name}: {pattern!r} not in the error:\n{proc.stderr}"
    assert not list(tmp_path.glob("*.ko")), "a refused build must not write a module"


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", LIVE, ids=lambda c: c.name)
def test_case_builds_loads_and_passes_its_check(case: Case, flavour, corpus_runs):
    vm, builds, results = corpus_runs[flavour]
    built = builds[case.name]
    assert built.returncode == 0, built.stderr
    result = results.get(case.module_name, "no result")
    assert result.startswith("OK:"), f"{vm.release}: {case.name}: {result}"
