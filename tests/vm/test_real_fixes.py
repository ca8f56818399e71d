# SPDX-License-Identifier: GPL-3.0-or-later
"""Real kernel fixes of the shared corpus (`debian-12-<upstream version>/`), each on a lab
VM running the Debian kernel built from exactly that source.

The kernel comes from the directory's name: the amd64 image whose package version is
`<upstream version>-N` in the archive. One of these cases crashed the kernel at insmod
when the builder kept jump-label and static-call entries that named the patched module's
symbols; the run script fails on any WARNING, BUG or Oops in the kernel log.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from lab.kernels import archive_releases, package_version, release_flavour, release_series
from tests.vm.corpus import CORPUS, cases, run_on_vm

REAL_FIXES = sorted(p for p in CORPUS.glob("debian-12-*") if p.is_dir())


def release_built_from(upstream: str, flavour: str = "amd64") -> str | None:
    """The archive's kernel release whose image package is version `upstream`-N."""
    series = ".".join(upstream.split(".")[:2])
    for release in archive_releases():
        if release_series(release) == series and release_flavour(release) == flavour and \
                package_version(release).startswith(f"{upstream}-"):
            return release
    return None


def _upstream(directory: Path) -> str:
    return re.sub(r"^debian-12-", "", directory.name)


@pytest.mark.parametrize("directory", REAL_FIXES, ids=lambda p: p.name)
def test_real_fixes_load_live_and_leave_the_kernel_clean(directory, lab_boot, lab_inventory,
                                                         tmp_path):
    release = release_built_from(_upstream(directory))
    if release is None:
        pytest.skip(f"the archive no longer has the kernel built from {directory.name}")
    vm = lab_boot([release])[0]
    live = [c for c in cases(directory) if c.kind != "fail"]
    builds, results = run_on_vm(vm, lab_inventory, tmp_path, live)
    for case in live:
        assert builds[case.name].returncode == 0, builds[case.name].stderr
        result = results.get(case.module_name, "no result")
        assert result.startswith("OK:"), f"{release}: {case.name}: {result}"
