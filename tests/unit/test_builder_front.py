# SPDX-License-Identifier: GPL-3.0-or-later
"""Front stages without a kernel: release names, what compile accepts, tree restore, kbuild bits."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builder.artifacts import KernelId, PreparedTree
from builder.errors import BuildError
from builder.patchset import PatchFile, PatchSet
from builder.providers import archive as archive_mod
from builder.providers import distribution_of, get_provider, provider_for
from builder.providers.archive import Archive
from builder.providers.debian import package_names_for, parse_release
from builder.stages.acquire import fix_headers_makefile, repoint_symlinks
from builder.stages.compile import (
    check_compilable,
    config_guard,
    locked,
    restore_files,
    save_files,
    target_object,
)
from builder.stages.prepare import config_drift, objtool_at_link, read_config


# ---------------------------------------------------------------- release names
@pytest.mark.parametrize(("release", "abi", "series", "flavour", "common", "kbuild"), [
    ("6.1.0-56-amd64", "6.1.0-56", "6.1", "amd64", "linux-headers-6.1.0-56-common",
     "linux-kbuild-6.1"),
    ("6.1.0-56-cloud-amd64", "6.1.0-56", "6.1", "cloud-amd64",
     "linux-headers-6.1.0-56-common", "linux-kbuild-6.1"),
    ("6.12.57+deb12-amd64", "6.12.57+deb12", "6.12", "amd64",
     "linux-headers-6.12.57+deb12-common", "linux-kbuild-6.12.57+deb12"),
    ("6.12.57+deb12-cloud-amd64", "6.12.57+deb12", "6.12", "cloud-amd64",
     "linux-headers-6.12.57+deb12-common", "linux-kbuild-6.12.57+deb12"),
    ("6.1.0-56-rt-amd64", "6.1.0-56", "6.1", "rt-amd64",
     "linux-headers-6.1.0-56-common-rt", "linux-kbuild-6.1"),
    ("6.12.118+deb13-amd64", "6.12.118+deb13", "6.12", "amd64",
     "linux-headers-6.12.118+deb13-common", "linux-kbuild-6.12.118+deb13"),
    ("6.12.118+deb13-cloud-amd64", "6.12.118+deb13", "6.12", "cloud-amd64",
     "linux-headers-6.12.118+deb13-common", "linux-kbuild-6.12.118+deb13"),
])
def test_release_names(release, abi, series, flavour, common, kbuild):
    rel = parse_release(release)
    assert (rel.abi, rel.series, rel.flavour) == (abi, series, flavour)
    names = package_names_for(rel)
    assert names["image"] == f"linux-image-{release}-unsigned"
    assert names["image_signed"] == f"linux-image-{release}"
    assert names["headers"] == f"linux-headers-{release}"
    assert names["common"] == common
    assert names["kbuild"] == kbuild
    assert names["source"] == f"linux-source-{series}"


@pytest.mark.parametrize("bad", ["", "6.1.0-56", "6.1.0-56-arm64", "linux-image-6.1.0-56-amd64",
                                 "6.1.192-amd64", "5.10.0-30-amd64x", "6.12.57-amd64"])
def test_bad_release_names_are_refused_clearly(bad):
    with pytest.raises(BuildError) as err:
        parse_release(bad)
    assert "not a Debian 12 or 13 kernel release" in str(err.value)
    assert "uname -r" in str(err.value)


def test_unknown_distribution():
    with pytest.raises(BuildError, match="unknown distribution"):
        get_provider("fedora-40")


@pytest.mark.parametrize(("release", "distribution", "suite"), [
    ("6.1.0-56-amd64", "debian-12", "bookworm"),
    ("6.12.57+deb12-cloud-amd64", "debian-12", "bookworm"),
    ("6.12.118+deb13-amd64", "debian-13", "trixie"),
])
def test_the_release_names_its_distribution_and_suite(release, distribution, suite):
    provider = provider_for(release)
    assert provider.name == distribution_of(release) == distribution
    assert provider.archive == Archive.for_kernel(release) == Archive(suite)


def test_a_kernel_of_a_debian_release_the_builder_does_not_know_is_refused():
    with pytest.raises(BuildError, match="Debian release the builder does not know"):
        parse_release("6.18.3+deb14-amd64")
    with pytest.raises(BuildError, match="a Debian 13 kernel, not one of debian-12"):
        get_provider("debian-12").resolve("6.12.118+deb13-amd64")


def test_another_suite_is_read_through_a_private_apt_root(tmp_path, monkeypatch):
    monkeypatch.setenv("KLP_CACHE", str(tmp_path))
    monkeypatch.setattr(archive_mod, "host_suite", lambda: "bookworm")
    assert Archive("bookworm").env().get("APT_CONFIG") == os.environ.get("APT_CONFIG")
    calls = []

    def fake_apt(argv, env, **_kwargs):
        calls.append((argv, env["APT_CONFIG"]))
        return subprocess.CompletedProcess(argv, 0, "", "")
    monkeypatch.setattr(archive_mod.subprocess, "run", fake_apt)
    trixie = Archive("trixie")
    env = trixie.env()
    root = tmp_path / "apt" / "trixie"
    assert env["APT_CONFIG"] == str(root / "apt.conf")
    sources = (root / "etc/apt/sources.list.d/debian.sources").read_text()
    assert "Suites: trixie trixie-updates" in sources and "Suites: trixie-security" in sources
    assert f'Dir "{root}/"' in (root / "apt.conf").read_text()
    assert calls == [(["apt-get", "update", "-q"], str(root / "apt.conf"))]
    trixie.env()  # fresh lists are not read again
    assert len(calls) == 1


def test_a_kernel_missing_from_the_controllers_own_suite_names_the_sources_it_needs(
        monkeypatch):
    """The controller's own suite is read through its apt sources; a Debian 13 machine
    made by debootstrap lists only `trixie`, where the newest kernels (from
    trixie-security) are missing: the hint says which suites the sources must list."""
    monkeypatch.setattr(archive_mod, "host_suite", lambda: "trixie")
    assert Archive("bookworm").sources_hint() == ""  # a private root lists all three
    hint = Archive("trixie").sources_hint()
    assert all(suite in hint for suite in ("trixie-updates", "trixie-security"))


# ---------------------------------------------------------------- acquire helpers
def test_absolute_symlinks_and_makefile_are_rerooted(tmp_path):
    root = tmp_path / "pkgs"
    headers = root / "usr/src/linux-headers-6.1.0-56-amd64"
    headers.mkdir(parents=True)
    (headers / "Makefile").write_text("include /usr/src/linux-headers-6.1.0-56-common/Makefile\n")
    mods = root / "lib/modules/6.1.0-56-amd64"
    mods.mkdir(parents=True)
    (mods / "build").symlink_to("/usr/src/linux-headers-6.1.0-56-amd64")
    (headers / "scripts").symlink_to("../../lib/linux-kbuild-6.1/scripts")
    assert repoint_symlinks(root, root) == 1
    assert os.readlink(mods / "build") == f"{root}/usr/src/linux-headers-6.1.0-56-amd64"
    assert os.readlink(headers / "scripts") == "../../lib/linux-kbuild-6.1/scripts"
    fix_headers_makefile(headers, root)
    assert (headers / "Makefile").read_text() == \
        f"include {root}/usr/src/linux-headers-6.1.0-56-common/Makefile\n"


# ---------------------------------------------------------------- prepare helpers
def test_config_reading_drift_and_objtool(tmp_path):
    shipped = tmp_path / "config"
    shipped.write_text('CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"\n'
                       "CONFIG_LIVEPATCH=y\n# CONFIG_X86_KERNEL_IBT is not set\n"
                       "CONFIG_PAHOLE_VERSION=124\n")
    built = tmp_path / "built"
    built.write_text('CONFIG_CC_VERSION_TEXT="gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0"\n'
                     "CONFIG_LIVEPATCH=y\nCONFIG_PAHOLE_VERSION=125\nCONFIG_BUILD_SALT=\"\"\n")
    a, b = read_config(shipped), read_config(built)
    assert a["CONFIG_X86_KERNEL_IBT"] == "n"
    assert config_drift(a, b) == []  # host tool versions and options Debian strips
    b["CONFIG_LIVEPATCH"] = "n"
    assert config_drift(a, b) == ["CONFIG_LIVEPATCH"]
    assert not objtool_at_link(a)
    assert objtool_at_link({"CONFIG_X86_KERNEL_IBT": "y"})
    assert objtool_at_link({"CONFIG_LTO_CLANG": "y"})


# ---------------------------------------------------------------- what the compile stage accepts
@pytest.mark.parametrize(("old", "new", "message"), [
    ("a/fs/Makefile", "b/fs/Makefile", "only C sources and headers"),
    ("/dev/null", "b/fs/new.c", "creates fs/new.c"),
    ("a/fs/old.c", "/dev/null", "deletes fs/old.c"),
    ("a/fs/old.c", "b/fs/new.c", "renames fs/old.c to fs/new.c"),
])
def test_refused_changes(old, new, message):
    patches = PatchSet((PatchFile.parse(f"--- {old}\n+++ {new}\n@@ -1 +1 @@\n-a\n+b\n",
                                        "p.patch"),))
    with pytest.raises(BuildError, match=message) as err:
        check_compilable(patches)
    assert err.value.hint
    assert err.value.file == "p.patch"


def test_sources_to_compile_are_the_c_files_with_hunks():
    text = ("--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-a\n+b\n"
            "diff --git a/fs/b.c b/fs/b.c\nold mode 100644\nnew mode 100755\n"
            "diff --git a/fs/a.c b/fs/a.c\n--- a/fs/a.c\n+++ b/fs/a.c\n@@ -5 +5 @@\n-c\n+d\n")
    assert check_compilable(PatchSet((PatchFile.parse(text, "p.patch"),))) == (["fs/a.c"], [])
    with pytest.raises(BuildError, match="change no line of any C source"):
        check_compilable(PatchSet((PatchFile.parse(
            "diff --git a/fs/b.c b/fs/b.c\nold mode 100644\nnew mode 100755\n", "m.patch"),)))


def test_changed_headers_are_compiled_through_the_files_that_include_them():
    text = ("--- a/include/linux/fs.h\n+++ b/include/linux/fs.h\n@@ -1 +1 @@\n-a\n+b\n"
            "--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-a\n+b\n"
            "--- /dev/null\n+++ b/fs/new.h\n@@ -0,0 +1 @@\n+x\n")
    assert check_compilable(PatchSet((PatchFile.parse(text, "p.patch"),))) == \
        (["fs/a.c"], ["include/linux/fs.h"])


def test_target_object_from_kbuild_command():
    builtin = ("gcc-12 -c -DKBUILD_BASENAME='\\\"cmdline\\\"' -DKBUILD_MODNAME='\\\"proc\\\"' "
               "-o fs/proc/cmdline.o fs/proc/cmdline.c")
    module = ("gcc-12 -DMODULE -DKBUILD_BASENAME='\\\"binfmt_misc\\\"' "
              "-DKBUILD_MODNAME='\\\"binfmt_misc\\\"' -c -o fs/binfmt_misc.o fs/binfmt_misc.c")
    assert target_object(builtin) == "vmlinux"
    assert target_object(module) == "binfmt_misc"


# ---------------------------------------------------------------- the shared tree
def _tree(tmp_path: Path) -> PreparedTree:
    source = tmp_path / "src" / "linux-source-6.1"
    build = tmp_path / "build"
    (source / "fs").mkdir(parents=True)
    build.mkdir()
    return PreparedTree(kernel=KernelId("6.1.0-56-amd64", "6.1.192-2"), source_dir=source,
                        build_dir=build)


def test_save_and_restore_bring_back_content_and_mtime(tmp_path):
    tree = _tree(tmp_path)
    src = tree.source_dir / "fs" / "a.c"
    src.write_text("int a;\n")
    os.utime(src, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    with locked(tree):
        save_files(tree, ["fs/a.c", "fs/new.c"])
        src.write_text("int a = 1;\n")
        (tree.source_dir / "fs" / "new.c").write_text("x")
        (tree.source_dir / "fs" / "a.c.rej").write_text("rejected hunk")
        # an interrupted run: the next one finds the marker and restores
        assert restore_files(tree) == ["fs/a.c", "fs/new.c"]
    assert src.read_text() == "int a;\n"
    assert src.stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert not (tree.source_dir / "fs" / "new.c").exists()
    assert not (tree.source_dir / "fs" / "a.c.rej").exists()
    assert restore_files(tree) == []  # nothing left to do


def test_config_guard_names_the_disabling_option(tmp_path):
    tree = _tree(tmp_path)
    (tree.build_dir / ".config").write_text("CONFIG_PROC_FS=y\n# CONFIG_PROC_VMCORE is not set\n")
    (tree.source_dir / "fs" / "Makefile").write_text(
        "obj-$(CONFIG_PROC_FS) += cmdline.o \\\n\tmeminfo.o\n"
        "proc-$(CONFIG_PROC_VMCORE)\t+= vmcore.o\nobj-y += always.o\n")
    assert config_guard(tree, "fs/cmdline.c") is None
    assert config_guard(tree, "fs/meminfo.c") is None
    assert config_guard(tree, "fs/always.c") is None
    assert config_guard(tree, "fs/vmcore.c") == "CONFIG_PROC_VMCORE"
    # a directory the configuration never enters
    (tree.source_dir / "fs" / "ext2").mkdir()
    (tree.source_dir / "fs" / "ext2" / "Makefile").write_text("obj-y += super.o\n")
    (tree.source_dir / "fs" / "Makefile").write_text("obj-$(CONFIG_EXT2_FS) += ext2/\n")
    assert config_guard(tree, "fs/ext2/super.c") == "CONFIG_EXT2_FS"


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs GNU patch")
def test_patch_that_does_not_apply_names_the_patch(tmp_path):
    from builder.stages.compile import apply_patch

    tree = _tree(tmp_path)
    (tree.source_dir / "fs" / "a.c").write_text("int a;\n")
    patch = tmp_path / "bad.patch"
    patch.write_text("--- a/fs/a.c\n+++ b/fs/a.c\n@@ -1 +1 @@\n-int b;\n+int c;\n")
    with pytest.raises(BuildError) as err:
        apply_patch(tree, PatchFile.read(patch), dry_run=True)
    assert "bad.patch" in str(err.value) and "does not apply" in str(err.value)
    assert "FAILED" in str(err.value)  # patch's own hunk report
    assert (tree.source_dir / "fs" / "a.c").read_text() == "int a;\n"


def test_an_outer_make_does_not_leak_into_kbuild():
    from builder.__main__ import forget_outer_make

    environ = {"MAKEFLAGS": "w -- ", "MAKELEVEL": "1", "MFLAGS": "-w", "PATH": "/usr/bin"}
    forget_outer_make(environ)
    assert environ == {"PATH": "/usr/bin"}


def test_signing_needs_both_files_before_anything_is_done(tmp_path, capsys):
    from builder.__main__ import main
    from builder.pipeline import BuildRequest

    key = tmp_path / "k.pem"
    key.write_text("key")
    common = ["build", "--kernel", "6.1.0-56-amd64", "--patch", str(key), "--name", "x",
              "--output", str(tmp_path)]
    assert main([*common, "--sign-key", str(key)]) == 2
    assert main([*common, "--sign-key", str(key), "--sign-cert", str(tmp_path / "no")]) == 2
    assert "--sign-key and --sign-cert go together" in capsys.readouterr().err
    cert_a, cert_b = tmp_path / "a.pem", tmp_path / "b.pem"
    cert_a.write_text("a")
    cert_b.write_text("b")
    keys = [BuildRequest(kernel="r", package_version="v", patches=[key], name="x",
                         output=tmp_path, sign_key=key, sign_cert=cert).key()
            for cert in (cert_a, cert_b)]
    assert keys[0] != keys[1]  # another certificate is another build


def test_a_truncated_cached_package_is_fetched_again(tmp_path, monkeypatch):
    """A .deb cut short in the cache (a full disk, a killed copy) is not trusted: the
    extraction fails, the file is deleted and downloaded once more."""
    import subprocess

    from builder.stages import acquire

    pkg = tmp_path / "pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        "Package: klp-dummy\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\n"
        "Description: test\n")
    (pkg / "usr" / "share").mkdir(parents=True)
    (pkg / "usr" / "share" / "payload").write_bytes(os.urandom(200_000))
    good = tmp_path / "good.deb"
    subprocess.run(["dpkg-deb", "-Zxz", "--build", str(pkg), str(good)], check=True,
                   capture_output=True)
    debs = tmp_path / "debs"
    debs.mkdir()
    cached = debs / "klp-dummy_1.0_all.deb"
    cached.write_bytes(good.read_bytes()[:50_000])  # truncated
    fetched = []

    def fake_download(directory, package, version, _archive):
        found = acquire.deb_path(directory, package, version)
        if found is None:
            fetched.append(package)
            cached.write_bytes(good.read_bytes())
            found = cached
        return found

    monkeypatch.setattr(acquire, "download", fake_download)
    dest = acquire.extract_packages(debs, [("klp-dummy", "1.0")], tmp_path / "root",
                                    Archive("bookworm"))
    assert fetched == ["klp-dummy"]
    assert (dest / "usr" / "share" / "payload").stat().st_size == 200_000


# ---------------------------------------------------------------- stopping
def test_a_stopped_builder_stops_every_process_it_started(tmp_path):
    """SIGTERM to the builder alone must reach the compilers it runs (here a shell and
    its `sleep`, standing in for make and gcc) and leave none of them running."""
    import psutil
    script = ("import subprocess, time\n"
              "from builder.__main__ import stop_on_signals\n"
              "stop_on_signals()\n"
              "subprocess.Popen(['sh', '-c', 'sleep 600 & wait'])\n"
              "print('ready', flush=True)\n"
              "time.sleep(600)\n")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.stdout.readline() == "ready\n"
    started = []
    for _try in range(50):  # the shell starts its sleep a moment later
        started = psutil.Process(proc.pid).children(recursive=True)
        if len(started) == 2:
            break
        time.sleep(0.1)
    assert len(started) == 2
    proc.terminate()
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + 15
    assert "stopped by SIGTERM (2 processes" in err

    def running(p):
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    assert not [p for p in started if running(p)]
