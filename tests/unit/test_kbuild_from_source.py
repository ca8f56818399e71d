# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernels whose linux-kbuild package the archive dropped still build (issue 10).

No network and no kernel: apt-cache output is simulated, and the trees are small fakes
laid out like Debian's packages and a prepared kernel tree.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from builder.artifacts import KernelId, KernelPackages
from builder.errors import BuildError
from builder.providers import archive, debian
from builder.stages import acquire
from builder.stages import compile as compile_stage
from builder.stages import prepare as prepare_stage

SECURITY = "http://deb.debian.org/debian-security bookworm-security/main amd64 Packages"
MAIN = "http://deb.debian.org/debian bookworm/main amd64 Packages"
# What `apt-cache madison` said on 2026-11-30 (abridged): every 6.1 source, the ABI-named
# headers of the uploads that have them, one linux-kbuild-6.1 per suite.
MADISON = f"""\
linux-image-6.1.0-56-amd64-unsigned |  6.1.192-2 | {SECURITY}
linux-headers-6.1.0-56-amd64 |  6.1.192-2 | {SECURITY}
linux-headers-6.1.0-56-common |  6.1.192-2 | {SECURITY}
linux-image-6.1.0-52-amd64 |  6.1.180-1 | {SECURITY}
linux-kbuild-6.1 |  6.1.192-3 | {SECURITY}
linux-kbuild-6.1 |  6.1.176-1 | {MAIN}
linux-source-6.1 |  6.1.192-3 | {SECURITY}
linux-source-6.1 |  6.1.192-2 | {SECURITY}
linux-source-6.1 |  6.1.176-1 | {MAIN}
linux-source-6.1 |  6.1.176-1 | {SECURITY}
"""
CONFIG_61 = {"CONFIG_MODULES": "y", "CONFIG_MODVERSIONS": "y", "CONFIG_MODULE_SIG_FORMAT": "y",
             "CONFIG_OBJTOOL": "y", "CONFIG_BPF": "y", "CONFIG_DEBUG_INFO_BTF": "y",
             "CONFIG_FTRACE_MCOUNT_USE_CC": "y"}


# ---------------------------------------------------------------- what the archive has
def test_madison_is_parsed_per_package_newest_first():
    offered = archive.parse_madison(MADISON)
    assert offered["linux-source-6.1"] == ["6.1.192-3", "6.1.192-2", "6.1.176-1"]
    assert offered["linux-kbuild-6.1"] == ["6.1.192-3", "6.1.176-1"]


def test_kbuild_is_not_needed_headers_and_source_are():
    offered = archive.parse_madison(MADISON)
    names = debian.package_names_for(debian.parse_release("6.1.0-56-amd64"))
    wanted = {names[role]: offered.get(names[role], []) for role in debian.ARCHIVE_ROLES}
    assert "kbuild" not in debian.ARCHIVE_ROLES
    assert debian.missing_packages(names, "6.1.192-2", wanted) == []  # kbuild 192-2 is gone
    # 6.1.0-52: Debian kept only its signed image; no headers, no source of 6.1.180-1.
    names = debian.package_names_for(debian.parse_release("6.1.0-52-amd64"))
    names["image"] = names.pop("image_signed")
    wanted = {names[role]: offered.get(names[role], []) for role in debian.ARCHIVE_ROLES}
    assert debian.missing_packages(names, "6.1.180-1", wanted) == [
        "linux-headers-6.1.0-52-amd64", "linux-headers-6.1.0-52-common", "linux-source-6.1"]


def _fake_archive(monkeypatch, calls: list[list[str]]):
    def query(_archive, *cmd, stage="resolve"):
        calls.append(list(cmd))
        assert cmd[:2] == ("apt-cache", "madison"), cmd
        return "".join(line + "\n" for line in MADISON.splitlines()
                       if line.split("|")[0].strip() in cmd[2:])
    monkeypatch.setattr(archive.Archive, "query", query)


def test_a_kernel_without_headers_or_source_is_refused_before_any_download(
        monkeypatch, tmp_path):
    calls: list[list[str]] = []
    _fake_archive(monkeypatch, calls)
    monkeypatch.setattr(acquire, "acquire_packages",
                        lambda *a: pytest.fail("nothing may be downloaded"))
    kernel = KernelId(release="6.1.0-52-amd64", package_version="6.1.180-1")
    with pytest.raises(BuildError) as err:
        debian.DebianProvider().acquire(kernel, tmp_path)
    text = str(err.value)
    assert "linux-headers-6.1.0-52-amd64=6.1.180-1" in text
    assert "linux-source-6.1=6.1.180-1" in text and "6.1.192-3" in text  # what it has
    assert "linux-kbuild" not in text
    assert "reboot" in text and "debs" in text  # what to do


def test_kbuild_is_neither_asked_for_nor_downloaded(monkeypatch, tmp_path):
    calls: list[list[str]] = []
    _fake_archive(monkeypatch, calls)
    got = {}
    monkeypatch.setattr(acquire, "acquire_packages",
                        lambda kernel, names, cache, _archive: got.setdefault("names", names))
    # the source is cached already: it is not asked about either
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "linux-source-6.1_6.1.192-2_all.deb").write_bytes(b"deb")
    kernel = KernelId(release="6.1.0-56-amd64", package_version="6.1.192-2")
    debian.DebianProvider().acquire(kernel, tmp_path)
    asked = calls[-1][2:]
    assert asked == ["linux-image-6.1.0-56-amd64-unsigned", "linux-headers-6.1.0-56-amd64",
                     "linux-headers-6.1.0-56-common"]
    assert got["names"]["image"] == "linux-image-6.1.0-56-amd64-unsigned"
    assert acquire.KERNEL_ROLES == ("image", "headers", "common")


# ---------------------------------------------------------------- downloads and extraction
def test_download_lands_complete_or_not_at_all(monkeypatch, tmp_path):
    debs = tmp_path / "debs"

    class Proc:
        def __init__(self, returncode):
            self.returncode, self.stderr = returncode, "E: Version '6.1.192-2' was not found"

    def fake_apt(cmd, cwd, **_kwargs):
        assert Path(cwd).parent == debs and Path(cwd).name.startswith(".download-")
        package, version = cmd[-1].split("=")
        if package == "linux-kbuild-6.1":
            (Path(cwd) / "partial.deb").write_bytes(b"half")
            return Proc(100)
        (Path(cwd) / f"{package}_{version}_all.deb").write_bytes(b"deb")
        return Proc(0)
    monkeypatch.setattr(archive.subprocess, "run", fake_apt)
    bookworm = archive.Archive("bookworm")
    deb = acquire.download(debs, "linux-source-6.1", "6.1.192-2", bookworm)
    assert deb == debs / "linux-source-6.1_6.1.192-2_all.deb" and deb.read_bytes() == b"deb"
    with pytest.raises(BuildError, match="cannot download linux-kbuild-6.1=6.1.192-2"):
        acquire.download(debs, "linux-kbuild-6.1", "6.1.192-2", bookworm)
    assert sorted(p.name for p in debs.iterdir()) == [deb.name]  # no partial file or dir


def test_an_extraction_another_build_finished_first_is_kept(tmp_path):
    dest, tmp = tmp_path / "deb", tmp_path / ".deb.tmp-1"
    dest.mkdir()
    (dest / "theirs").write_text("x")
    tmp.mkdir()
    (tmp / "ours").write_text("y")
    assert acquire.rename_into_place(tmp, dest) is False
    assert not tmp.exists() and sorted(p.name for p in dest.iterdir()) == ["theirs"]
    tmp.mkdir()
    assert acquire.rename_into_place(tmp, tmp_path / "new") is True
    assert (tmp_path / "new").is_dir() and not tmp.exists()


def test_sign_file_is_the_headers_own_when_the_kernel_signs_modules(tmp_path):
    kernel = KernelId(release="6.1.0-56-amd64", package_version="6.1.192-2")
    names = debian.package_names_for(debian.parse_release(kernel.release))
    root, src = tmp_path / "pkgs", tmp_path / "src"
    headers = root / "usr/src/linux-headers-6.1.0-56-amd64"
    for path in (headers / "Module.symvers", root / "boot/vmlinuz-6.1.0-56-amd64",
                 src / "usr/src/linux-source-6.1.tar.xz"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    (root / "lib/modules/6.1.0-56-amd64").mkdir(parents=True)
    config = root / "boot/config-6.1.0-56-amd64"
    config.write_text("CONFIG_MODULE_SIG_FORMAT=y\n")
    packages = acquire.packages_from_roots(kernel, names, root, src)
    assert packages.sign_file == headers / "scripts" / "sign-file"
    config.write_text("# CONFIG_MODULE_SIG_FORMAT is not set\n")
    assert acquire.packages_from_roots(kernel, names, root, src).sign_file is None


# ---------------------------------------------------------------- the tools, from source
def fake_source(root: Path) -> Path:
    source = root / "src" / "6.1.192-2" / "linux-source-6.1"
    (source / "scripts" / "mod").mkdir(parents=True)
    (source / "Makefile").write_text("# top\n")
    for name in ("Makefile.build", "Makefile.modpost", "Kbuild.include"):
        (source / "scripts" / name).write_text(f"# {name}\n")
    (source / "scripts" / "pahole-flags.sh").write_text("#!/bin/sh\n")
    (source / "scripts" / "pahole-flags.sh").chmod(0o755)
    (source / "scripts" / "mod" / "modpost.c").write_text("int main;\n")  # a tool's source
    return source


def fake_build(build: Path, tools=None) -> Path:
    for tool in tools if tools is not None else [
            "scripts/basic/fixdep", "scripts/mod/modpost", "scripts/genksyms/genksyms",
            "scripts/sign-file", "tools/objtool/objtool",
            "tools/bpf/resolve_btfids/resolve_btfids", "scripts/kconfig/conf",
            "scripts/mod/mk_elfconfig", "scripts/module.lds"]:
        (build / tool).parent.mkdir(parents=True, exist_ok=True)
        (build / tool).write_text(f"ELF {tool}\n")
        (build / tool).chmod(0o755)
    return build


def test_required_tools_follow_the_configuration():
    assert prepare_stage.required_tools(CONFIG_61) == [
        "scripts/basic/fixdep", "scripts/mod/modpost", "scripts/genksyms/genksyms",
        "scripts/sign-file", "tools/objtool/objtool", "tools/bpf/resolve_btfids/resolve_btfids"]
    assert prepare_stage.required_tools({"CONFIG_MODULES": "y"}) == [
        "scripts/basic/fixdep", "scripts/mod/modpost"]
    assert "scripts/genksyms/genksyms" not in prepare_stage.required_tools(
        {**CONFIG_61, "CONFIG_GENDWARFKSYMS": "y"})


def test_tools_are_installed_like_the_kbuild_package(tmp_path):
    source = fake_source(tmp_path)
    build = fake_build(tmp_path / "build")
    dest = tmp_path / "kernel" / "kbuild"
    dest.parent.mkdir()
    prepare_stage.install_host_tools(source, build, CONFIG_61, dest, {"recipe": 1})
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [".klp-kbuild", "scripts/Kbuild.include", "scripts/Makefile.build",
                     "scripts/Makefile.modpost", "scripts/basic/fixdep",
                     "scripts/genksyms/genksyms", "scripts/kconfig/conf",
                     "scripts/mod/modpost", "scripts/pahole-flags.sh", "scripts/sign-file",
                     "tools/bpf/resolve_btfids/resolve_btfids", "tools/objtool/objtool"]
    assert (dest / "scripts/pahole-flags.sh").stat().st_mode & stat.S_IXUSR
    assert (dest / "tools/objtool/objtool").stat().st_mode & stat.S_IXUSR
    assert json.loads((dest / ".klp-kbuild").read_text()) == {"recipe": 1}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kbuild"]  # no temporaries
    # installing again (a new recipe) replaces the whole directory
    (build / "scripts/kconfig/conf").unlink()
    prepare_stage.install_host_tools(source, build, CONFIG_61, dest, {"recipe": 2})
    assert not (dest / "scripts/kconfig/conf").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["kbuild"]


def test_a_tool_the_configuration_needs_must_have_been_built(tmp_path):
    source = fake_source(tmp_path)
    build = fake_build(tmp_path / "build", ["scripts/basic/fixdep", "scripts/mod/modpost"])
    dest = tmp_path / "kbuild"
    with pytest.raises(BuildError) as err:
        prepare_stage.install_host_tools(source, build, CONFIG_61, dest, {})
    assert "scripts/sign-file" in str(err.value) and "tools/objtool/objtool" in str(err.value)
    assert not dest.exists()


def fake_headers(root: Path, series: str = "6.1") -> Path:
    """pkgs/ as dpkg-deb leaves it: both headers trees link into a missing linux-kbuild."""
    src = root / "pkgs" / "usr" / "src"
    for name in ("linux-headers-6.1.0-56-amd64", "linux-headers-6.1.0-56-common"):
        (src / name).mkdir(parents=True)
        for link in ("scripts", "tools"):
            (src / name / link).symlink_to(f"../../lib/linux-kbuild-{series}/{link}")
    return src / "linux-headers-6.1.0-56-amd64"


def test_the_headers_are_pointed_at_the_tools(tmp_path):
    headers = fake_headers(tmp_path)
    tools = tmp_path / "kbuild"
    fake_build(tools, ["scripts/basic/fixdep", "tools/objtool/objtool"])
    assert not prepare_stage.headers_linked(headers, tools)
    prepare_stage.link_headers(headers, tools)
    assert prepare_stage.headers_linked(headers, tools)
    common = headers.parent / "linux-headers-6.1.0-56-common"
    for tree in (headers, common):
        assert os.readlink(tree / "scripts") == "../../../../kbuild/scripts"  # relative
        assert (tree / "scripts/basic/fixdep").read_text() == "ELF scripts/basic/fixdep\n"
        assert (tree / "tools/objtool/objtool").is_file()
    prepare_stage.link_headers(headers, tools)  # idempotent
    assert sorted(p.name for p in headers.iterdir()) == ["scripts", "tools"]


def test_headers_without_the_links_are_refused(tmp_path):
    headers = tmp_path / "pkgs/usr/src/linux-headers-6.1.0-56-amd64"
    (headers / "scripts").mkdir(parents=True)
    with pytest.raises(BuildError, match="no scripts/ or tools/ link"):
        prepare_stage.link_headers(headers, tmp_path / "kbuild")


# ---------------------------------------------------------------- the prepare stage
@pytest.fixture
def kernel_tree(tmp_path, monkeypatch):
    """A cache with extracted packages and a fake kbuild: make calls are recorded."""
    cache = tmp_path / "cache"
    source = fake_source(cache)
    calls: list[tuple[str, str, float, float]] = []

    def fake_make(cmd, what, cwd=None):
        build = Path(next(a for a in cmd if a.startswith("O="))[2:])
        start = time.monotonic()
        if cmd[-1] == "olddefconfig":
            time.sleep(0.2)  # long enough for another thread to run into the lock
        if cmd[-1] == "modules_prepare":
            fake_build(build)
        if cmd[-1] == "kernelrelease":
            return build.parent.name.split("_")[0] + "\n"
        calls.append((build.parent.name, cmd[-1], start, time.monotonic()))
        return ""

    def fake_release(tree):
        (tree.build_dir / "include/config").mkdir(parents=True, exist_ok=True)

    monkeypatch.setattr(prepare_stage, "_make_run", fake_make)
    monkeypatch.setattr(prepare_stage, "toolchain_for", lambda config, release: ([], "gcc-12"))
    monkeypatch.setattr(prepare_stage, "check_release", fake_release)
    monkeypatch.setattr(prepare_stage, "extract_source", lambda tarball, root: source)

    def packages(release: str) -> KernelPackages:
        kernel = KernelId(release=release, package_version="6.1.192-2")
        root = cache / "kernels" / f"{release}_6.1.192-2"
        headers = fake_headers(root)
        config = root / "pkgs/boot" / f"config-{release}"
        config.parent.mkdir(parents=True)
        config.write_text("".join(f"{k}={v}\n" for k, v in CONFIG_61.items()))
        (headers / "Module.symvers").write_text("")
        return KernelPackages(kernel=kernel, source_tarball=root / "linux-source-6.1.tar.xz",
                              headers_dir=headers, vmlinuz=root / "vmlinuz", config=config,
                              modules_dir=root, module_symvers=headers / "Module.symvers")
    return cache, source, calls, packages


def test_prepare_builds_and_wires_the_tools_then_stays_warm(kernel_tree, monkeypatch):
    cache, _source, calls, packages = kernel_tree
    pkgs = packages("6.1.0-56-amd64")
    tree = prepare_stage.prepare(pkgs, cache)
    assert [c[1] for c in calls] == ["olddefconfig", "modules_prepare"]
    tools = cache / "kernels/6.1.0-56-amd64_6.1.192-2/kbuild"
    assert (pkgs.headers_dir / "scripts/mod/modpost").resolve() == \
        (tools / "scripts/mod/modpost").resolve()
    assert (pkgs.headers_dir / "scripts/Makefile.build").is_file()
    assert tree.build_dir == tools.parent / "build"
    # warm: no make, and not even the lock (another flavour may be compiling)
    monkeypatch.setattr(compile_stage, "locked", lambda tree: pytest.fail("locked"))
    prepare_stage.prepare(pkgs, cache)
    assert len(calls) == 2


def test_a_tree_prepared_before_this_change_only_gets_its_tools(kernel_tree):
    cache, _source, calls, packages = kernel_tree
    pkgs = packages("6.1.0-57-amd64")
    prepare_stage.prepare(pkgs, cache)
    tools = cache / "kernels/6.1.0-57-amd64_6.1.192-2/kbuild"
    # an older cache: the package's kbuild linked in, no tools of ours
    shutil.rmtree(tools)
    for tree in pkgs.headers_dir.parent.iterdir():
        for link in ("scripts", "tools"):
            (tree / link).unlink()
            (tree / link).symlink_to(f"../../lib/linux-kbuild-6.1/{link}")
    calls.clear()
    prepare_stage.prepare(pkgs, cache)
    assert calls == []  # no make: modules_prepare had built the tools
    assert prepare_stage.headers_linked(pkgs.headers_dir, tools)
    assert (tools / "scripts/sign-file").is_file()


def test_prepare_restores_a_tree_an_interrupted_compile_left_patched(kernel_tree):
    cache, source, _calls, packages = kernel_tree
    pkgs = packages("6.1.0-56-amd64")
    tree = prepare_stage.prepare(pkgs, cache)
    pristine = (source / "scripts/Makefile.build").read_text()
    compile_stage.save_files(tree, ["scripts/Makefile.build"])
    (source / "scripts/Makefile.build").write_text("# patched\n")
    (tree.build_dir / ".klp-prepared").unlink()  # make the next run re-prepare
    prepare_stage.prepare(pkgs, cache)
    assert (source / "scripts/Makefile.build").read_text() == pristine


def test_two_flavours_of_one_version_prepare_one_after_the_other(kernel_tree):
    cache, _source, calls, packages = kernel_tree
    flavours = [packages("6.1.0-56-amd64"), packages("6.1.0-56-cloud-amd64")]
    with ThreadPoolExecutor(max_workers=2) as pool:  # result() re-raises a thread's error
        for future in [pool.submit(prepare_stage.prepare, p, cache) for p in flavours]:
            future.result()
    spans = {}
    for kernel, _step, start, end in calls:
        first, last = spans.get(kernel, (start, end))
        spans[kernel] = (min(first, start), max(last, end))
    (a_start, a_end), (b_start, b_end) = sorted(spans.values())
    assert a_end <= b_start, "the shared source tree was used by both at once"
    for pkgs in flavours:
        tools = cache / "kernels" / f"{pkgs.kernel.release}_6.1.192-2" / "kbuild"
        assert prepare_stage.headers_linked(pkgs.headers_dir, tools)
