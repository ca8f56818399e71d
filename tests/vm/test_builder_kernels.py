# SPDX-License-Identifier: GPL-3.0-or-later
"""The builder beyond the newest 6.1: a 6.12 kernel and an older 6.1 ABI.

For each: build a corpus patch for exactly the running kernel, prove the manifest
describes that kernel (release, package version, build-id from the target's own
/sys/kernel/notes) and run the case on the VM through Ansible.
"""

from __future__ import annotations

import json

import pytest

from lab.kernels import release_series, resolve
from tests.vm.corpus import CORPUS, REPO, cases, run_on_vm
from tests.vm.expect import running_build_id

SPECS = ("newest-6.12-amd64", "older-6.1-amd64")
CMDLINE = [c for c in cases(CORPUS / "debian-12") if c.name == "cmdline-suffix"] \
    if (CORPUS / "debian-12").is_dir() else []
# The project's own cases for Debian 12's 6.12 line (6.12-only link-time rewrites).
OWN_6_12 = cases(REPO / "tests" / "corpus" / "debian-12-6.12")

# SPECS are booted by the tests and go down after the module (conftest).
pytestmark = pytest.mark.skipif(not CMDLINE, reason="shared corpus not found")


@pytest.mark.parametrize("spec", SPECS)
def test_builds_and_loads_on_this_kernel(spec, lab, lab_inventory, tmp_path):
    release = resolve(spec)
    vm = next(v for v in lab.up([spec]) if v.release == release)
    builds, results = run_on_vm(vm, lab_inventory, tmp_path, CMDLINE)
    case = CMDLINE[0]
    assert builds[case.name].returncode == 0, builds[case.name].stderr
    manifest = json.loads((tmp_path / case.name / f"{case.module_name}.json").read_text())
    assert manifest["kernel_release"] == release
    assert manifest["vermagic"].startswith(release + " ")
    assert manifest["kernel_build_id"] == running_build_id(vm)
    assert vm.ssh(["cat", "/proc/version"], check=True).stdout.find(
        manifest["package_version"]) > 0
    assert results.get(case.module_name, "").startswith("OK:"), results


def test_own_6_12_cases_build_and_are_live(lab, lab_inventory, tmp_path):
    release = resolve("newest-6.12-amd64")
    vm = next(v for v in lab.up(["newest-6.12-amd64"]) if v.release == release)
    assert release_series(release) == "6.12" and OWN_6_12
    builds, results = run_on_vm(vm, lab_inventory, tmp_path, OWN_6_12)
    for case in OWN_6_12:
        assert builds[case.name].returncode == 0, builds[case.name].stderr
        assert results.get(case.module_name, "").startswith("OK:"), (case.name, results)
