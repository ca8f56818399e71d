#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Transition benchmark: default per-task transition against the process freezer.

A `cat` blocked on an empty pipe sleeps inside pipe_read(), the function
tests/vm/patches/pipe-read.patch replaces. With the default consistency model that
task cannot switch until livepatch's fake signal kicks it out of the syscall; with
`--consistency freeze` the module freezes user space, so every task switches at
once. Prints, as medians of several runs on one lab VM (own lab state directory):

  transition time, default vs freeze, with the sleeping task
  the frozen window with the sleeping task, and on an idle VM

Usage: .venv/bin/python bench/transition.py [--kernel SPEC] [--runs N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab import Lab  # noqa: E402

PATCH = REPO / "tests" / "vm" / "patches" / "pipe-read.patch"
SLEEPER = "nohup sh -c 'sleep 3600 | cat >/dev/null' >/dev/null 2>&1 & sleep 1"
# Load, then wait for transition 0; print milliseconds from insmod to completion.
LOAD = """set -e
m={name}; start=$(date +%s%N)
insmod /root/$m.ko {params}
while [ "$(cat /sys/kernel/livepatch/$m/transition)" = 1 ]; do sleep 0.01; done
echo $(( ($(date +%s%N) - start) / 1000000 ))
cat /sys/module/$m/parameters/freeze_window_us
"""
UNLOAD = """m={name}
echo 0 > /sys/kernel/livepatch/$m/enabled
while [ -d /sys/kernel/livepatch/$m ]; do sleep 0.05; done
rmmod $m; pkill -f 'sleep 360[0]' || true  # [0]: not this shell's own line"""


def build(release: str, out: Path) -> None:
    for mode in ("default", "freeze"):
        subprocess.run([sys.executable, "-m", "builder", "build", "--kernel", release,
                        "--patch", str(PATCH), "--name", f"klp_pipe_{mode}", "--output",
                        str(out), "--consistency", mode], cwd=REPO, check=True,
                       capture_output=True)


def run(vm, name: str, sleeper: bool, params: str = "") -> tuple[float, float]:
    """(transition ms, frozen window ms) of one load."""
    if sleeper:
        vm.ssh(SLEEPER, check=True)
    out = vm.ssh(LOAD.format(name=name, params=params), check=True, timeout=300).stdout.split()
    vm.ssh(UNLOAD.format(name=name), check=True, timeout=300)
    return float(out[0]), int(out[1]) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", default="newest-6.1-amd64", help="lab spec")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="klp-bench-") as tmp:
        lab = Lab(state_dir=Path(tmp) / "lab")
        try:
            vm = lab.up([args.kernel])[0]
            out = Path(tmp) / "modules"
            build(vm.release, out)
            for mode in ("default", "freeze"):
                subprocess.run(["scp", "-q", "-i", vm.key, "-P", str(vm.port), "-o",
                                "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o",
                                "UserKnownHostsFile=/dev/null", str(out / f"klp_pipe_{mode}.ko"),
                                "root@127.0.0.1:/root/"], check=True)
            default = [run(vm, "klp_pipe_default", True)[0] for _ in range(args.runs)]
            frozen = [run(vm, "klp_pipe_freeze", True) for _ in range(args.runs)]
            idle = [run(vm, "klp_pipe_freeze", False)[1] for _ in range(args.runs)]
        finally:
            lab.down()
    med = statistics.median
    print(f"kernel {vm.release}, 1 vCPU TCG guest, {args.runs} runs each, a task asleep "
          "in pipe_read()")
    print(f"  transition, default consistency: median {med(default) / 1000:6.2f} s  "
          f"runs: {', '.join(f'{t / 1000:.2f}' for t in default)}")
    print(f"  transition, freeze:              median {med(t for t, _ in frozen) / 1000:6.2f} s"
          f"  (goal <= 3 s)  runs: {', '.join(f'{t / 1000:.2f}' for t, _ in frozen)}")
    print(f"  frozen window with the sleeper:  median {med(w for _, w in frozen):6.1f} ms")
    print(f"  frozen window, idle VM:          median {med(idle):6.1f} ms  (goal <= 100 ms)")
    print(f"  ratio default / freeze: {med(default) / med(t for t, _ in frozen):.0f}x")


if __name__ == "__main__":
    main()
