# SPDX-License-Identifier: GPL-3.0-or-later
"""`molecule test` (molecule/default) as a user runs it, inside the VM tier.

The scenario boots two lab VMs on different kernels in a lab state dir of its own
(under MOLECULE_EPHEMERAL_DIRECTORY, so it never meets the session's VMs), rolls the
example patch out with livepatch.yml, reruns it for idempotence, verifies and destroys.
Whatever molecule does, no VM of the scenario may be left running afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from lab import Lab

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TIMEOUT = 3600  # two image builds on a cold cache plus two builds under TCG
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def molecule_test(tmp_path: Path, *ansible_args: str) -> tuple[int, str, list[str]]:
    """Run `molecule test`; return its exit code, output and the VMs it left running."""
    ephemeral = tmp_path / "molecule"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "MOLECULE_EPHEMERAL_DIRECTORY": str(ephemeral), "ANSIBLE_NOCOLOR": "1",
           "NO_COLOR": "1", "ANSIBLE_HOST_KEY_CHECKING": "False"}
    argv = [str(BIN / "molecule"), "test", *(["--", *ansible_args] if ansible_args else [])]
    lab = Lab(ephemeral / "lab")
    # A session of its own: on a timeout the whole tree (ansible, ssh, lab) is stopped.
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = proc.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        output = proc.communicate()[0]
        output += f"\n(killed after {TIMEOUT}s)"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        left = [vm.name for vm in lab.vms()]
        lab.down()  # stop what molecule's destroy did not, so nothing outlives the test
    output = ANSI.sub("", output)
    (tmp_path / "molecule.log").write_text(output)
    return proc.returncode, output, left


def executed(output: str, step: str, outcome: str = "Successful", after: int = 0) -> int:
    """Where molecule's closing report has `default > STEP: Executed: OUTCOME`, or -1.

    (Its '>' is an arrow when it thinks colours are on.)
    """
    found = re.compile(rf"^default \S+ {step}: Executed: {outcome}", re.M).search(output, after)
    return found.start() if found else -1


def test_molecule_patches_two_kernels(tmp_path):
    code, output, left = molecule_test(tmp_path)
    assert code == 0, output[-8000:]
    where = 0
    for step in ("destroy", "create", "converge", "idempotence", "verify", "destroy"):
        where = executed(output, step, after=where)
        assert where != -1, f"{step} did not pass, in this order:\n{output[-8000:]}"
        where += 1
    assert left == [], f"molecule's destroy left {left} running"


def test_molecule_destroys_after_a_failed_converge(tmp_path):
    # An out-of-range input fails converge's first play, after create booted both VMs.
    code, output, left = molecule_test(tmp_path, "-e", '{"livepatch_max_fail_percentage": 500}')
    assert code != 0, output[-4000:]
    assert executed(output, "create") != -1, output[-4000:]
    failed = executed(output, "converge", "Failed")
    assert failed != -1 and "Check the name, the patch files and the batch plan" in output
    assert executed(output, "destroy", after=failed) != -1, output[-4000:]
    assert left == [], f"molecule left {left} running after the failed converge"
