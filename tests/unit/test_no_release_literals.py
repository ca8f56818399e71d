# SPDX-License-Identifier: GPL-3.0-or-later
"""No VM test may name a Debian kernel release or package version (issue 14).

Debian's archive moves on: the newest 6.1 ABI changes every few weeks and old ones leave
the security suite. A VM test that expects `6.1.0-56-…` fails the day `6.1.0-57` is
published, on every machine. VM tests take releases and versions from what the lab
resolved and booted (`tests/vm/expect.py`); this check keeps literals out of the VM tier
(`tests/vm/` and the Molecule scenario). Unit tests may keep literal releases as fixture
data: they never ask the archive.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tests/vm", "molecule")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache"}

PATTERNS = {
    "Debian 6.1 kernel release": r"6\.1\.0-\d+",
    "Debian 6.12 kernel release": r"6\.12\.\d+\+deb\d+",
    "Debian kernel package version": r"6\.12?\.\d+-\d+",
}
# Not inside a longer number or dotted version (16.1.0-5, 2.6.1.0-3).
LITERAL = re.compile(r"(?<![\w.])(?:" + "|".join(PATTERNS.values()) + ")")

HINT = ("VM tests must not name a kernel release or package version: derive it from the "
        "lab's inventory (klp_lab_kernel_release, klp_lab_kernels), the guest or the "
        "builder's manifest (see tests/vm/expect.py)")


def release_literals(text: str) -> list[str]:
    """Every literal Debian kernel release or package version in TEXT, in order."""
    return LITERAL.findall(text)


def scan(root: Path, dirs: tuple[str, ...] = SCANNED) -> tuple[list[str], int]:
    """(`path:line: literal` for each literal found, number of text files read)."""
    found, files = [], 0
    for top in dirs:
        for path in sorted((root / top).rglob("*")):
            if not path.is_file() or SKIPPED_DIRS & set(path.relative_to(root).parts):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue  # binary (a built module, an image): not a test's text
            files += 1
            for number, line in enumerate(text.splitlines(), 1):
                for literal in release_literals(line):
                    found.append(f"{path.relative_to(root)}:{number}: {literal}")
    return found, files


@pytest.mark.parametrize(("text", "literal"), [
    ('("wrong_kernel", "built for kernel 6.1.0-56-cloud-amd64"),', "6.1.0-56"),
    ("SPEC = 'sig=6.1.0-58-amd64+module.sig_enforce=1'", "6.1.0-58"),
    ("kernel: 6.12.57+deb12-amd64", "6.12.57+deb12"),
    ("linux-image-6.12.117+deb12-cloud-amd64", "6.12.117+deb12"),
    ("assert facts['package_version'] == '6.1.192-3'", "6.1.192-3"),
    ("version: 6.12.117-1~deb12u1", "6.12.117-1"),
    ("vm-6-1-0-56-amd64 runs 6.1.0-56-amd64", "6.1.0-56"),
])
def test_scanner_finds_planted_literals(text, literal):
    assert release_literals(text) == [literal]


@pytest.mark.parametrize("text", [
    'DEFAULT_KERNELS = ["newest-6.1-amd64", "newest-6.1-cloud-amd64"]',
    'SPECS = ("newest-6.12-amd64", "older-6.1-amd64")',
    "vm.release.startswith('6.1.')",
    "Linux 6.1 for 64-bit PCs; Python 3.11; ansible-core 2.19.0-1",
    "vm-6-1-0-56-amd64",  # a lab host name derived at run time, not a release
    "16.1.0-5 and 2.6.1.0-3 are other numbers",
    "sha256 06.1.0-4",
])
def test_scanner_ignores_aliases_and_other_numbers(text):
    assert release_literals(text) == []


def test_scan_reports_file_and_line(tmp_path):
    vm = tmp_path / "tests" / "vm"
    (vm / "__pycache__").mkdir(parents=True)
    (vm / "test_ok.py").write_text("release = lab_hosts(inv)[host]['klp_lab_kernel_release']\n")
    (vm / "test_planted.py").write_text(
        "def test_x(r):\n    assert 'built for kernel 6.1.0-58-cloud-amd64' in r\n")
    (vm / "files").mkdir()
    (vm / "files" / "check.sh").write_text("#!/bin/sh\nuname -r | grep -q 6.12.57+deb12\n")
    (vm / "__pycache__" / "test_planted.cpython-311.pyc").write_bytes(b"\x00\xff6.1.0-58")
    (vm / "module.ko").write_bytes(b"\x7fELF\x00\xff\xfe6.1.0-58-amd64")
    found, files = scan(tmp_path, ("tests/vm",))
    assert found == ["tests/vm/files/check.sh:2: 6.12.57+deb12",
                     "tests/vm/test_planted.py:2: 6.1.0-58"]
    assert files == 3


def test_vm_tier_names_no_kernel_release():
    found, files = scan(ROOT)
    assert files >= 10, f"scanned only {files} files under {SCANNED}: wrong root?"
    assert not found, HINT + ":\n" + "\n".join(found)
