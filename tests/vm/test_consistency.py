# SPDX-License-Identifier: GPL-3.0-or-later
"""Consistency helpers on a real kernel: the process freezer and kthread parking.

The patched function is pipe_read(); a `cat` blocked on an empty pipe sleeps inside
it, so the default per-task transition cannot switch that task. The builder makes
two modules from the same patch (default and --consistency freeze); both go through
klp.livepatch.patch on the lab VM, as a user would load them.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.vm.corpus import REPO
from tests.vm.playbook import SLEEPER, STOP_SLEEPER, patch, playbook, task

PIPE_PATCH = REPO / "tests" / "vm" / "patches" / "pipe-read.patch"


@pytest.fixture(scope="module")
def pipe_modules(vm_release, tmp_path_factory):
    """pipe-read.patch built twice for the VM's kernel: default and freeze."""
    out = tmp_path_factory.mktemp("pipe-modules")
    for mode in ("default", "freeze"):
        proc = subprocess.run(
            [sys.executable, "-m", "builder", "build", "--kernel", vm_release,
             "--patch", str(PIPE_PATCH), "--name", f"klp_pipe_{mode}", "--output", str(out),
             "--consistency", mode], cwd=REPO, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
    return out


def test_default_transition_stalls_on_the_sleeping_task_and_is_reverted(
        klp_inventory, amd64_host, collections_path, pipe_modules, tmp_path):
    res = playbook(klp_inventory, amd64_host, collections_path, tmp_path, [
        task("sleeper", SLEEPER),
        task("preflight", {"klp.livepatch.preflight": {
            "manifest_content": "{{ lookup('file', manifest) | from_json }}"}}),
        task("load", patch(src=str(pipe_modules / "klp_pipe_default.ko"),
                           transition_timeout=5), ignore_errors=True),
        task("after", {"ansible.builtin.shell": "ls /sys/kernel/livepatch; "
                                                "grep -c '^klp_pipe' /proc/modules || true",
                       "changed_when": False}),
        task("stop", STOP_SLEEPER),
    ], {"manifest": str(pipe_modules / "klp_pipe_default.json"),
        "keep": ["preflight", "load", "after"]})
    assert not res["preflight"]["safe"]
    assert any(t["comm"] == "cat" for t in res["preflight"]["blocking_tasks"])
    assert res["load"]["failed"]
    assert any(t["comm"] == "cat" and "pipe_read" in "".join(t.get("stack", []))
               for t in res["load"]["stalled_tasks"]), res["load"]
    assert res["after"]["stdout_lines"] == ["0"], "the host must be back as before"


def test_freeze_completes_the_transition_despite_the_sleeping_task(
        klp_inventory, amd64_host, collections_path, pipe_modules, tmp_path):
    params = "/sys/module/klp_pipe_freeze/parameters"
    res = playbook(klp_inventory, amd64_host, collections_path, tmp_path, [
        task("sleeper", SLEEPER),
        task("load", patch(src=str(pipe_modules / "klp_pipe_freeze.ko"), consistency="freeze",
                           freeze_timeout=2000, transition_timeout=30)),
        task("measured", {"ansible.builtin.command": f"cat {params}/freeze_window_us "
                                                     f"{params}/transition_us",
                          "changed_when": False}),
        task("reader", {"ansible.builtin.command": "pgrep -x cat", "changed_when": False}),
        task("unload", patch(name="klp_pipe_freeze", state="absent")),
        task("stop", STOP_SLEEPER),
    ], {"keep": ["load", "measured", "reader", "unload"]})
    assert res["load"]["state"] == "enabled" and not res["load"]["stalled_tasks"]
    window_us, transition_us = (int(v) for v in res["measured"]["stdout_lines"])
    assert window_us > 0 and transition_us >= 0
    assert res["reader"]["stdout"].strip(), "the blocked reader survives the freeze"
    assert res["unload"]["changed"]


def test_park_kthreads_parks_and_unparks_smpboot_threads(
        klp_inventory, amd64_host, collections_path, pipe_modules, tmp_path):
    res = playbook(klp_inventory, amd64_host, collections_path, tmp_path, [
        task("load", patch(src=str(pipe_modules / "klp_pipe_default.ko"),
                           park_kthreads=["ksoftirqd/*"])),
        task("parked", {"ansible.builtin.command":
                        "cat /sys/module/klp_pipe_default/parameters/parked_threads",
                        "changed_when": False}),
        task("states", {"ansible.builtin.shell":
                        "for p in $(pgrep ksoftirqd); do cut -d' ' -f3 /proc/$p/stat; done",
                        "changed_when": False}),
        task("refused", patch(src=str(pipe_modules / "klp_pipe_default.ko"), state="enabled",
                              park_kthreads=["kworker/*"]), ignore_errors=True),
        task("unload", patch(name="klp_pipe_default", state="absent")),
    ], {"keep": ["load", "parked", "states", "refused", "unload"]})
    assert res["load"]["changed"]
    assert int(res["parked"]["stdout"]) >= 1
    assert res["states"]["stdout_lines"] and "P" not in res["states"]["stdout_lines"], \
        "every parked thread is unparked once the transition completes"
    assert res["refused"]["failed"] and "kworker" in res["refused"]["msg"]
