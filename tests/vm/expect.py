# SPDX-License-Identifier: GPL-3.0-or-later
"""What VM tests expect, derived from what the lab resolved and booted.

Debian's archive moves on (a new ABI every few weeks), so a VM test never names a kernel
release or a package version: it takes them from the lab's inventory
(`klp_lab_kernel_release`, `klp_lab_kernels`), from the guest or from the builder's
manifest, and builds its expected values from those. `tests/unit/test_no_release_literals.py`
fails the fast tier when a literal creeps back in; the unit tests also run these helpers
against a simulated newer archive.
"""

from __future__ import annotations

from lab.kernels import release_flavour

# The two amd64 flavours of one Debian 6.1 ABI: each is "another kernel" for the other.
OTHER_FLAVOUR = {"amd64": "cloud-amd64", "cloud-amd64": "amd64"}


def host_running(hosts: dict[str, dict], release: str) -> str | None:
    """The plain lab VM ("vm-…") whose host vars say it runs RELEASE, or None.

    Named specs (e.g. `sigenforce=…`) boot the same kernel with extras; they are not picked.
    """
    for name, hostvars in sorted(hosts.items()):
        if hostvars.get("klp_lab_kernel_release") == release and name.startswith("vm-"):
            return name
    return None


def other_flavour(release: str) -> str:
    """The same ABI in the other amd64 flavour: a kernel a host running RELEASE does not run.

    `6.1.0-N-amd64` <-> `6.1.0-N-cloud-amd64` (same package version, same source).
    """
    flavour = release_flavour(release)
    if flavour not in OTHER_FLAVOUR:
        raise ValueError(f"no other flavour known for {release!r} (flavour {flavour!r})")
    return release[: -len(flavour)] + OTHER_FLAVOUR[flavour]


def wrong_kernel_refusal(built_for: str, running: str) -> list[str]:
    """Texts klp.livepatch.patch's refusal of a module built for another kernel holds."""
    return [f"was built for kernel {built_for} (vermagic '{built_for} ",
            f"runs {running}: build the patch for {running}"]


def running_build_id(vm) -> str:
    """GNU build-id of the running kernel, read from /sys/kernel/notes on the guest."""
    script = ("import struct;d=open('/sys/kernel/notes','rb').read();o=0\n"
              "while o+12<=len(d):\n"
              " n,s,t=struct.unpack_from('<III',d,o);nm=d[o+12:o+12+n];o2=o+12+(n+3)//4*4\n"
              " if t==3 and nm[:3]==b'GNU':print(d[o2:o2+s].hex())\n"
              " o=o2+(s+3)//4*4")
    return vm.ssh(["python3", "-c", script], check=True).stdout.strip()
