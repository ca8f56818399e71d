# SPDX-License-Identifier: GPL-3.0-or-later
"""livepatch.yml reads its inputs the way people type them, and refuses the rest before
any build or host contact (the hosts pattern matches nothing: no host is ever reached)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from plugins.filter.inputs import as_list, batch_plan, unknown_inputs
from tests.installed import install_collection

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def test_as_list_takes_a_string_as_one_item():
    assert as_list("fix.patch") == ["fix.patch"]
    assert as_list(["a", "b"]) == ["a", "b"]
    assert as_list("") == [] and as_list(None) == []
    assert as_list("ksoftirqd/*, cpuhp/*", split_commas=True) == ["ksoftirqd/*", "cpuhp/*"]


@pytest.mark.parametrize(("given", "plan"), [
    ("1,25%", [1, "25%"]), ([1, "25%", "100%"], [1, "25%", "100%"]), ("2", [2]),
    (["3", "50%"], [3, "50%"]), (" 1 , 100% ", [1, "100%"]),
])
def test_batch_plans_as_people_write_them(given, plan):
    assert batch_plan(given) == plan


@pytest.mark.parametrize("given", ["1,x", [0], ["0%"], ["150%"], [True], "", [-1]])
def test_bad_batch_plans_name_the_item(given):
    from ansible.errors import AnsibleFilterError

    with pytest.raises(AnsibleFilterError, match="livepatch_batches"):
        batch_plan(given)


def test_unknown_inputs_name_the_nearest():
    known = ["livepatch_persist", "livepatch_patches", "livepatch_name"]
    assert unknown_inputs("livepatch_pesist,livepatch_name", known) == [
        "livepatch_pesist is not an input of livepatch.yml; did you mean livepatch_persist?"]
    assert unknown_inputs(["livepatch_name"], known) == []
    assert "the inputs are" in unknown_inputs(["livepatch_zzzzzzzzzzzz"], known)[0]


@pytest.fixture(scope="module")
def playbook(tmp_path_factory):
    base = tmp_path_factory.mktemp("inputs")
    collections = base / "collections" / "ansible_collections" / "klp"
    collections.mkdir(parents=True)
    (collections / "livepatch").symlink_to(REPO)
    patch = base / "fix.patch"
    patch.write_text("--- a/f.c\n+++ b/f.c\n")

    def run(inventory: str = "localhost,", **variables) -> subprocess.CompletedProcess:
        extra = {"livepatch_name": "fix", "livepatch_hosts": "no_such_host_group",
                 "livepatch_report_dir": str(base / "report"), **variables}
        args = []
        for key, value in extra.items():  # as typed: -e key=value, strings
            args += ["-e", f"{key}={value}" if isinstance(value, str) else
                     json.dumps({key: value})]
        return subprocess.run(
            [str(ANSIBLE_PLAYBOOK), "-i", inventory, str(REPO / "livepatch.yml"), *args],
            capture_output=True, text=True, check=False, cwd=base, timeout=300,
            env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(base / "collections"),
                     ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="False"))
    run.patch = patch
    run.base = base
    return run


def test_a_patch_given_as_a_string_is_one_patch(playbook):
    proc = playbook(livepatch_patches=str(playbook.patch), livepatch_batches="1,25%")
    assert proc.returncode == 0, proc.stdout[-3000:]
    missing = playbook(livepatch_patches="missing.patch")
    assert missing.returncode != 0
    assert "missing: missing.patch)" in missing.stdout  # not "m, i, s, ..."


def test_a_bad_batch_plan_is_refused_before_any_build(playbook):
    proc = playbook(livepatch_patches=str(playbook.patch), livepatch_batches="1,x")
    assert proc.returncode != 0
    assert "livepatch_batches: 'x' is neither a number of hosts" in proc.stdout
    assert "Build the livepatch" not in proc.stdout


def test_a_misspelled_input_is_refused_naming_the_right_one(playbook):
    proc = playbook(livepatch_patches=str(playbook.patch), livepatch_pesist="true")
    assert proc.returncode != 0
    assert "livepatch_pesist is not an input of livepatch.yml; did you mean " \
        "livepatch_persist?" in proc.stdout


def test_a_fleet_that_does_not_answer_still_gets_its_report(playbook):
    """Every host unreachable (nothing listens on port 1 of loopback): no later play
    runs, yet this run's report exists, names each host, and latest points at it."""
    inventory = playbook.base / "dead.yml"
    inventory.write_text(
        "all:\n  hosts:\n    dead1: {ansible_host: 127.0.0.1, ansible_port: 1}\n"
        "    dead2: {ansible_host: 127.0.0.1, ansible_port: 1}\n")
    report_dir = playbook.base / "dead-report"
    proc = playbook(str(inventory), livepatch_patches=str(playbook.patch),
                    livepatch_hosts="all", livepatch_report_dir=str(report_dir))
    assert proc.returncode == 4, proc.stdout[-3000:]  # unreachable, as Ansible says it
    assert "Build the livepatch" not in proc.stdout
    [run] = [p for p in report_dir.iterdir() if p.name != "latest"]
    assert run.name.endswith("-fix-enabled")
    assert (report_dir / "latest").resolve() == run.resolve()
    report = json.loads((run / "report.json").read_text())
    assert {h["host"]: (h["status"], h["gate"]) for h in report["hosts"]} == {
        "dead1": ("unreachable", "reachable"), "dead2": ("unreachable", "reachable")}
    assert report["success"] is False


def test_the_installed_collection_runs_its_playbook(tmp_path):
    """ansible-galaxy collection build + install, then ansible-playbook
    klp.livepatch.livepatch from elsewhere, without the checkout: it validates its inputs,
    reads the (dead) fleet and writes the report in the current directory."""
    bindir = Path(sys.executable).parent
    env = install_collection(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    (work / "fix.patch").write_text("--- a/f.c\n+++ b/f.c\n")
    (work / "hosts.yml").write_text(
        "all:\n  hosts:\n    dead1: {ansible_host: 127.0.0.1, ansible_port: 1}\n")
    proc = subprocess.run([str(bindir / "ansible-playbook"), "-i", "hosts.yml",
                           "klp.livepatch.livepatch", "-e", "livepatch_name=fix",
                           "-e", "livepatch_patches=fix.patch"],
                          capture_output=True, text=True, check=False, cwd=work, timeout=300,
                          env=env)
    assert proc.returncode == 4, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((work / "livepatch-report" / "latest" / "report.json").read_text())
    assert [(h["host"], h["status"]) for h in report["hosts"]] == [("dead1", "unreachable")]
    assert str(REPO) not in proc.stdout  # nothing came from the checkout

    status = subprocess.run([str(bindir / "ansible-playbook"), "-i", "hosts.yml",
                             "klp.livepatch.status"], capture_output=True, text=True,
                            check=False, cwd=work, timeout=300, env=env)
    assert status.returncode == 4, status.stdout[-3000:] + status.stderr[-3000:]
    [run] = [p for p in (work / "livepatch-report").iterdir() if p.name.endswith("-status")]
    report = json.loads((run / "report.json").read_text())
    assert [(h["host"], h["status"]) for h in report["hosts"]] == [("dead1", "unreachable")]


def test_signing_inputs_need_each_other_and_existing_files(playbook):
    proc = playbook(livepatch_patches=str(playbook.patch), livepatch_sign_key="missing.pem")
    assert proc.returncode != 0
    assert "livepatch_sign_key with livepatch_sign_cert as existing files or neither " \
        "(got 'missing.pem', '')" in proc.stdout
    assert "Build the livepatch" not in proc.stdout
