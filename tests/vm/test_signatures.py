# SPDX-License-Identifier: GPL-3.0-or-later
"""A host that enforces module signatures refuses an unsigned patch, cleanly.

An extra lab VM boots the newest 6.1 kernel with module.sig_enforce=1; the builder's
unsigned module must be refused by klp.livepatch.patch before insmod, with a message
that says what to do, and nothing may be loaded.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from lab.kernels import resolve
from tests.vm.corpus import CORPUS, REPO
from tests.vm.playbook import patch, playbook, task

SPEC = "sigenforce=newest-6.1-amd64+module.sig_enforce=1"
PATCH = CORPUS / "debian-12" / "cmdline-suffix.patch"


@pytest.mark.skipif(not PATCH.is_file(), reason="shared corpus not found")
def test_unsigned_module_is_refused_when_signatures_are_enforced(
        lab_boot, lab, collections_path, tmp_path):
    vm = next(v for v in lab_boot([SPEC]) if v.name == "sigenforce")
    release = resolve("newest-6.1-amd64")
    proc = subprocess.run([sys.executable, "-m", "builder", "build", "--kernel", release,
                           "--patch", str(PATCH), "--name", "klp_unsigned", "--output",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    res = playbook(lab.inventory_path, vm.name, collections_path, tmp_path, [
        task("info", {"klp.livepatch.info": {}}),
        task("load", patch(src=str(tmp_path / "klp_unsigned.ko")), ignore_errors=True),
        task("after", {"ansible.builtin.shell": "grep -c '^klp_unsigned ' /proc/modules; "
                                                "ls /sys/kernel/livepatch",
                       "changed_when": False, "failed_when": False}),
    ], {"keep": ["info", "load", "after"]})
    assert res["info"]["sig_enforce"] is True
    assert res["load"]["failed"]
    assert "enforces module signatures" in res["load"]["msg"]
    assert "sign_key" in res["load"]["msg"]
    assert res["after"]["stdout_lines"] == ["0"], "nothing of the patch may be loaded"
