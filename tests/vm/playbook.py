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


# A `cat` blocked on an empty pipe, sleeping in pipe_read(): started, then waited for until
# it really sleeps there (a busy host may take seconds; a reader not yet inside would
# switch, and a patch of pipe_read would not stall).
SLEEPER = {"ansible.builtin.shell": "nohup sh -c 'sleep 3600 | cat >/dev/null' "
                                    ">/dev/null 2>&1 & "
                                    "for i in $(seq 120); do p=$(pgrep -nx cat) && "
                                    "grep -q pipe_read /proc/$p/stack && echo $p && exit 0; "
                                    "sleep 0.5; done; echo 'no cat in pipe_read' >&2; exit 1",
           "changed_when": True}
STOP_SLEEPER = {"ansible.builtin.command": "pkill -f 'sleep 3600'", "changed_when": True,
                "failed_when": False}


def patch(**args) -> dict:
    return {"klp.livepatch.patch": args}


def task(register: str, body: dict, **extra) -> dict:
    return {"name": register, **body, "register": register, **extra}


def loaded_klp_modules() -> dict:
    return {"ansible.builtin.shell": "grep '^klp_test' /proc/modules || true; "
                                     "ls /sys/kernel/livepatch"}
