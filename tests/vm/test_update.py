# SPDX-License-Identifier: GPL-3.0-or-later
"""livepatch.yml -e livepatch_update_to=latest on VMs two uploads behind, one behind and
current, as an operator runs it.

Each behind host gets one module built for its kernel that carries every live-patchable
change between its upload and the newest one (the host two behind gets at least the fix
units of the host one behind); every function of its manifest is live in tracefs
`enabled_functions`, once the module objects it patches are loaded. The current host gets
nothing and is reported current. A rerun builds and changes nothing; the rollback removes
the update modules everywhere.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.vm.fleet import (
    ANSIBLE_PLAYBOOK,
    REPO,
    ad_hoc,
    env,
    failed_play,
    fleet_of,
    hosts_of,
    recap,
)

FLEET = ("older-2-6.1-amd64", "older-6.1-amd64", "newest-6.1-amd64")
NAME = "klp_update"

# Booted when the module starts, down after it (conftest: _module_vms_go_down).


@pytest.fixture(scope="module")
def fleet(lab, lab_inventory, tmp_path_factory) -> dict:
    """In FLEET order: two uploads behind, one behind, newest."""
    return fleet_of(lab, FLEET, lab_inventory, tmp_path_factory.mktemp("update"), NAME)


def update(fleet: dict, step: str, timeout: int = 3600, **extra
           ) -> tuple[subprocess.CompletedProcess, Path]:
    report = fleet["base"] / step
    variables = {"livepatch_name": NAME, "livepatch_update_to": "latest",
                 "livepatch_hosts": ":".join(fleet["hosts"]), "livepatch_become": False,
                 "livepatch_artifact_dir": str(fleet["artifacts"]),
                 "livepatch_report_dir": str(report), **extra}
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(fleet["inventory"]),
                           str(REPO / "livepatch.yml"), "-e", json.dumps(variables)],
                          capture_output=True, text=True, env=env(fleet), check=False,
                          cwd=REPO, timeout=timeout)
    (fleet["base"] / f"{step}.log").write_text(proc.stdout + proc.stderr)
    return proc, report


def shell(fleet: dict, host: str, command: str) -> subprocess.CompletedProcess:
    return ad_hoc(fleet, host, "ansible.builtin.shell", command)


def manifest_of(fleet: dict, release: str) -> dict:
    [path] = list((fleet["artifacts"] / release).glob(f"{NAME}_*.json"))
    return json.loads(path.read_text())


def live_functions(fleet: dict, host: str, objects: dict[str, list[dict]]) -> set[str]:
    """Load the module objects the patch changes, then read enabled_functions."""
    modules = " ".join(sorted(obj for obj in objects if obj != "vmlinux"))
    proc = shell(fleet, host, f"for m in {modules}; do modprobe $m; done; "
                 "mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev "
                 "/sys/kernel/tracing; cat /sys/kernel/tracing/enabled_functions")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {line.split()[0] for line in proc.stdout.splitlines()[1:] if line.strip()}


def test_update_brings_each_host_to_the_newest_upload(fleet):
    two_behind, one_behind, newest = fleet["order"]
    proc, report_dir = update(fleet, "update")
    assert proc.returncode == 0, failed_play(proc, report_dir)
    hosts = hosts_of(report_dir)
    target = hosts[newest]["package_version"]

    assert (hosts[newest]["status"], hosts[newest]["update"]["state"]) == ("current", "current")
    assert not list((fleet["artifacts"] / fleet["hosts"][newest]).glob("*.ko"))
    units = {}
    for host in (two_behind, one_behind):
        entry = hosts[host]
        assert (entry["status"], entry["patch_state"], entry["verified"]) == \
            ("ok", "enabled", True), entry
        assert (entry["update"]["from"], entry["update"]["to"]) == \
            (entry["package_version"], target)
        manifest = manifest_of(fleet, fleet["hosts"][host])
        assert manifest["replace"] is True and manifest["update"]["state"] == "update"
        units[host] = set(entry["update"]["live_units"])
        assert units[host], entry
        names = {fn["name"] for fns in manifest["objects"].values() for fn in fns}
        missing = names - live_functions(fleet, host, manifest["objects"])
        assert not missing, f"{host}: not live: {missing}"
    # the host two uploads behind gets every fix the host one behind gets
    assert units[one_behind] <= units[two_behind]
    page = (report_dir / "latest" / "report.html").read_text()
    assert f"already runs {target}" in page


def test_update_rerun_changes_nothing(fleet):
    proc, report_dir = update(fleet, "rerun")
    assert proc.returncode == 0, failed_play(proc, report_dir)
    report = json.loads((report_dir / "latest" / "report.json").read_text())
    assert report["build"]["built"] == []
    counters = recap(proc)
    assert all(counters[host]["changed"] == 0 for host in fleet["hosts"]), counters


def test_update_rollback_removes_the_update_modules(fleet):
    proc, report_dir = update(fleet, "rollback", livepatch_state="absent")
    assert proc.returncode == 0, failed_play(proc, report_dir)
    for host in fleet["hosts"]:
        assert (hosts_of(report_dir)[host]["status"],
                hosts_of(report_dir)[host]["patch_state"]) == ("ok", "absent")
        loaded = shell(fleet, host, f"ls /sys/kernel/livepatch | grep -c '^{NAME}_' || true")
        assert loaded.stdout.strip().splitlines()[-1] == "0", loaded.stdout
