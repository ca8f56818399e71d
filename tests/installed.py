# SPDX-License-Identifier: GPL-3.0-or-later
"""The collection as a user gets it: ansible-galaxy collection build, then install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BINDIR = Path(sys.executable).parent


def install_collection(base: Path) -> dict[str, str]:
    """Build the collection's tarball and install it under BASE/installed; returns an
    environment whose ansible finds only that installed copy."""
    built = subprocess.run([str(BINDIR / "ansible-galaxy"), "collection", "build", str(REPO),
                            "--output-path", str(base / "dist")],
                           capture_output=True, text=True, check=False, timeout=300)
    assert built.returncode == 0, built.stdout + built.stderr
    [tarball] = (base / "dist").glob("klp-livepatch-*.tar.gz")
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="False",
               ANSIBLE_COLLECTIONS_PATH=str(base / "installed"))
    installed = subprocess.run([str(BINDIR / "ansible-galaxy"), "collection", "install",
                                str(tarball), "-p", str(base / "installed")],
                               capture_output=True, text=True, check=False, timeout=300, env=env)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return env
