# SPDX-License-Identifier: GPL-3.0-or-later
"""livepatch.yml end to end on three lab VMs with three different kernels, as a user runs it:
a mixed fleet of Debian 12 (6.1, amd64 and cloud-amd64) and Debian 13 (6.12, a trixie
guest), so every run also builds with two toolchains (gcc-12 here, trixie's gcc-14 in a
build root) and the report names each host's distribution.

One playbook run per step, in order (each test depends on the state the previous one
left): a dry run, roll the example patch out (exactly one build per distinct kernel,
batches that follow the plan, gates, report), rerun and status from the installed
collection (nothing built, nothing changed), a failing probe within the failure budget,
the rollback (livepatch_state=absent), a failing kernel-log gate that halts the rollout
after the canary, a patch one kernel cannot build, and its rollback with an unreachable
host in the inventory. Nine runs: each costs minutes of Ansible tasks under TCG.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest
import yaml

from tests.installed import install_collection
from tests.vm.fleet import (
    ANSIBLE_PLAYBOOK,
    EXAMPLE_PATCH,
    EXAMPLE_PROBE,
    REPO,
    batches,
    fleet_of,
    hosts_of,
    livepatch,
    livepatch_argv,
    probe,
    recap,
)
from tests.vm.playbook import play_env

PATCH = EXAMPLE_PATCH
# Changes sound/core/init.c: built (as snd.ko) by the amd64 configuration, not by cloud.
SOUND_PATCH = REPO / "tests" / "vm" / "patches" / "sound-card-example.patch"
PROBE = EXAMPLE_PROBE
NAME = "klp_rollout_example"


FLEET = ("newest-6.1-amd64", "newest-6.1-cloud-amd64", "newest-13-amd64")

# The session boots the Debian 12 VMs with the others; the trixie one is booted when the
# fleet fixture first asks for it (a VM kept for the whole session would only idle).
pytestmark = pytest.mark.lab_kernels(*FLEET[:2])


@pytest.fixture(scope="module")
def fleet(lab, lab_inventory, tmp_path_factory) -> dict:
    return fleet_of(lab, FLEET, lab_inventory, tmp_path_factory.mktemp("rollout"), NAME)


@pytest.fixture(scope="module")
def installed(fleet) -> dict:
    """The collection as a user installs it (ansible-galaxy collection build + install),
    and a directory outside the checkout to run it from, holding the example patch."""
    base = fleet["base"] / "galaxy"
    install_collection(base)
    work = base / "work"
    work.mkdir()
    shutil.copy(PATCH, work / PATCH.name)
    return {"env": play_env(base / "installed"), "work": work}


def test_dry_run_of_a_patch_not_built_yet_predicts_and_changes_nothing(fleet):
    """--check before anything is built: no build, nothing loaded, and the run's report
    (its own directory, marked check mode) predicts a build and a load on every host."""
    proc, report_dir = livepatch(fleet, "dry-run", options=("--check",),
                                 livepatch_probes=[PROBE])
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert not list(fleet["artifacts"].glob(f"*/{NAME}.ko"))  # nothing built
    assert os.readlink(report_dir / "latest").endswith(f"-{NAME}-enabled-check")
    report = json.loads((report_dir / "latest" / "report.json").read_text())
    assert report["check_mode"] is True and report["success"] is True
    for host in fleet["hosts"]:
        entry = hosts_of(report_dir)[host]
        assert (entry["status"], entry["changed"]) == ("ok", True), entry
        assert "would be built for this kernel, then loaded" in entry["reason"]
        assert probe(fleet, host) != 0  # nothing loaded


def test_rollout_patches_every_host(fleet):
    proc, report_dir = livepatch(fleet, "apply", livepatch_probes=[PROBE])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]

    report = json.loads((report_dir / "latest" / "report.json").read_text())
    assert report["success"] is True
    assert report["summary"]["ok"] == len(fleet["hosts"])
    assert sorted(report["build"]["built"]) == sorted(fleet["hosts"].values())  # one each
    assert report["build"]["skipped"] == []
    assert len(list(fleet["artifacts"].rglob("*.ko"))) == 3
    # the plan [1, "25%", "100%"] on three hosts: a canary, then one, then the last one
    plan = batches(proc)
    assert [len(batch) for batch in plan] == [1, 1, 1], plan
    assert sorted(sum(plan, [])) == sorted(fleet["hosts"])
    for host, release in fleet["hosts"].items():
        entry = hosts_of(report_dir)[host]
        assert entry["kernel_release"] == release
        assert (entry["status"], entry["patch_state"], entry["verified"]) == ("ok", "enabled", True)
        assert "K" in entry["taint"]
        assert probe(fleet, host) == 0
        # one build per kernel, each with the kernel's own compiler
        manifest = json.loads((fleet["artifacts"] / release / f"{NAME}.json").read_text())
        debian = "debian-13" if "+deb13-" in release else "debian-12"
        assert (entry["distribution"], manifest["distribution"]) == (debian, debian)
        assert ("gcc-14" in manifest["compiler"]) == (debian == "debian-13"), manifest

    suite = ET.parse(report_dir / "latest" / "report.xml").getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert set(cases) == set(fleet["hosts"])
    assert all(list(case) == [] for case in cases.values())  # no failure, error or skip

    page = (report_dir / "latest" / "report.html").read_text()
    assert all(f"<td>{host}</td>" in page for host in fleet["hosts"])
    assert "all hosts OK" in page
    # What the gates saw, per host, and what was built, per kernel.
    assert page.count("<details><summary>evidence</summary>") == len(fleet["hosts"])
    assert f"probe <code>{PROBE}</code>: exit 0" in page
    assert "livepatch: enabling patch" in page  # the kernel's own line, captured
    assert all(f"<tr><td>{release}</td><td>vmlinux:cmdline_proc_show</td>" in page
               for release in fleet["hosts"].values())


def test_rerun_from_the_installed_collection_changes_nothing(fleet, installed):
    """The rerun is `ansible-playbook klp.livepatch.livepatch` from the installed collection,
    in a directory outside the checkout: it finds the modules the first run built (same
    build key), builds nothing and changes nothing."""
    argv, report_dir = livepatch_argv(fleet, "rerun", livepatch_probes=[PROBE],
                                      livepatch_patches=[PATCH.name],
                                      livepatch_report_query="hosts[?changed].host")
    argv[argv.index(str(REPO / "livepatch.yml"))] = "klp.livepatch.livepatch"
    proc = subprocess.run(argv, capture_output=True, text=True, env=installed["env"],
                          cwd=installed["work"], check=False, timeout=3600)
    (fleet["base"] / "rerun.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads((report_dir / "latest" / "report.json").read_text())
    assert report["build"]["built"] == []
    assert sorted(report["build"]["skipped"]) == sorted(set(fleet["hosts"].values()))
    assert report["summary"]["ok"] == len(fleet["hosts"])
    assert not any(entry["changed"] for entry in report["hosts"])
    counters = recap(proc)
    assert all(counters[host]["changed"] == 0 for host in fleet["hosts"]), counters
    assert '"verify_report.query_result": []' in proc.stdout


def test_fleet_status_shows_the_patch_everywhere(fleet, installed):
    """klp.livepatch.status (read only), from the installed collection, on the patched
    fleet: every host has the patch enabled, its functions counted; nothing changed."""
    report_dir = fleet["base"] / "status"
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(fleet["inventory"]), "klp.livepatch.status",
         "-e", json.dumps({"livepatch_hosts": ":".join(fleet["hosts"]),
                           "livepatch_become": False, "livepatch_report_dir": str(report_dir)})],
        capture_output=True, text=True, env=installed["env"], check=False,
        cwd=installed["work"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert all(c["changed"] == 0 for c in recap(proc).values())
    [run] = [p for p in report_dir.iterdir() if p.name.endswith("-status")]
    report = json.loads((run / "report.json").read_text())
    assert {h["host"] for h in report["hosts"]} == set(fleet["hosts"])
    for entry in report["hosts"]:
        assert entry["kernel_release"] == fleet["hosts"][entry["host"]]
        [loaded] = [p for p in entry["patches"] if p["name"] == NAME]
        assert loaded["state"] == "enabled" and loaded["functions"] >= 1


def test_failures_within_budget_continue(fleet):
    """One host of three fails in a 100% batch with max_fail_percentage 50: the run goes on
    to verify, and the final report has the failed host beside the patched ones."""
    cloud = [host for host, release in fleet["hosts"].items() if "cloud" in release]
    assert len(cloud) == 1 and len(fleet["hosts"]) == 3
    proc, report_dir = livepatch(fleet, "budget", livepatch_batches=["100%"],
                                 livepatch_max_fail_percentage=50,
                                 livepatch_probes=[PROBE, "grep -qv cloud /proc/version"],
                                 livepatch_rollback_failed_hosts=True)
    assert proc.returncode == 2, proc.stdout[-6000:]  # ansible-playbook: a host failed
    assert "Verify every host and write the fleet report" in proc.stdout
    hosts = hosts_of(report_dir)
    assert (hosts[cloud[0]]["status"], hosts[cloud[0]]["gate"]) == ("failed", "probes")
    assert hosts[cloud[0]]["rolled_back"] is True
    for other in (host for host in fleet["hosts"] if host != cloud[0]):
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


def test_failed_gate_halts_and_rolls_back(fleet):
    """On the rolled-back fleet, treat the kernel's own "enabling patch" line as bad: the
    canary fails the kernel_log gate with that line as the reason and is rolled back, and
    the rollout halts there: the two other hosts are not attempted (nothing loaded)."""
    proc, report_dir = livepatch(fleet, "gate", livepatch_batches=[1, "100%"],
                                 livepatch_rollback_failed_hosts=True,
                                 rollout_kernel_log_patterns=["enabling patch"])
    assert proc.returncode != 0
    hosts = hosts_of(report_dir)
    by_status: dict[str, list[str]] = {}
    for host, entry in hosts.items():
        by_status.setdefault(entry["status"], []).append(host)
    assert sorted(by_status) == ["failed", "not_attempted"], hosts
    [failed_host] = by_status["failed"]
    assert len(by_status["not_attempted"]) == 2  # halted after the canary batch
    failed = hosts[failed_host]
    assert (failed["gate"], failed["rolled_back"]) == ("kernel_log", True)
    assert f"livepatch: enabling patch '{NAME}'" in failed["reason"]
    assert all(probe(fleet, host) != 0 for host in fleet["hosts"])  # rolled back, untouched

    suite = ET.parse(report_dir / "latest" / "report.xml").getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.findall("testcase")}
    assert cases[failed_host].find("failure").get("message").startswith("kernel_log: ")
    assert all(cases[host].find("skipped") is not None for host in by_status["not_attempted"])


def test_a_kernel_whose_build_fails_fails_only_its_hosts(fleet):
    """The example patch plus a change to a sound file, which the cloud configuration does
    not build: the two other kernels are built (side by side) and patched, the cloud host
    fails gate build with the builder's reason, and the report lists all three."""
    cloud = [host for host, release in fleet["hosts"].items() if "cloud" in release]
    assert len(cloud) == 1 and len(fleet["hosts"]) == 3
    name = "klp_rollout_partial"
    proc, report_dir = livepatch(fleet, "partial", livepatch_name=name,
                                 livepatch_patches=[str(PATCH), str(SOUND_PATCH)],
                                 livepatch_batches=["100%"], livepatch_max_fail_percentage=50,
                                 livepatch_probes=[PROBE])
    assert proc.returncode == 2, proc.stdout[-6000:]  # ansible-playbook: a host failed
    report = json.loads((report_dir / "latest" / "report.json").read_text())
    hosts = {entry["host"]: entry for entry in report["hosts"]}
    failed = hosts[cloud[0]]
    assert (failed["status"], failed["gate"], failed["rolled_back"]) == ("failed", "build", False)
    assert f"for {fleet['hosts'][cloud[0]]} failed" in failed["reason"]
    assert "sound/core/init.c is not built in this configuration" in failed["reason"]
    assert list(report["build"]["failed_kernels"]) == [fleet["hosts"][cloud[0]]]
    assert probe(fleet, cloud[0]) != 0  # nothing loaded there
    others = [host for host in fleet["hosts"] if host != cloud[0]]
    for host in others:
        assert (hosts[host]["status"], hosts[host]["patch_state"]) == ("ok", "enabled"), host
        assert probe(fleet, host) == 0


def test_rollback_with_an_unreachable_host_reports_it(fleet):
    """The partial rollout's rollback, with a fourth host that does not answer in the
    inventory: every lab host loses the patch, and the report (and the JUnit file) has
    the fourth as unreachable."""
    inventory = yaml.safe_load(fleet["inventory"].read_text())
    lab_hosts = inventory["all"]["children"]["lab"]["hosts"]
    ghost = dict(lab_hosts[next(iter(fleet["hosts"]))], ansible_port=1)
    ghost["ansible_ssh_common_args"] += " -o ConnectTimeout=5"
    lab_hosts["klp-ghost"] = ghost
    path = fleet["base"] / "ghost-inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    proc, report_dir = livepatch(fleet, "partial-rollback", inventory=path,
                                 livepatch_name="klp_rollout_partial",
                                 livepatch_state="absent", livepatch_patches=[],
                                 livepatch_hosts=":".join([*fleet["hosts"], "klp-ghost"]))
    assert proc.returncode == 4, proc.stdout[-6000:]  # ansible-playbook: a host unreachable
    hosts = hosts_of(report_dir)
    assert (hosts["klp-ghost"]["status"], hosts["klp-ghost"]["gate"]) == ("unreachable",
                                                                          "reachable")
    for host in fleet["hosts"]:
        assert (hosts[host]["status"], hosts[host]["patch_state"]) == ("ok", "absent"), host
        assert probe(fleet, host) != 0
    suite = ET.parse(report_dir / "latest" / "report.xml").getroot().find("testsuite")
    assert suite.get("errors") == "1"
