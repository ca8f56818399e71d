# SPDX-License-Identifier: GPL-3.0-or-later
"""Running livepatch.yml on lab VMs from tests, as a user runs it: a fleet (VMs, inventory,
a collection path that is this checkout), one playbook run per step, its report."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.vm.playbook import ANSIBLE_PLAYBOOK, play_env

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = Path(sys.executable).parent / "ansible"
EXAMPLE_PATCH = REPO / "examples" / "patches" / "cmdline-example.patch"
EXAMPLE_PROBE = "grep -q klp.example=1 /proc/cmdline"  # the example patch's own check


def fleet_of(lab, specs: tuple[str, ...], inventory: Path, base: Path, name: str) -> dict:
    """VMs of distinct kernels, in `specs` order, with the inventory, a collection path
    that is this checkout, an empty artifact dir and the patch name the runs use."""
    vms = lab.up(list(specs))
    assert len({vm.release for vm in vms}) == len(specs), [vm.release for vm in vms]
    collections = base / "collections"
    (collections / "ansible_collections" / "klp").mkdir(parents=True)
    (collections / "ansible_collections" / "klp" / "livepatch").symlink_to(REPO)
    return {"hosts": {vm.name: vm.release for vm in vms}, "order": [vm.name for vm in vms],
            "inventory": inventory, "collections": collections,
            "artifacts": base / "artifacts", "base": base, "name": name}


def env(fleet: dict) -> dict:
    return play_env(fleet["collections"])


def livepatch_argv(fleet: dict, step: str, inventory: Path | None = None,
                   options: tuple[str, ...] = (), **extra) -> tuple[list[str], Path]:
    """The ansible-playbook command line of one step (the example patch unless `extra`
    says otherwise) and the report dir it writes."""
    report = fleet["base"] / step
    variables = {"livepatch_name": fleet["name"], "livepatch_patches": [str(EXAMPLE_PATCH)],
                 "livepatch_hosts": ":".join(fleet["hosts"]), "livepatch_become": False,
                 "livepatch_artifact_dir": str(fleet["artifacts"]),
                 "livepatch_report_dir": str(report), **extra}
    return [str(ANSIBLE_PLAYBOOK), "-i", str(inventory or fleet["inventory"]),
            str(REPO / "livepatch.yml"), *options, "-e", json.dumps(variables)], report


def livepatch(fleet: dict, step: str, inventory: Path | None = None,
              options: tuple[str, ...] = (), **extra
              ) -> tuple[subprocess.CompletedProcess, Path]:
    """ansible-playbook livepatch.yml on the fleet; returns the run and its report dir."""
    argv, report = livepatch_argv(fleet, step, inventory, options, **extra)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env(fleet), check=False,
                          cwd=REPO, timeout=3600)
    (fleet["base"] / f"{step}.log").write_text(proc.stdout + proc.stderr)
    return proc, report


def recap(proc: subprocess.CompletedProcess) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    found = {}
    for host, counters in re.findall(r"^(\S+)\s+: (ok=.*)$", proc.stdout, re.M):
        found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counters)}
    return found


def batches(proc: subprocess.CompletedProcess) -> list[list[str]]:
    """Hosts the load task ran on, per run of the batched play, in order."""
    plays = proc.stdout.split("PLAY [Roll out in health-gated batches]")[1:]
    found = []
    for play in plays:
        task = play.split("klp.livepatch.rollout : Load the livepatch", 1)[1].split("TASK [", 1)[0]
        found.append(re.findall(r"^(?:ok|changed): \[([^\]]+)\]", task, re.M))
    return found


def hosts_of(report_dir: Path) -> dict[str, dict]:
    report = json.loads((report_dir / "latest" / "report.json").read_text())
    return {entry["host"]: entry for entry in report["hosts"]}


def failed_play(proc: subprocess.CompletedProcess, report_dir: Path) -> str:
    """What a failed run printed last, then each failed host's gate, reason and kernel
    log from the fleet report (a WARNING that made a gate roll back is named there)."""
    text = proc.stdout[-6000:] + proc.stderr[-3000:]
    if (report_dir / "latest" / "report.json").is_file():
        for host, entry in hosts_of(report_dir).items():
            if entry.get("status") == "failed":
                log = "\n".join(entry.get("kernel_log") or [])
                text += (f"\n--- {host}: gate {entry.get('gate')}: {entry.get('reason')}\n"
                         f"{log[-8000:]}")
    return text


def ad_hoc(fleet: dict, host: str, module: str, args: str) -> subprocess.CompletedProcess:
    """`ansible HOST -m MODULE -a ARGS` against the fleet's inventory."""
    return subprocess.run([str(ANSIBLE), "-i", str(fleet["inventory"]), host, "-m", module,
                           "-a", args], capture_output=True, text=True, env=env(fleet),
                          check=False, timeout=300)


def probe(fleet: dict, host: str) -> int:
    """Exit status of the example patch's check on HOST."""
    return ad_hoc(fleet, host, "ansible.builtin.command", EXAMPLE_PROBE).returncode
