# SPDX-License-Identifier: GPL-3.0-or-later
"""klp.livepatch.build from a playbook: builds once per kernel, then reuses the artifact;
builds that meet each other, and a build killed over a damaged cache.

Runs on the controller only (no VM needed), but builds real modules, so it lives
with the slow tier.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from lab.kernels import package_version, resolve
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


def test_a_build_killed_mid_way_over_a_truncated_package_completes_on_the_rerun(tmp_path):
    """Faults on the controller, in a cache of its own: the kernel's headers package in
    the cache is cut short (a full disk, a killed copy) and the build is killed (-9)
    while it extracts packages or the source. The rerun fetches the package again,
    completes, and its module checks out; no half tree or half file is left anywhere."""
    release = resolve("newest-6.1-amd64")
    version = package_version(release)
    shared = Path(os.environ.get("KLP_CACHE") or Path.home() / ".cache" / "klp-livepatch")
    cache = tmp_path / "cache"
    (cache / "debs").mkdir(parents=True)
    for deb in (shared / "debs").glob(f"*_{version}_*.deb"):  # what the archive gave
        os.link(deb, cache / "debs" / deb.name)
    (cache / "apt").symlink_to(shared / "apt")  # the archive's index, not its packages
    headers = cache / "debs" / f"linux-headers-{release}_{version}_amd64.deb"
    whole = headers.stat().st_size
    headers.unlink()  # a copy of its own to cut short: the shared one stays whole
    headers.write_bytes((shared / "debs" / headers.name).read_bytes()[:whole // 3])
    argv = [sys.executable, "-m", "builder", "build", "--kernel", release, "--patch",
            str(PATCH), "--name", "klp_killed", "--output", str(tmp_path / "out")]
    env = dict(os.environ, KLP_CACHE=str(cache))

    first = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list(cache.glob("*/*/.*.tmp-*")) and first.poll() is None:
        assert time.monotonic() < deadline, "the build never started extracting"
        time.sleep(0.05)
    first.kill()
    first.wait()
    assert first.returncode == -9, "the build finished before it could be killed"

    rerun = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True,
                           check=False, timeout=1800)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert headers.stat().st_size == whole  # fetched again, whole
    manifest = json.loads((tmp_path / "out" / "klp_killed.json").read_text())
    module = (tmp_path / "out" / "klp_killed.ko").read_bytes()
    assert hashlib.sha256(module).hexdigest() == manifest["module_sha256"]
    assert manifest["kernel_release"] == release
    assert not [str(p) for p in cache.rglob(".*.tmp-*")]  # the killed build's are gone
