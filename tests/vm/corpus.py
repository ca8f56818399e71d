# SPDX-License-Identifier: GPL-3.0-or-later
"""The shared live-patch corpus (../shared/klp-corpus): discovery and builder runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The venv's ansible, whether or not the venv's bin is on PATH.
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))
CORPUS = Path(os.environ.get("KLP_CORPUS", REPO.parent / "shared" / "klp-corpus"))
# Where make test runs a subset to stay within CI's time, it runs one case of each kind:
# a vmlinux function, a module's, two objects, callbacks with a shadow variable, a refused
# load, and the three refused builds. KLP_VM_FULL=1 runs every case (docs/TESTING.md).
FULL = os.environ.get("KLP_VM_FULL") == "1"
CI_CASES = {"cmdline-suffix", "meminfo-label", "module-binfmt", "two-file-new-function",
            "shadow-counter", "prepatch-refuses-LOADFAIL", "init-FAIL", "data-FAIL",
            "nochange-FAIL"}


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


def ci_subset(found: list[Case]) -> list[Case]:
    """The cases of CI_CASES, or all of them under KLP_VM_FULL=1."""
    return found if FULL else [c for c in found if c.name in CI_CASES]


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


def assert_refused(case: Case, release: str, output: Path) -> None:
    """A -FAIL case: the build fails, its error matches every .expect line, no .ko."""
    proc = build(case, release, output)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    for pattern in case.expect:
        assert re.search(pattern, proc.stderr, re.IGNORECASE), \
            f"{case.name}: {pattern!r} not in the error:\n{proc.stderr}"
    assert not list(output.glob("*.ko")), "a refused build must not write a module"


PLAYBOOK = REPO / "tests" / "vm" / "playbooks" / "corpus_case.yml"


def run_on_vm(vm, inventory: Path, root: Path, live: list[Case]
              ) -> tuple[dict[str, subprocess.CompletedProcess], dict[str, str]]:
    """Build each case for the VM's kernel, then run them all on the VM in one play.

    Returns the builder runs by case name and each case's result line ("OK: …" or
    "FAIL: …" with the kernel log) by module name.
    """
    builds, staged = {}, root / "stage"
    for case in live:
        out = root / case.name
        builds[case.name] = build(case, vm.release, out)
        if builds[case.name].returncode == 0:
            target = staged / case.module_name
            target.mkdir(parents=True)
            shutil.copy(out / f"{case.module_name}.ko", target / "patch.ko")
            shutil.copy(case.check, target / "check")
            if case.setup:
                shutil.copy(case.setup, target / "setup")
    ready = [c for c in live if builds[c.name].returncode == 0]
    if not ready:
        return builds, {}
    play, results = play_cases(vm, inventory, staged, [f"{c.module_name}:{c.kind}" for c in ready])
    if play.returncode != 0:
        raise AssertionError(play.stdout[-4000:] + play.stderr[-2000:])
    return builds, results


def _executable(member: tarfile.TarInfo) -> tarfile.TarInfo:
    member.mode = 0o700
    return member


def play_cases(vm, inventory: Path, staged: Path, specs: list[str], timeout: float = 1800
               ) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """Run run_cases.sh on the VM over STAGED (a directory per module: patch.ko, check,
    setup) for SPECS ("module:kind"); returns the play and each module's result lines."""
    archive = staged.with_suffix(".tar")
    with tarfile.open(archive, "w") as tar:
        tar.add(staged, arcname=".", filter=_executable)
    play = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", str(inventory), "--limit", vm.name, str(PLAYBOOK),
         "-e", json.dumps({"corpus_archive": str(archive), "corpus_cases": specs})],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "ANSIBLE_PIPELINING": "1"})
    results: dict[str, str] = {}
    for name, text in re.findall(r'"CASE (\S+) ([^"]*)"', play.stdout):
        results[name] = results.get(name, "") + text + "\n"
    return play, results
