# SPDX-License-Identifier: GPL-3.0-or-later
"""livepatch.yml end to end on the lab VMs, the way a user runs it.

One playbook run per step, in order (each test depends on the state the previous one
left): roll the example patch out (build for each distinct kernel, batches, gates,
report), rerun (nothing built, nothing changed), a failing probe halts the rollout
after the first host and rolls that host back, then the rollback run
(livepatch_state=absent) removes the patch everywhere.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"
ANSIBLE = Path(sys.executable).parent / "ansible"
PATCH = REPO / "examples" / "patches" / "cmdline-example.patch"
PROBE = "grep -q klp.example=1 /proc/cmdline"
NAME = "klp_rollout_example"


@pytest.fixture(scope="module")
def fleet(lab_vms, lab_inventory, tmp_path_factory) -> dict:
    """Hosts (the session's default VMs), inventory, collection path and output dirs."""
    base = tmp_path_factory.mktemp("rollout")
    collections = base / "collections"
    (collections / "ansible_collections" / "klp").mkdir(parents=True)
    (collections / "ansible_collections" / "klp" / "livepatch").symlink_to(REPO)
    return {"hosts": {vm.name: vm.release for vm in lab_vms}, "inventory": lab_inventory,
            "collections": collections, "artifacts": base / "artifacts", "base": base}


def env(fleet: dict) -> dict:
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(fleet["collections"]),
                ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1",
                ANSIBLE_STDOUT_CALLBACK="default")


def livepatch(fleet: dict, step: str, inventory: Path | None = None, **extra
              ) -> tuple[subprocess.CompletedProcess, Path]:
    """ansible-playbook livepatch.yml on the fleet; returns the run and its report dir."""
    report = fleet["base"] / step
    variables = {"livepatch_name": NAME, "livepatch_patches": [str(PATCH)],
                 "livepatch_hosts": ":".join(fleet["hosts"]), "livepatch_become": False,
                 "livepatch_artifact_dir": str(fleet["artifacts"]),
                 "livepatch_report_dir": str(report), **extra}
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inventory or fleet["inventory"]),
                           str(REPO / "livepatch.yml"), "-e", json.dumps(variables)],
                          capture_output=True, text=True, env=env(fleet), check=False,
                          cwd=REPO, timeout=3600)
    (fleet["base"] / f"{step}.log").write_text(proc.stdout + proc.stderr)
    return proc, report


def recap(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    found = {}
    for host, counters in re.findall(r"^(\S+)\s+: (ok=.*)$", proc.stdout, re.M):
        found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    return found


def hosts_of(report_dir: Path) -> dict[str, dict]:
    report = json.loads((report_dir / "report.json").read_text())
    return {entry["host"]: entry for entry in report["hosts"]}


def probe(fleet: dict, host: str) -> int:
    """Exit status of the example patch's check on HOST."""
    proc = subprocess.run([str(ANSIBLE), "-i", str(fleet["inventory"]), host, "-m",
                           "ansible.builtin.command", "-a", PROBE],
                          capture_output=True, text=True, env=env(fleet), check=False,
                          timeout=300)
    return proc.returncode


def test_rollout_patches_every_host(fleet):
    proc, report_dir = livepatch(fleet, "apply", livepatch_probes=[PROBE])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    report = json.loads((report_dir / "report.json").read_text())
    assert report["success"] is True
    assert report["summary"]["ok"] == len(fleet["hosts"])
    assert sorted(report["build"]["built"] + report["build"]["skipped"]) == sorted(
        set(fleet["hosts"].values()))
    for host, release in fleet["hosts"].items():
        entry = hosts_of(report_dir)[host]
        assert entry["kernel_release"] == release
        assert (entry["status"], entry["patch_state"], entry["verified"]) == ("ok", "enabled", True)
        assert "K" in entry["taint"]
        assert probe(fleet, host) == 0

    suite = ET.parse(report_dir / "report.xml").getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert set(cases) == set(fleet["hosts"])
    assert all(list(case) == [] for case in cases.values())  # no failure, error or skip

    page = (report_dir / "report.html").read_text()
    assert all(f"<td>{host}</td>" in page for host in fleet["hosts"])
    assert "all hosts OK" in page


def test_rerun_changes_nothing(fleet):
    proc, report_dir = livepatch(fleet, "rerun", livepatch_probes=[PROBE],
                                 livepatch_report_query="hosts[?changed].host")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads((report_dir / "report.json").read_text())
    assert report["build"]["built"] == []
    assert sorted(report["build"]["skipped"]) == sorted(set(fleet["hosts"].values()))
    assert report["summary"]["ok"] == len(fleet["hosts"])
    assert not any(entry["changed"] for entry in report["hosts"])
    counters = recap(proc)
    assert all(counters[host]["changed"] == 0 for host in fleet["hosts"]), counters
    assert '"verify_report.query_result": []' in proc.stdout


def test_failed_gate_halts_and_rolls_back(fleet):
    proc, report_dir = livepatch(fleet, "gate", livepatch_batches=[1, "100%"],
                                 livepatch_probes=[PROBE, "test -e /klp-no-such-file"],
                                 livepatch_rollback_failed_hosts=True)
    assert proc.returncode != 0
    hosts = hosts_of(report_dir)
    by_status = {entry["status"]: host for host, entry in hosts.items()}
    assert sorted(by_status) == ["failed", "not_attempted"], hosts
    failed = hosts[by_status["failed"]]
    assert (failed["gate"], failed["rolled_back"]) == ("probes", True)
    assert "test -e /klp-no-such-file" in failed["reason"]
    assert probe(fleet, by_status["failed"]) != 0  # rolled back
    assert probe(fleet, by_status["not_attempted"]) == 0  # never touched: still patched

    suite = ET.parse(report_dir / "report.xml").getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert cases[by_status["failed"]].find("failure").get("message").startswith("probes: ")
    assert cases[by_status["not_attempted"]].find("skipped") is not None


def test_failures_within_budget_continue(fleet):
    """One host of two fails in a 100% batch with max_fail_percentage 50: the run goes on
    to verify, and the final report has the failed host beside the patched one."""
    cloud = [host for host, release in fleet["hosts"].items() if "cloud" in release]
    if len(fleet["hosts"]) != 2 or len(cloud) != 1:
        pytest.skip("needs one cloud and one generic kernel VM")
    proc, report_dir = livepatch(fleet, "budget", livepatch_batches=["100%"],
                                 livepatch_max_fail_percentage=50,
                                 livepatch_probes=[PROBE, "grep -qv cloud /proc/version"],
                                 livepatch_rollback_failed_hosts=True)
    assert proc.returncode == 2, proc.stdout[-6000:]  # ansible-playbook: a host failed
    assert "Verify every host and write the fleet report" in proc.stdout
    hosts = hosts_of(report_dir)
    assert (hosts[cloud[0]]["status"], hosts[cloud[0]]["gate"]) == ("failed", "probes")
    assert hosts[cloud[0]]["rolled_back"] is True
    other = next(host for host in fleet["hosts"] if host != cloud[0])
    assert (hosts[other]["status"], hosts[other]["verified"]) == ("ok", True)


def test_rollback_restores_every_host(fleet):
    proc, report_dir = livepatch(fleet, "rollback", livepatch_state="absent",
                                 livepatch_patches=[])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    for host in fleet["hosts"]:
        entry = hosts_of(report_dir)[host]
        assert (entry["status"], entry["patch_state"]) == ("ok", "absent")
        assert probe(fleet, host) != 0
    assert "klp.livepatch.build : Build the livepatch" not in proc.stdout


def test_unreachable_host_is_reported(fleet):
    """A host that does not answer is in the report (and the JUnit file) as unreachable."""
    inventory = yaml.safe_load(fleet["inventory"].read_text())
    lab_hosts = inventory["all"]["children"]["lab"]["hosts"]
    ghost = dict(lab_hosts[next(iter(fleet["hosts"]))], ansible_port=1)
    ghost["ansible_ssh_common_args"] += " -o ConnectTimeout=5"
    lab_hosts["klp-ghost"] = ghost
    path = fleet["base"] / "ghost-inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    proc, report_dir = livepatch(fleet, "ghost", inventory=path, livepatch_state="absent",
                                 livepatch_patches=[],
                                 livepatch_hosts=":".join([*fleet["hosts"], "klp-ghost"]))
    assert proc.returncode == 4, proc.stdout[-6000:]  # ansible-playbook: a host unreachable
    hosts = hosts_of(report_dir)
    ghost_entry = hosts["klp-ghost"]
    assert (ghost_entry["status"], ghost_entry["gate"]) == ("unreachable", "reachable")
    assert all(hosts[host]["status"] == "ok" for host in fleet["hosts"])
    suite = ET.parse(report_dir / "report.xml").getroot().find("testsuite")
    assert suite.get("errors") == "1"
