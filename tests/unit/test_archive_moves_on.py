# SPDX-License-Identifier: GPL-3.0-or-later
"""Debian publishes a new kernel: the lab and the VM tier's expectations follow (issue 14).

The archive is simulated (apt-cache's output, as `lab.kernels` reads it), once as it
looks today and once after Debian publishes 6.1.0-58 (a made-up 6.1.193-1 upload):
aliases must resolve to the new release with no code change, and what the VM tests
expect (tests/vm/expect.py) must follow the release the lab booted, down to the
refusal message the target side really writes.
"""

from __future__ import annotations

import pytest

from ansible_collections.klp.livepatch.plugins.module_utils import klp_errors, klp_kernel
from lab import kernels
from lab.errors import LabError
from lab.inventory import Host, render
from lab.specs import default_name
from tests.vm.expect import host_running, other_flavour, wrong_kernel_refusal
from tests.vm.playbook import lab_hosts

SECURITY = "http://deb.debian.org/debian-security bookworm-security/main amd64 Packages"
MAIN = "http://deb.debian.org/debian bookworm/main amd64 Packages"


def abi(release: str, version: str, suite: str, *, cloud: bool = True) -> dict:
    """Package -> [(version, suite)] for one 6.1 ABI's ABI-named packages."""
    number = release.split("-")[1]
    packages = {f"linux-image-6.1.0-{number}-amd64": [(version, suite)],
                f"linux-headers-6.1.0-{number}-amd64": [(version, suite)],
                f"linux-headers-6.1.0-{number}-common": [(version, suite)]}
    if cloud:
        packages[f"linux-image-6.1.0-{number}-cloud-amd64"] = [(version, suite)]
    return packages


def archive_today() -> dict[str, list[tuple[str, str]]]:
    """Roughly bookworm as it is: point release 6.1.0-50, security 6.1.0-56 and -57.

    Only the newest upload's linux-kbuild-6.1 is left in the security suite: the builder
    does not need it (it builds the kbuild tools from the exact linux-source).
    """
    packages = {**abi("6.1.0-50", "6.1.176-1", MAIN), **abi("6.1.0-56", "6.1.192-2", SECURITY),
                **abi("6.1.0-57", "6.1.192-3", SECURITY),
                # the security suite keeps one linux-kbuild-6.1: the newest upload's
                "linux-kbuild-6.1": [("6.1.192-3", SECURITY), ("6.1.176-1", MAIN)],
                "linux-source-6.1": [("6.1.192-3", SECURITY), ("6.1.192-2", SECURITY),
                                     ("6.1.176-1", MAIN)],
                "linux-source-6.12": [("6.12.117-1~deb12u1", SECURITY),
                                      ("6.12.115-2~deb12u1", SECURITY)]}
    for upstream, version in (("6.12.115", "6.12.115-2~deb12u1"),
                              ("6.12.117", "6.12.117-1~deb12u1")):  # Debian 12's 6.12 line
        for package in ("image", "headers"):
            packages[f"linux-{package}-{upstream}+deb12-amd64"] = [(version, SECURITY)]
        packages[f"linux-headers-{upstream}+deb12-common"] = [(version, SECURITY)]
    packages["linux-image-6.1.0-50-amd64-dbg"] = [("6.1.176-1", MAIN)]
    return packages


def archive_with_58() -> dict[str, list[tuple[str, str]]]:
    """The same archive the day Debian publishes 6.1.0-58 (6.1.193-1) to bookworm-security."""
    packages = {**archive_today(), **abi("6.1.0-58", "6.1.193-1", SECURITY)}
    packages["linux-kbuild-6.1"] = [("6.1.193-1", SECURITY), ("6.1.176-1", MAIN)]
    packages["linux-source-6.1"] = [("6.1.193-1", SECURITY), *packages["linux-source-6.1"]]
    return packages


@pytest.fixture
def archive(monkeypatch):
    """Install a simulated archive: `archive(packages)`; apt-cache's caches are reset."""
    def use(packages: dict[str, list[tuple[str, str]]]) -> None:
        def apt_cache(*args: str, suite: str = "bookworm") -> str:
            assert suite == "bookworm", suite
            if args[0] == "search":  # apt-cache search --names-only '^linux-image-…-amd64$'
                return "".join(f"{name} - Linux (simulated)\n" for name in sorted(packages)
                               if name.startswith("linux-image-")
                               and name.endswith(("-amd64", "-amd64-unsigned")))
            assert args[0] == "madison", args
            return "".join(f"{name} | {version} | {suite}\n" for name in args[1:]
                           for version, suite in packages.get(name, []))
        monkeypatch.setattr(kernels, "_apt_cache", apt_cache)
        kernels.archive_releases.cache_clear()
        kernels._madison.cache_clear()  # the lab's own per-run cache
    yield use
    kernels.archive_releases.cache_clear()
    kernels._madison.cache_clear()


@pytest.mark.parametrize(("packages", "expected"), [
    # older: the ABI just below the newest, what hosts that have not rebooted run
    (archive_today, {"newest-6.1-amd64": "6.1.0-57-amd64",
                     "newest-6.1-cloud-amd64": "6.1.0-57-cloud-amd64",
                     "older-6.1-amd64": "6.1.0-56-amd64",
                     # two uploads behind: -55 is not in this archive, the point release is
                     "older-2-6.1-amd64": "6.1.0-50-amd64",
                     "newest-6.12-amd64": "6.12.117+deb12-amd64",
                     "older-6.12-amd64": "6.12.115+deb12-amd64"}),
    (archive_with_58, {"newest-6.1-amd64": "6.1.0-58-amd64",
                       "newest-6.1-cloud-amd64": "6.1.0-58-cloud-amd64",
                       # 6.1.0-57's kbuild left the security suite with the new upload;
                       # its headers and source did not
                       "older-6.1-amd64": "6.1.0-57-amd64",
                       "older-2-6.1-amd64": "6.1.0-56-amd64",
                       "newest-6.12-amd64": "6.12.117+deb12-amd64",
                       "older-6.12-amd64": "6.12.115+deb12-amd64"}),
])
def test_aliases_follow_the_archive(archive, packages, expected):
    archive(packages())
    bookworm = [alias for alias, spec in kernels.ALIASES.items() if spec[0] == "bookworm"]
    assert {alias: kernels.resolve(alias) for alias in bookworm} == expected
    newest = expected["newest-6.1-amd64"]
    assert kernels.package_version(newest) == packages()[f"linux-image-{newest}"][0][0]


def archive_with_unsigned_612() -> dict[str, list[tuple[str, str]]]:
    """The day Debian publishes 6.12.118-1~deb12u1 with its unsigned image only (the
    signed one follows days later), as it did on 2026-12-02."""
    packages = archive_today()
    version = "6.12.118-1~deb12u1"
    for name in ("linux-image-6.12.118+deb12-amd64-unsigned",
                 "linux-headers-6.12.118+deb12-amd64", "linux-headers-6.12.118+deb12-common"):
        packages[name] = [(version, SECURITY)]
    packages["linux-source-6.12"] = [(version, SECURITY), *packages["linux-source-6.12"]]
    return packages


def test_an_upload_with_its_unsigned_image_only_is_the_newest(archive):
    # `builder update --to latest` builds to the newest linux-source: the lab's newest VM
    # must run that upload, or a test's "current" host is one behind.
    archive(archive_with_unsigned_612())
    assert kernels.resolve("newest-6.12-amd64") == "6.12.118+deb12-amd64"
    assert kernels.resolve("older-6.12-amd64") == "6.12.117+deb12-amd64"
    assert kernels.package_version("6.12.118+deb12-amd64") == "6.12.118-1~deb12u1"
    assert kernels.image_package("6.12.118+deb12-amd64") == \
        "linux-image-6.12.118+deb12-amd64-unsigned"
    assert kernels.image_package("6.12.117+deb12-amd64") == "linux-image-6.12.117+deb12-amd64"


def test_older_is_the_newest_abi_below_with_exact_sources(archive):
    # Debian keeps only the signed image of some uploads (no headers, no source): such an
    # ABI just below the newest cannot be built, and the next one down is the older ABI.
    packages = archive_with_58()
    for name in ("linux-headers-6.1.0-57-amd64", "linux-headers-6.1.0-57-common"):
        del packages[name]
    packages["linux-source-6.1"] = [v for v in packages["linux-source-6.1"]
                                    if v[0] != "6.1.192-3"]
    archive(packages)
    assert kernels.resolve("older-6.1-amd64") == "6.1.0-56-amd64"
    assert kernels.resolve("newest-6.1-amd64") == "6.1.0-58-amd64"


def test_releases_are_checked_against_the_archive(archive):
    archive(archive_with_58())
    assert kernels.resolve("6.1.0-58-amd64") == "6.1.0-58-amd64"
    assert kernels.resolve("6.1.0-56-amd64") == "6.1.0-56-amd64"  # still offered
    with pytest.raises(LabError, match=r"no linux-image-6\.1\.0-59-amd64.*6\.1\.0-58-amd64"):
        kernels.resolve("6.1.0-59-amd64")


def test_vm_expectations_follow_the_booted_release(archive, tmp_path):
    """The fixtures of tests/vm, fed the inventory the lab writes after 6.1.0-58 appears."""
    archive(archive_with_58())
    newest, cloud = kernels.resolve("newest-6.1-amd64"), kernels.resolve("newest-6.1-cloud-amd64")
    older = kernels.resolve("older-6.1-amd64")
    key = "/lab/id_ed25519"
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(render([
        Host(default_name(newest), 2201, key, newest, (newest,)),
        Host(default_name(cloud), 2202, key, cloud, (cloud,)),
        Host(default_name(older), 2203, key, older, (older,)),
        Host("sigenforce", 2204, key, newest, (newest,)),  # a named spec: not the plain VM
        Host("twokernels", 2205, key, newest, (newest, older)),
    ]))
    hosts = lab_hosts(inventory)

    # conftest.amd64_host and vm_release
    amd64_host = host_running(hosts, newest)
    assert amd64_host == "vm-6-1-0-58-amd64"
    vm_release = hosts[amd64_host]["klp_lab_kernel_release"]
    assert vm_release == "6.1.0-58-amd64"
    # yesterday's newest is now the older VM, not the newest one
    assert older == "6.1.0-57-amd64" and host_running(hosts, older) == default_name(older)

    # test_target_patch: the wrong kernel is the VM's ABI in the other flavour
    wrong = other_flavour(vm_release)
    assert wrong == "6.1.0-58-cloud-amd64" and other_flavour(wrong) == vm_release
    texts = wrong_kernel_refusal(wrong, vm_release)
    assert all("6.1.0-58-" in text for text in texts)

    # test_persist_other_kernel: both kernels from the host vars
    two = hosts["twokernels"]
    assert two["klp_lab_kernel_release"] == newest
    assert [k for k in two["klp_lab_kernels"] if k != newest] == ["6.1.0-57-amd64"]

    # ... and the texts are what the target side writes when it refuses that module.
    target = klp_kernel.Target(root=str(tmp_path), release=vm_release)
    info = {"path": "/tmp/klp_test_cmdline.ko", "livepatch": True,
            "vermagic": f"{wrong} SMP preempt mod_unload modversions "}
    with pytest.raises(klp_errors.KlpError) as refused:
        target.check_loadable(info, amd64_host)
    for text in texts:
        assert text in str(refused.value), (text, str(refused.value))


def test_other_flavour_refuses_unknown_flavours():
    with pytest.raises(ValueError, match="rt-amd64"):
        other_flavour("6.1.0-58-rt-amd64")
