#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Rollout benchmark: livepatch.yml on three lab VMs with three different kernels.

Each run has three steps, timed from `ansible-playbook` start to exit:
  apply     empty artifact cache, so three modules are built, then the batched rollout
  rerun     the same command again: nothing built, nothing changed
  rollback  livepatch_state=absent
and, side by side, `apply` with the whole fleet in one batch (["100%"]) as the baseline
for what the canary-first plan costs.

Module calls per host are counted on the guests themselves: the hosts' Python
interpreter is a wrapper that appends a line to /run/klp-module-calls before it
execs python3, and Ansible starts one interpreter per module it runs there.

Usage: .venv/bin/python bench/rollout.py [--runs N]   (own lab state dir; VMs stopped at the end)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab import Lab  # noqa: E402

FLEET = ["newest-6.1-amd64", "newest-6.1-cloud-amd64", "older-6.1-amd64"]
PATCH = REPO / "examples" / "patches" / "cmdline-example.patch"
PROBE = "grep -q klp.example=1 /proc/cmdline"
COUNTER = "/usr/local/bin/klp-counting-python3"
INSTALL_COUNTER = (f"printf '#!/bin/sh\\necho x >> /run/klp-module-calls\\n"
                   f"exec /usr/bin/python3 \"$@\"\\n' > {COUNTER} && chmod 755 {COUNTER}")
STEPS = ("apply", "rerun", "rollback", "apply, one batch")


def counted_inventory(lab: Lab, tmp: Path) -> Path:
    """The lab inventory with every host's interpreter set to the counting wrapper."""
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    for hostvars in inventory["all"]["children"]["lab"]["hosts"].values():
        hostvars["ansible_python_interpreter"] = COUNTER
    path = tmp / "inventory.yml"
    path.write_text(yaml.safe_dump(inventory))
    return path


def module_calls(vms) -> dict[str, int]:
    """Interpreter starts per host since the last call (the counter file is reset)."""
    counts = {}
    for vm in vms:
        out = vm.ssh("wc -l < /run/klp-module-calls 2>/dev/null || echo 0; "
                     "rm -f /run/klp-module-calls", check=True).stdout.split()
        counts[vm.name] = int(out[0])
    return counts


def livepatch(inventory: Path, vms, tmp: Path, step: str, **extra) -> float:
    """One ansible-playbook livepatch.yml run; its wall time in seconds."""
    variables = {"livepatch_name": "klp_bench_rollout", "livepatch_patches": [str(PATCH)],
                 "livepatch_hosts": ":".join(vm.name for vm in vms),
                 "livepatch_become": False, "livepatch_probes": [PROBE],
                 "livepatch_report_dir": str(tmp / "report"), **extra}
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp / "collections"),
               ANSIBLE_HOST_KEY_CHECKING="False", ANSIBLE_PIPELINING="1")
    start = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i",
                           str(inventory), str(REPO / "livepatch.yml"), "-e",
                           json.dumps(variables)], env=env, cwd=REPO, capture_output=True,
                          text=True, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{step}: livepatch.yml failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    return took


def one_run(inventory: Path, vms, tmp: Path, run: int) -> dict[str, tuple[float, dict]]:
    results = {}
    plans = {"apply": {}, "rerun": {},
             "rollback": {"livepatch_state": "absent", "livepatch_probes": []},
             "apply, one batch": {"livepatch_batches": ["100%"]}}
    for step in STEPS:
        if step in ("apply", "apply, one batch"):  # an empty cache: every kernel is built
            artifacts = tmp / f"artifacts-{run}-{len(results)}"
        extra = dict(plans[step], livepatch_artifact_dir=str(artifacts))
        seconds = livepatch(inventory, vms, tmp, step, **extra)
        results[step] = (seconds, module_calls(vms))
    livepatch(inventory, vms, tmp, "cleanup", livepatch_state="absent", livepatch_probes=[])
    module_calls(vms)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="klp-bench-rollout-") as name:
        tmp = Path(name)
        (tmp / "collections" / "ansible_collections" / "klp").mkdir(parents=True)
        (tmp / "collections" / "ansible_collections" / "klp" / "livepatch").symlink_to(REPO)
        lab = Lab(state_dir=tmp / "lab")
        try:
            vms = lab.up(FLEET)
            for vm in vms:
                vm.ssh(INSTALL_COUNTER, check=True)
            inventory = counted_inventory(lab, tmp)
            runs = [one_run(inventory, vms, tmp, run) for run in range(args.runs)]
        finally:
            lab.down()
    med = statistics.median
    print(f"livepatch.yml on {len(vms)} VMs: "
          + ", ".join(vm.release for vm in vms) + f"; {args.runs} runs, median")
    for step in STEPS:
        times = [r[step][0] for r in runs]
        calls = {host: max(r[step][1][host] for r in runs) for host in runs[0][step][1]}
        print(f"  {step:17} {med(times):6.1f} s  (runs: "
              + ", ".join(f"{t:.1f}" for t in times) + ")  module calls per host: "
              + ", ".join(f"{n}" for n in calls.values())
              + ("  (goal <= 3)" if step in ("apply", "rerun") else ""))
    ratio = med(r["apply"][0] for r in runs) / med(r["apply, one batch"][0] for r in runs)
    print(f"  canary plan [1, 25%, 100%] / one batch: {ratio:.2f}x wall time")


if __name__ == "__main__":
    main()
