# SPDX-License-Identifier: GPL-3.0-or-later
"""Every case of the shared corpus, on lab VMs running Debian's newest 6.1 kernels.

Must-build cases are built on the controller, loaded through Ansible and checked
before, during and after the patch; -FAIL cases must be refused with the
expected text and leave no module behind.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.vm.corpus import CORPUS, REPO, Case, build, cases

DEBIAN_12 = CORPUS / "debian-12"
CASES = cases(DEBIAN_12) if DEBIAN_12.is_dir() else []
PLAYBOOK = REPO / "tests" / "vm" / "playbooks" / "corpus_case.yml"

pytestmark = pytest.mark.skipif(not CASES, reason=f"corpus not found at {DEBIAN_12}")


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("corpus-modules")


def _host(lab_vms, flavour: str):
    for vm in lab_vms:
        if vm.release.endswith(f"-{flavour}") and not vm.release.endswith("-cloud-amd64") \
                or (flavour == "cloud-amd64" and vm.release.endswith("-cloud-amd64")):
            return vm
    pytest.fail(f"no lab VM runs a {flavour} kernel: {[vm.release for vm in lab_vms]}")


@pytest.mark.parametrize("flavour", ["amd64", "cloud-amd64"])
@pytest.mark.parametrize("case", [c for c in CASES if c.kind == "fail"], ids=lambda c: c.name)
def test_refused_cases_say_why_and_write_nothing(case: Case, flavour, lab_vms, artifacts):
    vm = _host(lab_vms, flavour)
    out = artifacts / vm.release / case.name
    proc = build(case, vm.release, out)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    for pattern in case.expect:
        assert re.search(pattern, proc.stderr, re.IGNORECASE), \
            f"{case.name}: {pattern!r} not in the error:\n{proc.stderr}"
    assert not list(out.glob("*.ko")), "a refused build must not write a module"


@pytest.mark.parametrize("flavour", ["amd64", "cloud-amd64"])
@pytest.mark.parametrize("case", [c for c in CASES if c.kind != "fail"], ids=lambda c: c.name)
def test_case_builds_loads_and_passes_its_check(case: Case, flavour, lab_vms, lab_inventory,
                                               artifacts):
    vm = _host(lab_vms, flavour)
    out = artifacts / vm.release / case.name
    proc = build(case, vm.release, out)
    assert proc.returncode == 0, proc.stderr
    module = out / f"{case.module_name}.ko"
    assert module.is_file()
    play = subprocess.run(
        ["ansible-playbook", "-i", str(lab_inventory), "--limit", vm.name, str(PLAYBOOK),
         "-e", f"case_module={module}", "-e", f"case_name={case.module_name}",
         "-e", f"case_check={case.check}", "-e", f"case_setup={case.setup or ''}",
         "-e", f"case_loadfail={case.kind == 'loadfail'}"],
        capture_output=True, text=True, timeout=900)
    assert play.returncode == 0, play.stdout[-6000:] + play.stderr[-2000:]
