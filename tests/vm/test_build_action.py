# SPDX-License-Identifier: GPL-3.0-or-later
"""klp.livepatch.build from a playbook: builds once per kernel, then reuses the artifact.

Runs on the controller only (no VM needed), but builds real modules, so it lives
with the slow tier.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import yaml

from lab.kernels import resolve
from tests.vm.corpus import CORPUS, REPO
from tests.vm.playbook import ANSIBLE_PLAYBOOK

PATCH = CORPUS / "debian-12" / "cmdline-suffix.patch"


def run_build(tmp, collections, kernels, check=False) -> dict:
    out = tmp / "result.json"
    play = [{"name": "Build", "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "Build the patch", "klp.livepatch.build": {
            "patches": [str(PATCH)], "name": "klp_action", "kernels": kernels,
            "output_dir": str(tmp / "artifacts")}, "register": "built"},
        {"name": "Keep the result", "ansible.builtin.copy": {
            "content": "{{ built | to_json }}", "dest": str(out), "mode": "0600"},
         "check_mode": False}]}]
    path = tmp / "play.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    argv = [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", "-c", "local", str(path),
            "-e", f"ansible_python_interpreter={sys.executable}"]
    proc = subprocess.run(argv + (["--check"] if check else []), capture_output=True, text=True,
                          check=False, env=dict(os.environ,
                                                ANSIBLE_COLLECTIONS_PATH=str(collections)))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_builds_once_per_kernel_and_skips_up_to_date_artifacts(tmp_path, collections_path):
    release = resolve("newest-6.1-amd64")
    kernels = [release, {"release": release}]  # the same kernel twice: one build
    would = run_build(tmp_path, collections_path, kernels, check=True)
    assert would["changed"] and would["built"] == [release]
    assert not (tmp_path / "artifacts" / release / "klp_action.ko").exists()
    first = run_build(tmp_path, collections_path, kernels)
    assert first["changed"] and first["built"] == [release] and first["skipped"] == []
    manifest = first["manifests"][release]
    assert manifest["kernel_release"] == release
    assert (tmp_path / "artifacts" / release / "klp_action.ko").is_file()
    again = run_build(tmp_path, collections_path, kernels)
    assert not again["changed"] and again["skipped"] == [release] and again["built"] == []
    assert again["manifests"][release]["module_sha256"] == manifest["module_sha256"]


def test_two_runs_of_the_same_build_at_once_take_turns(tmp_path):
    """Two builder processes for the same kernel, name and output at the same moment (two
    AWX slices, two playbooks): the second waits for the first, then reuses its module;
    the module is whole and checks out."""
    release = resolve("newest-6.1-amd64")
    argv = [sys.executable, "-m", "builder", "build", "--kernel", release, "--patch",
            str(PATCH), "--name", "klp_twice", "--output", str(tmp_path / "out"),
            "--if-changed"]
    runs = [subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _twice in range(2)]
    outcomes = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=1800)
        assert run.returncode == 0, stderr[-3000:]
        outcomes.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted(o["changed"] for o in outcomes) == [False, True], outcomes
    module = tmp_path / "out" / "klp_twice.ko"
    manifest = json.loads((tmp_path / "out" / "klp_twice.json").read_text())
    assert hashlib.sha256(module.read_bytes()).hexdigest() == manifest["module_sha256"]
