# SPDX-License-Identifier: GPL-3.0-or-later
"""Alias resolution from fixed apt-cache output (pure logic, no archive access)."""

from __future__ import annotations

import pytest

from lab import kernels
from lab.errors import LabError

SEARCH = """\
linux-image-6.1.0-47-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-47-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-50-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-50-amd64-dbg - Debug symbols for linux-image-6.1.0-50-amd64
linux-image-6.1.0-50-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-55-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-amd64 - Linux 6.1 for 64-bit PCs (signed)
linux-image-6.1.0-56-cloud-amd64 - Linux 6.1 for x86-64 cloud (signed)
linux-image-6.1.0-56-rt-amd64 - Linux 6.1 for 64-bit PCs, PREEMPT_RT (signed)
linux-image-6.12.9+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.101+deb12-amd64 - Linux 6.12 for 64-bit PCs (signed)
linux-image-6.12.101+deb12-cloud-amd64 - Linux 6.12 for x86-64 cloud (signed)
linux-image-amd64 - Linux for 64-bit PCs (meta-package)
"""

MADISON = """\
linux-image-6.1.0-56-amd64 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-6.1.0-55-amd64 |  6.1.192-1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-headers-6.1.0-55-amd64 |  6.1.192-1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-image-6.1.0-50-amd64 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
linux-image-6.1.0-50-amd64 |  6.1.176-1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-headers-6.1.0-50-amd64 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
linux-headers-6.1.0-55-common |  6.1.192-1 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-headers-6.1.0-50-common |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
linux-source-6.1 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-source-6.1 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
linux-kbuild-6.1 |  6.1.192-2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages
linux-kbuild-6.1 |  6.1.176-1 | http://deb.debian.org/debian bookworm/main amd64 Packages
"""  # noqa: E501


def test_parse_search_keeps_real_images_only():
    releases = kernels.parse_search(SEARCH)
    assert "6.1.0-50-amd64-dbg" not in releases
    assert "6.1.0-56-rt-amd64" in releases
    assert "amd64" not in releases and len(releases) == 11


def test_parse_search_reads_an_unsigned_image_as_its_release():
    found = kernels.parse_search("linux-image-6.12.118+deb12-amd64-unsigned - Linux 6.12\n"
                                 "linux-image-6.1.0-57-amd64-unsigned - Linux 6.1\n"
                                 "linux-image-6.1.0-57-amd64 - Linux 6.1 (signed)\n")
    assert found == ["6.1.0-57-amd64", "6.12.118+deb12-amd64"]


def test_parse_madison_dedups_and_keeps_order():
    versions = kernels.parse_madison(MADISON)
    assert versions["linux-image-6.1.0-50-amd64"] == ["6.1.176-1"]
    assert versions["linux-source-6.1"] == ["6.1.192-2", "6.1.176-1"]


@pytest.mark.parametrize(("series", "flavour", "which", "release"), [
    ("6.1", "amd64", "newest", "6.1.0-56-amd64"),
    ("6.1", "cloud-amd64", "newest", "6.1.0-56-cloud-amd64"),
    ("6.12", "amd64", "newest", "6.12.101+deb12-amd64"),  # numeric, not string, order
    ("6.12", "cloud-amd64", "newest", "6.12.101+deb12-cloud-amd64"),
])
def test_pick_newest(series, flavour, which, release):
    assert kernels.pick(kernels.parse_search(SEARCH), {}, series, flavour, which) == release


def test_pick_older_needs_the_builder_packages_of_the_same_version_but_not_kbuild():
    releases = kernels.parse_search(SEARCH)
    versions = kernels.parse_madison(MADISON)
    # 6.1.0-55 has headers but no linux-source 6.1.192-1: skipped for 6.1.0-50.
    assert kernels.pick(releases, versions, "6.1", "amd64", "older") == "6.1.0-50-amd64"
    # With its source it is the older ABI, although linux-kbuild-6.1 6.1.192-1 is gone:
    # the builder builds the kbuild tools from that source.
    versions["linux-source-6.1"].append("6.1.192-1")
    assert "6.1.192-1" not in versions["linux-kbuild-6.1"]
    assert kernels.pick(releases, versions, "6.1", "amd64", "older") == "6.1.0-55-amd64"
    # Two uploads behind: the next complete one below it.
    assert kernels.pick(releases, versions, "6.1", "amd64", "older-2") == "6.1.0-50-amd64"
    # Without its common headers it is skipped again.
    del versions["linux-headers-6.1.0-55-common"]
    assert kernels.pick(releases, versions, "6.1", "amd64", "older") == "6.1.0-50-amd64"


def test_builder_packages_are_what_the_builder_downloads():
    assert kernels.builder_packages("6.1.0-55-amd64") == [
        "linux-headers-6.1.0-55-amd64", "linux-headers-6.1.0-55-common", "linux-source-6.1"]
    assert kernels.builder_packages("6.12.57+deb12-cloud-amd64") == [
        "linux-headers-6.12.57+deb12-cloud-amd64", "linux-headers-6.12.57+deb12-common",
        "linux-source-6.12"]


def test_pick_errors_name_the_problem():
    with pytest.raises(LabError, match="no linux-image for Linux 6.6"):
        kernels.pick(kernels.parse_search(SEARCH), {}, "6.6", "amd64", "newest")
    with pytest.raises(LabError, match="no older-2 Linux 6.1"):
        kernels.pick(kernels.parse_search(SEARCH), {}, "6.1", "amd64", "older-2")
    with pytest.raises(LabError, match="no older Linux 6.1"):
        kernels.pick(kernels.parse_search(SEARCH), {}, "6.1", "amd64", "older")


@pytest.mark.parametrize(("release", "series", "flavour"), [
    ("6.1.0-56-amd64", "6.1", "amd64"),
    ("6.1.0-56-cloud-amd64", "6.1", "cloud-amd64"),
    ("6.12.57+deb12-amd64", "6.12", "amd64"),
    ("6.12.57+deb12-rt-amd64", "6.12", "rt-amd64"),
])
def test_release_parts(release, series, flavour):
    assert kernels.release_series(release) == series
    assert kernels.release_flavour(release) == flavour


@pytest.mark.parametrize("name", [
    "6.1.0-56-amd64", "6.1.0-56-cloud-amd64", "6.12.57+deb12-rt-amd64", "6.12.57+deb13-amd64",
    "6.1.0-50-amd64-dbg", "amd64", "6.12.57+deb11-amd64",
    "6.1.0-56-arm64", "6.1.5-amd64",
])
def test_the_lab_reads_release_names_with_the_builders_parser(name):
    """One grammar of release names: what the builder refuses is no release to the lab."""
    from builder.errors import BuildError
    from builder.providers.debian import parse_release

    try:
        rel = parse_release(name)
    except BuildError:
        rel = None
    found = kernels.parse_search(f"linux-image-{name} - a package\n")
    assert found == ([name] if rel else [])
    assert kernels.release_series(name) == (rel.series if rel else "")
    assert kernels.release_flavour(name) == (rel.flavour if rel else "")


def test_the_lab_parses_releases_without_pyelftools():
    """lab/ needs the builder's stdlib-only modules only: no ELF reader is imported."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys; sys.modules['elftools'] = None\n"
            "import lab, lab.kernels\n"
            "assert lab.kernels.release_key('6.12.9+deb12-amd64') == (6, 12, 9, 12)\n"
            "assert lab.kernels.builder_packages('6.1.0-55-amd64')\n")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[2])
