# SPDX-License-Identifier: GPL-3.0-or-later
"""Running the collection's modules on lab VMs from tests: one playbook per test.

The guest's Python is slow under emulation, so a test runs one playbook whose tasks
register results; they come back as JSON for the test to assert on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ANSIBLE_PLAYBOOK = Path(sys.executable).parent / "ansible-playbook"


def lab_hosts(inventory: Path) -> dict[str, dict]:
    data = yaml.safe_load(inventory.read_text())
    return data["all"]["children"]["lab"]["hosts"] or {}


def write_play(host: str, tmp: Path, tasks: list, variables: dict | None = None) -> Path:
    """TASKS on HOST as tmp/play.yml; the registered variables named in
    `variables['keep']` are written to tmp/results.json at the end."""
    variables = dict(variables or {})
    keep = variables.pop("keep", [])
    play = [{
        "name": "klp.livepatch VM test",
        "hosts": host,
        "gather_facts": False,
        "vars": variables,
        "tasks": tasks + [{
            "name": "Return the results to the test",
            "ansible.builtin.copy": {
                "content": "{{ {" + ", ".join(
                    f"'{k}': ({k} | default(None))" for k in keep) + "} | to_nice_json }}",
                "dest": str(tmp / "results.json"),
                "mode": "0600",
            },
            "delegate_to": "localhost",
        }],
    }]
    path = tmp / "play.yml"
    path.write_text(yaml.safe_dump(play, sort_keys=False))
    return path


def play_env(collections: Path) -> dict:
    return dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections),
                ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_NOCOLOR="1",
                ANSIBLE_STDOUT_CALLBACK="default")


def playbook(inventory: Path, host: str, collections: Path, tmp: Path, tasks: list,
             variables: dict | None = None) -> dict:
    """Run TASKS on HOST; return the registered variables named in `variables['keep']`."""
    path = write_play(host, tmp, tasks, variables)
    proc = subprocess.run([str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(path)],
                          capture_output=True, text=True, env=play_env(collections),
                          check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    return json.loads((tmp / "results.json").read_text())


def patch(**args) -> dict:
    return {"klp.livepatch.patch": args}


def task(register: str, body: dict, **extra) -> dict:
    return {"name": register, **body, "register": register, **extra}


def loaded_klp_modules() -> dict:
    return {"ansible.builtin.shell": "grep '^klp_test' /proc/modules || true; "
                                     "ls /sys/kernel/livepatch"}
