# SPDX-License-Identifier: GPL-3.0-or-later
"""A persisted patch loads at boot only into the kernel it was built for.

One lab VM has two kernels installed (the newest 6.1 and an older 6.1 ABI). A patch
built for the newest one is persisted; booted into the older kernel the host loads
nothing, and booted back into the newest one the patch is live again.
"""

from __future__ import annotations

import importlib
import sys

from lab.kernels import release_key
from tests.vm.corpus import REPO
from tests.vm.playbook import lab_hosts, patch, playbook, task

SPEC = "twokernels=newest-6.1-amd64,older-6.1-amd64"


def test_boot_into_another_kernel_loads_nothing(lab_boot, lab, collections_path, tmp_path):
    vm = next(v for v in lab_boot([SPEC]) if v.name == "twokernels")
    # Both kernels as the lab resolved and installed them (the inventory's host vars), the
    # package version as installed on the guest: nothing here depends on today's archive.
    hostvars = lab_hosts(lab.inventory_path)[vm.name]
    newest = hostvars["klp_lab_kernel_release"]
    (older,) = [k for k in hostvars["klp_lab_kernels"] if k != newest]
    assert vm.release == newest and release_key(older) < release_key(newest), hostvars
    version = vm.ssh(["dpkg-query", "-W", "-f=${Version}", f"linux-image-{newest}"],
                     check=True).stdout.strip()
    sys.path.insert(0, str(REPO / "tests" / "fixtures" / "kmod"))
    kmod_build = importlib.import_module("build")  # the fixture builder beside the C sources
    src = kmod_build.build(newest, version) / "klp_test_version.ko"

    def run(step, tasks):
        (tmp_path / step).mkdir()
        keep = [t["register"] for t in tasks if "register" in t]
        return playbook(lab.inventory_path, vm.name, collections_path, tmp_path / step, tasks,
                        {"keep": keep})

    first = run("persist", [task("persist", patch(src=str(src), persist=True))])
    lab.restart(vm.name, kernel=older)
    other = run("older", [task("info", {"klp.livepatch.info": {}})])
    lab.restart(vm.name, kernel=newest)
    back = run("newest", [task("info", {"klp.livepatch.info": {}}),
                          task("absent", patch(name="klp_test_version", state="absent"))])

    assert first["persist"]["changed"] and first["persist"]["persisted"]
    assert other["info"]["kernel_release"] == older
    assert other["info"]["patches"] == [], "nothing built for another kernel may load"
    assert other["info"]["boot"]["skipped"] == []
    assert back["info"]["kernel_release"] == newest
    assert [p["name"] for p in back["info"]["patches"]] == ["klp_test_version"]
    assert back["absent"]["changed"]
