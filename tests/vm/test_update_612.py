# SPDX-License-Identifier: GPL-3.0-or-later
"""livepatch_update_to=latest on Debian 12's 6.12 line: a host one upload behind (an older
6.12.N+deb12 kernel) and a current one, as an operator runs it.

Each 6.12 upload of Debian 12 is an upstream stable release: hundreds of changed files
(the first tried had 458 fix units, 334 of them built by the configuration, 20 to 70 s
each), so the cold build takes hours on two cores. That is too long for `make test`;
run it with KLP_VM_UPDATE_612=1 (the builder's unit results are cached under the
update's work directory, so a second run with the same builder code is minutes).
"""

from __future__ import annotations

import os

import pytest

from tests.vm.fleet import failed_play, fleet_of, hosts_of, recap
from tests.vm.test_update import NAME, live_functions, manifest_of, shell, update

FLEET = ("older-6.12-amd64", "newest-6.12-amd64")
COLD_HOURS = 4  # the first run builds the whole update (2 h for 6.12.115 -> 117 here)

pytestmark = pytest.mark.skipif(os.environ.get("KLP_VM_UPDATE_612") != "1",
                                reason="hours of building: KLP_VM_UPDATE_612=1")


@pytest.fixture(scope="module")
def fleet(lab, lab_inventory, tmp_path_factory) -> dict:
    return fleet_of(lab, FLEET, lab_inventory, tmp_path_factory.mktemp("update612"), NAME)


def loaded_objects(fleet: dict, host: str, objects: dict) -> dict:
    """The manifest's objects that are vmlinux or a module this guest can load (a driver
    for hardware QEMU lacks may refuse to); the others are named in the failure."""
    names = [obj for obj in objects if obj != "vmlinux"]
    proc = shell(fleet, host, "for m in " + " ".join(names) + "; do modprobe $m 2>/dev/null; "
                 "test -d /sys/module/$m && echo $m; done; true")
    loadable = set(proc.stdout.split())
    return {obj: fns for obj, fns in objects.items() if obj == "vmlinux" or obj in loadable}


def test_update_brings_the_older_612_host_to_the_newest_upload(fleet):
    older, newest = fleet["order"]
    proc, report_dir = update(fleet, "update", timeout=COLD_HOURS * 3600)
    assert proc.returncode == 0, failed_play(proc, report_dir)
    hosts = hosts_of(report_dir)
    target = hosts[newest]["package_version"]
    assert (hosts[newest]["status"], hosts[newest]["update"]["state"]) == ("current", "current")

    entry = hosts[older]
    assert (entry["status"], entry["patch_state"], entry["verified"]) == \
        ("ok", "enabled", True), entry
    update_info = entry["update"]
    assert (update_info["from"], update_info["to"]) == (entry["package_version"], target)
    assert entry["update"]["live_units"], entry
    manifest = manifest_of(fleet, fleet["hosts"][older])
    assert manifest["replace"] is True and manifest["update"]["state"] == "update"
    objects = loaded_objects(fleet, older, manifest["objects"])
    names = {fn["name"] for fns in objects.values() for fn in fns}
    assert names
    missing = names - live_functions(fleet, older, objects)
    assert not missing, f"not live: {sorted(missing)[:20]}"
    kernel_log = shell(fleet, older, "dmesg | grep -E 'WARNING|BUG|Oops' || true")
    bad_lines = [line for line in kernel_log.stdout.splitlines()[1:] if line.strip()]
    assert not bad_lines, kernel_log.stdout  # line 1 is ansible's "host | CHANGED" header


def test_update_612_rerun_changes_nothing(fleet):
    proc, report_dir = update(fleet, "rerun")
    assert proc.returncode == 0, failed_play(proc, report_dir)
    assert all(counters["changed"] == 0 for counters in recap(proc).values())


def test_update_612_rollback_removes_the_module(fleet):
    proc, report_dir = update(fleet, "rollback", livepatch_state="absent")
    assert proc.returncode == 0, failed_play(proc, report_dir)
    for host in fleet["hosts"]:
        assert hosts_of(report_dir)[host]["patch_state"] == "absent"
        loaded = shell(fleet, host, f"ls /sys/kernel/livepatch | grep -c '^{NAME}_' || true")
        assert loaded.stdout.strip().splitlines()[-1] == "0", loaded.stdout
