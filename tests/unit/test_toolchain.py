# SPDX-License-Identifier: GPL-3.0-or-later
"""Which toolchain builds a kernel: the controller's compiler, or a build root's."""

from __future__ import annotations

import pytest

from builder import toolchain
from builder.errors import BuildError

GCC14 = "gcc-14 (Debian 14.2.0-19) 14.2.0"
GCC12 = "gcc-12 (Debian 12.2.0-14) 12.2.0"


def config(text: str) -> dict[str, str]:
    return {"CONFIG_CC_VERSION_TEXT": f'"{text}"'}


def test_the_compiler_comes_from_the_config():
    assert toolchain.compiler_of(config(GCC14)) == ("gcc-14", GCC14)
    with pytest.raises(BuildError, match="no CONFIG_CC_VERSION_TEXT"):
        toolchain.compiler_of({})


def test_the_controllers_compiler_when_it_is_the_kernels(monkeypatch):
    monkeypatch.setattr(toolchain, "compiler_text", lambda prefix, cc: GCC12)
    monkeypatch.setattr(toolchain, "build_root", lambda *a: pytest.fail("no root needed"))
    assert toolchain.toolchain_for(config(GCC12), "6.1.0-57-amd64") == ([], "gcc-12")


def test_a_build_root_of_the_kernels_suite_otherwise(monkeypatch, tmp_path):
    roots = []
    monkeypatch.setattr(toolchain, "build_root",
                        lambda suite, cc: roots.append((suite, cc)) or tmp_path / suite)
    monkeypatch.setattr(toolchain, "compiler_text",
                        lambda prefix, cc: GCC14 if prefix else None)  # none here
    prefix, cc = toolchain.toolchain_for(config(GCC14), "6.12.118+deb13-amd64")
    assert roots == [("trixie", "gcc-14")] and cc == "gcc-14"
    assert prefix[0] == "unshare" and "--mount" in prefix
    assert prefix[-1] == str(tmp_path / "trixie")  # the root is the script's $0


def test_a_root_with_another_compiler_version_is_refused_naming_both(monkeypatch, tmp_path):
    monkeypatch.setattr(toolchain, "build_root", lambda suite, cc: tmp_path / suite)
    monkeypatch.setattr(toolchain, "compiler_text",
                        lambda prefix, cc: "gcc-14 (Debian 14.2.0-20) 14.2.0" if prefix
                        else None)
    with pytest.raises(BuildError) as err:
        toolchain.toolchain_for(config(GCC14), "6.12.118+deb13-cloud-amd64")
    text = str(err.value)
    assert GCC14 in text and "14.2.0-20" in text and "no gcc-14" in text
    assert "trixie" in text


def test_the_compiler_package_is_named_without_the_triplet():
    assert toolchain.compiler_package("x86_64-linux-gnu-gcc-14") == "gcc-14"
    assert toolchain.compiler_package("gcc-12") == "gcc-12"
