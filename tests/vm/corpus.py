# SPDX-License-Identifier: GPL-3.0-or-later
"""The shared live-patch corpus (../shared/klp-corpus): discovery and builder runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The venv's ansible, whether or not the venv's bin is on PATH.
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
CORPUS = Path(os.environ.get("KLP_CORPUS", REPO.parent / "shared" / "klp-corpus"))


@dataclass(frozen=True)
class Case:
    name: str
    patch: Path
    kind: str  # "build", "fail" (refused at build time) or "loadfail"
    check: Path | None = None
    setup: Path | None = None
    expect: tuple[str, ...] = ()

    @property
    def module_name(self) -> str:
        return "klp_" + re.sub(r"[^A-Za-z0-9]", "_", self.name).lower()


def cases(directory: Path) -> list[Case]:
    found = []
    for patch in sorted(directory.glob("*.patch")):
        name = patch.stem
        if name.endswith("-FAIL"):
            expect = tuple(line for line in patch.with_suffix(".expect").read_text().splitlines()
                           if line.strip())
            found.append(Case(name, patch, "fail", expect=expect))
            continue
        setup = patch.with_suffix(".setup")
        kind = "loadfail" if name.endswith("-LOADFAIL") else "build"
        found.append(Case(name, patch, kind, check=patch.with_suffix(".check"),
                          setup=setup if setup.exists() else None))
    return found


def build(case: Case, release: str, output: Path, extra: list[str] | None = None
          ) -> subprocess.CompletedProcess:
    """Run the builder as a user would: python3 -m builder build …"""
    argv = [sys.executable, "-m", "builder", "build", "--kernel", release,
            "--patch", str(case.patch), "--name", case.module_name, "--output", str(output),
            *(extra or [])]
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          check=False)
