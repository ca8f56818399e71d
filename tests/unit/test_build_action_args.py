# SPDX-License-Identifier: GPL-3.0-or-later
"""klp.livepatch.build: the builder command line it runs, the arguments it takes (from the
build request's one description, builder/request.py), and the update summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from builder.__main__ import parser
from builder.request import BuildRequest, action_spec
from plugins.action.build import ARGUMENT_SPEC, ActionModule, builder_outcome
from plugins.modules.build import DOCUMENTATION

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "build"

ARGS = {"name": "fix", "consistency": "default", "sign_key": None, "sign_cert": None,
        "replace": True, "update_to": None}


def test_patches_run_builder_build_once_per_kernel_with_if_changed():
    argv = ActionModule._argv(ARGS, [Path("/p/a.patch")], "6.1.0-57-amd64", Path("/o"))
    assert argv[2:4] == ["builder", "build"] and "--if-changed" in argv
    assert argv[argv.index("--patch") + 1] == "/p/a.patch"


def test_update_to_runs_builder_update_without_patches():
    argv = ActionModule._argv({**ARGS, "update_to": "latest", "consistency": "freeze"}, [],
                              "6.1.0-55-amd64", Path("/o"))
    assert argv[2:4] == ["builder", "update"]
    assert argv[argv.index("--to") + 1] == "latest"
    assert argv[argv.index("--consistency") + 1] == "freeze"
    assert "--patch" not in argv and "--if-changed" not in argv


def test_update_summary_counts_units_by_status():
    manifest = {"update": {"units": [
        {"name": "fs/ext4", "status": "live"},
        {"name": "mm", "status": "needs-reboot", "reason": "diff: layout"},
        {"name": "net", "status": "no-change"},
        {"name": "sound", "status": "not-in-config"}],
        "cves_live": ["CVE-1"], "cves_not_live": ["CVE-2"]}}
    outcome = {"from": "6.1.192-1", "to": "6.1.192-3", "state": "update"}
    assert ActionModule._update_summary(outcome, manifest) == {
        "from": "6.1.192-1", "to": "6.1.192-3", "state": "update", "live": ["fs/ext4"],
        "needs_reboot": [{"name": "mm", "reason": "diff: layout"}], "no_change": ["net"],
        "not_in_config": 1, "cves_live": ["CVE-1"], "cves_not_live": ["CVE-2"]}


def test_every_option_the_action_asks_for_reaches_the_builder():
    args = {**ARGS, "replace": False, "consistency": "freeze", "sign_key": "/k.pem",
            "sign_cert": "/c.x509"}
    assert set(action_spec()) <= set(args) | {"patches"}
    argv = ActionModule._argv(args, [Path("/p/a.patch"), Path("/p/b.patch")], "6.1.0-57-amd64",
                              Path("/o/6.1.0-57-amd64"), "6.1.192-2", check=True)
    assert argv[:3] == [sys.executable, "-m", "builder"]
    assert BuildRequest.from_args(parser().parse_args(argv[3:])) == BuildRequest(
        kernel="6.1.0-57-amd64", package_version="6.1.192-2", name="fix",
        patches=[Path("/p/a.patch"), Path("/p/b.patch")], output=Path("/o/6.1.0-57-amd64"),
        replace=False, consistency="freeze", sign_key=Path("/k.pem"),
        sign_cert=Path("/c.x509"), if_changed=True, check=True)


def test_the_module_documentation_matches_the_argument_spec():
    documented = yaml.safe_load(DOCUMENTATION)["options"]
    assert sorted(documented) == sorted(ARGUMENT_SPEC)
    for name, spec in ARGUMENT_SPEC.items():
        doc = documented[name]
        for attr in ("type", "elements", "choices", "default"):
            assert doc.get(attr) == spec.get(attr), (name, attr)
        assert bool(doc.get("required")) == bool(spec.get("required")), name


def test_the_build_role_offers_every_option_of_the_action_as_described():
    """roles/build: argument specs, defaults and the task that calls klp.livepatch.build."""
    options = yaml.safe_load((ROLE / "meta" / "argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    task = next(t for t in yaml.safe_load((ROLE / "tasks" / "build.yml").read_text())
                if "klp.livepatch.build" in t)["klp.livepatch.build"]
    assert set(task) <= set(ARGUMENT_SPEC)
    for name, spec in action_spec().items():
        role = options[f"build_{name}"]
        # a signing file is a string there, "" for none (the task omits it then)
        assert role["type"] == spec["type"] or (spec["type"], role["type"]) == ("path", "str")
        assert role.get("elements") == spec.get("elements"), name
        assert role.get("choices") == spec.get("choices"), name
        if "default" in spec:
            assert role["default"] == spec["default"], name
        assert f"build_{name}" in task[name], name
    for name, role in options.items():
        assert defaults[name] == role["default"], name


def test_ansible_loads_the_action_with_its_described_arguments(tmp_path):
    """Under Ansible's collection loader the action imports the request description
    (ansible_collections.klp.livepatch.builder.request) and checks its arguments by it."""
    collections = tmp_path / "collections" / "ansible_collections" / "klp"
    collections.mkdir(parents=True)
    (collections / "livepatch").symlink_to(REPO)
    play = [{"hosts": "localhost", "connection": "local", "gather_facts": False, "tasks": [
        {"klp.livepatch.build": {"update_to": "latest", "name": "fix", "kernels": [],
                                 "output_dir": str(tmp_path / "out")},
         "register": "nothing"},
        {"klp.livepatch.build": {"patches": ["fix.patch"], "name": "fix", "kernels": [],
                                 "output_dir": str(tmp_path / "out"), "consistency": "fast"},
         "register": "refused", "ignore_errors": True},
        {"ansible.builtin.copy": {"dest": str(tmp_path / "results.json"),
                                  "content": "{{ [nothing, refused] | to_json }}"}}]}]
    (tmp_path / "play.yml").write_text(yaml.safe_dump(play))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
         "-e", f"ansible_python_interpreter={sys.executable}", str(tmp_path / "play.yml")],
        capture_output=True, text=True, check=False, cwd=tmp_path, timeout=300,
        env=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"),
                 ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="False"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    nothing, refused = json.loads((tmp_path / "results.json").read_text())
    assert nothing["built"] == [] and not nothing["changed"] and not nothing.get("failed")
    assert refused["failed"] and "consistency" in refused["msg"] and "freeze" in refused["msg"]


def test_a_builder_run_without_its_result_line_fails_that_kernel_with_its_log():
    def run(code: int, out: str, err: str) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess([], code, out, err)

    outcome, failure = builder_outcome("fix", "6.1.0-56-amd64",
                                       run(0, "\n", "[ 1.0s] resolve x\n[ 2.0s] units 1\n"))
    assert outcome == {} and "6.1.0-56-amd64" in failure
    assert failure.endswith("its last log lines: [ 1.0s] resolve x | [ 2.0s] units 1")
    outcome, failure = builder_outcome("fix", "6.1.0-56-amd64",
                                       run(1, "", "progress\nerror: diff: bad\n  hint"))
    assert outcome == {} and failure.endswith("failed: error: diff: bad\n  hint")
    outcome, failure = builder_outcome("fix", "6.1.0-56-amd64",
                                       run(0, 'chatter\n{"module": "/o/fix.ko"}\n', ""))
    assert outcome == {"module": "/o/fix.ko"} and failure is None
