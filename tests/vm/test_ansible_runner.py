# SPDX-License-Identifier: GPL-3.0-or-later
"""livepatch.yml through ansible-runner's Python API, from a private data directory laid
out as AWX lays one out for a job, on one of the session's lab VMs: the rollout, then
the rollback that leaves the host clean.

AWX gives ansible-runner a directory with project/ (the synced project: the playbook and
the patches it names relative to the project root), inventory/hosts, env/extravars (the
template's extra variables and the survey answers), env/settings and env/envvars; it reads
the result back from runner's status, stats and job events, as these tests do.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import ansible_runner
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PATCH = "examples/patches/cmdline-example.patch"  # relative to the project, as in the survey
PROBE = "grep -q klp.example=1 /proc/cmdline"
NAME = "klp_awx_runner"


@pytest.fixture(scope="module")
def job(session_vms, lab_inventory, tmp_path_factory) -> dict:
    """The private data directory, the hosts and where artifacts and reports go."""
    base = tmp_path_factory.mktemp("ansible-runner")
    private = base / "private"
    project = private / "project"
    (project / PATCH).parent.mkdir(parents=True)
    shutil.copy(REPO / "livepatch.yml", project)  # imports playbooks/livepatch.yml
    shutil.copytree(REPO / "playbooks", project / "playbooks")
    shutil.copy(REPO / PATCH, project / PATCH)
    # AWX installs the collections a project requires under requirements_collections/
    # and puts it on ANSIBLE_COLLECTIONS_PATH; here it holds a link to the checkout.
    collections = private / "requirements_collections" / "ansible_collections" / "klp"
    collections.mkdir(parents=True)
    (collections / "livepatch").symlink_to(REPO)

    # One host: what is proven here is the AWX way of running the playbook; the fleet
    # itself (batches, several kernels) is tests/vm/test_rollout.py's.
    hosts = {vm.name: vm.release for vm in session_vms[:1]}
    lab = yaml.safe_load(Path(lab_inventory).read_text())["all"]["children"]["lab"]["hosts"]
    (private / "inventory").mkdir()
    (private / "inventory" / "hosts").write_text(yaml.safe_dump(
        {"all": {"children": {"lab": {"hosts": {h: lab[h] for h in hosts}}}}}))
    (private / "env").mkdir()
    (private / "env" / "settings").write_text(yaml.safe_dump(
        {"job_timeout": 3600, "suppress_ansible_output": True}))
    (private / "env" / "envvars").write_text(yaml.safe_dump({
        "ANSIBLE_COLLECTIONS_PATH": str(private / "requirements_collections"),
        # the EE has ansible-playbook on PATH; here it is the venv's
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1"}))
    state = {"private": private, "hosts": hosts, "artifacts": base / "artifacts",
             "reports": base / "reports", "clean": False}
    yield state
    if not state["clean"]:  # a failed test must not leave the VMs patched
        run(state, "cleanup", livepatch_state="absent", livepatch_patches=[])


def run(job: dict, ident: str, **extra) -> ansible_runner.Runner:
    """One job: write env/extravars as AWX would, run livepatch.yml, return the Runner."""
    extravars = {"livepatch_name": NAME, "livepatch_patches": [PATCH],
                 "livepatch_become": False, "livepatch_probes": [PROBE],
                 "livepatch_hosts": ":".join(job["hosts"]),
                 "livepatch_artifact_dir": str(job["artifacts"]),
                 "livepatch_report_dir": str(job["reports"] / ident), **extra}
    (job["private"] / "env" / "extravars").write_text(json.dumps(extravars))
    return ansible_runner.run(private_data_dir=str(job["private"]), playbook="livepatch.yml",
                              ident=ident, quiet=True)


def ok_events(runner: ansible_runner.Runner, action: str) -> list[dict]:
    """event_data of the runner_on_ok events of the tasks that run ACTION."""
    return [e["event_data"] for e in runner.events
            if e["event"] == "runner_on_ok" and e["event_data"].get("resolved_action") == action]


def explain(runner: ansible_runner.Runner) -> str:
    return runner.stdout.read()[-6000:]


def test_rollout_through_ansible_runner(job):
    runner = run(job, "rollout")
    assert (runner.status, runner.rc) == ("successful", 0), explain(runner)

    stats = runner.stats
    assert not stats["failures"] and not stats["dark"], stats
    assert all(stats["changed"].get(host, 0) > 0 for host in job["hosts"]), stats
    assert any(e["event"] == "playbook_on_stats" for e in runner.events)

    patched = ok_events(runner, "klp.livepatch.patch")
    assert sorted(e["host"] for e in patched) == sorted(job["hosts"]), explain(runner)
    for event in patched:
        assert event["task_action"] == "klp.livepatch.patch"
        assert event["res"]["changed"] is True
        assert [p["rc"] for p in event["res"]["probes"]] == [0]  # the patch is live

    [build] = ok_events(runner, "klp.livepatch.build")  # run_once: one event for the play
    assert build["res"]["_ansible_delegated_vars"]["ansible_host"] == "localhost"
    assert sorted(build["res"]["built"]) == sorted(set(job["hosts"].values()))
    for release in job["hosts"].values():
        assert (job["artifacts"] / release / f"{NAME}.ko").is_file(), release

    report = json.loads((job["reports"] / "rollout" / "latest" / "report.json").read_text())
    assert report["success"] is True and report["summary"]["ok"] == len(job["hosts"])


def test_rollback_through_ansible_runner(job):
    runner = run(job, "rollback", livepatch_state="absent", livepatch_patches=[],
                 livepatch_probes=[f"sh -c '! {PROBE}'"])  # probes run without a shell
    assert (runner.status, runner.rc) == ("successful", 0), explain(runner)
    assert not runner.stats["failures"] and not runner.stats["dark"], runner.stats
    removed = ok_events(runner, "klp.livepatch.patch")
    assert sorted(e["host"] for e in removed) == sorted(job["hosts"]), explain(runner)
    assert all(e["res"]["changed"] and e["res"]["state"] == "absent" for e in removed)
    assert all([p["rc"] for p in e["res"]["probes"]] == [0] for e in removed)  # not live
    assert ok_events(runner, "klp.livepatch.build") == []  # a rollback builds nothing
    job["clean"] = True
