# SPDX-License-Identifier: GPL-3.0-or-later
"""Acquire: download a kernel's packages once and extract them into the cache.

Layout under $KLP_CACHE:
  debs/                                  the .deb files, as apt-get download names them
  kernels/<release>_<version>/pkgs/      image + headers + common headers, one root
  src/<source-version>/deb/              the linux-source package (shared by flavours)
No linux-kbuild package: the archive keeps only the newest of a suite, so the prepare
stage builds its tools (fixdep, modpost, genksyms, objtool, sign-file...) from the exact
source and points the headers' scripts/ and tools/ at them.

Each download and each extraction goes to a temporary name renamed into place, so a
crash never leaves a half-written file or tree that later runs would trust, and two
builds that fetch the same package at once (two flavours share the common headers and
the source) never see each other's partial work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from builder.artifacts import KernelId, KernelPackages
from builder.cache import kernel_dir, source_root, temporary_for
from builder.errors import BuildError
from builder.providers.archive import Archive
from builder.stages.prepare import read_config

STAGE = "acquire"


def deb_path(debs: Path, package: str, version: str) -> Path | None:
    """The cached .deb of package=version, if any (apt encodes ':' of epochs as %3a)."""
    quoted = version.replace(":", "%3a")
    found = sorted(debs.glob(f"{package}_{quoted}_*.deb"))
    return found[0] if found else None


def download(debs: Path, package: str, version: str, archive: Archive) -> Path:
    """`apt-get download package=version` into debs/ unless it is already there.

    apt writes into a directory of this process, and the finished .deb is renamed into
    debs/: another build looking for the same package sees it complete or not at all.
    """
    cached = deb_path(debs, package, version)
    if cached:
        return cached
    debs.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".download-", dir=debs))
    try:
        # As root apt drops privileges to _apt, which may not write to the cache:
        # keep root for this download (a plain file fetch into our own directory).
        proc = archive.run("apt-get", "download", "-q", "-o", "APT::Sandbox::User=root",
                           f"{package}={version}", stage=STAGE, cwd=partial)
        fetched = deb_path(partial, package, version)
        if proc.returncode != 0 or fetched is None:
            raise BuildError(stage=STAGE, message=f"cannot download {package}={version}: "
                             f"{proc.stderr.strip()[-600:]}",
                             hint=f"{archive.update_hint()}; check the version with "
                                  f"`apt-cache madison {package}`")
        os.replace(fetched, debs / fetched.name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return debs / fetched.name


class BadPackage(BuildError):
    """A cached .deb that dpkg-deb cannot read (truncated by a full disk, corrupted)."""

    def __init__(self, deb: Path, detail: str):
        super().__init__(stage=STAGE, file=str(deb), message=f"dpkg-deb -x failed: {detail}",
                         hint=f"delete {deb} so it is downloaded again")
        self.deb = deb


def extract_packages(debs_dir: Path, specs: list[tuple[str, str]], dest: Path,
                     archive: Archive, finish: Callable[[Path], None] | None = None) -> Path:
    """Download (package, version) pairs and extract them into dest. A cached .deb that
    turns out unreadable is deleted and downloaded once more before giving up."""
    for attempt in (1, 2):
        debs = [download(debs_dir, package, version, archive) for package, version in specs]
        try:
            return extract_atomically(debs, dest, finish)
        except BadPackage as err:
            if attempt == 2:
                raise
            err.deb.unlink(missing_ok=True)
    raise AssertionError("unreachable")


def extract_atomically(debs: list[Path], dest: Path,
                       finish: Callable[[Path], None] | None = None) -> Path:
    """dpkg-deb -x every deb into one fresh root, `finish` it, then rename it to dest.

    When another build renamed its own extraction into place first, that one is kept.
    """
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(dest)
    tmp.mkdir()
    try:
        for deb in debs:
            proc = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise BadPackage(deb, proc.stderr.strip())
        repoint_symlinks(tmp, dest)
        if finish:
            finish(tmp)
        rename_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def rename_into_place(tmp: Path, dest: Path) -> bool:
    """Rename a finished directory to dest; False (tmp removed) if another build was first."""
    try:
        tmp.rename(dest)
    except OSError:
        if not dest.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


def repoint_symlinks(root: Path, final_root: Path) -> int:
    """Absolute symlinks (lib/modules/*/build → /usr/src/…) point into final_root.

    The packages expect to be installed at /; extracted elsewhere, an absolute link
    would silently use whatever the host has installed (or nothing).
    """
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            link = Path(dirpath) / name
            if link.is_symlink():
                target = os.readlink(link)
                if target.startswith("/"):
                    link.unlink()
                    link.symlink_to(str(final_root) + target)
                    count += 1
    return count


def fix_headers_makefile(headers_dir: Path, root: Path) -> None:
    """The flavour's Makefile includes /usr/src/linux-headers-*-common/Makefile: re-root it."""
    makefile = headers_dir / "Makefile"
    text = makefile.read_text()
    fixed = "\n".join(
        f"include {root}{line.split(None, 1)[1]}"
        if line.startswith("include /usr/") else line for line in text.splitlines()) + "\n"
    if fixed != text:
        makefile.write_text(fixed)


KERNEL_ROLES = ("image", "headers", "common")  # extracted together into pkgs/


def extracted(kernel: KernelId, cache: Path) -> bool:
    """True when every package of the kernel is extracted already: nothing to download."""
    return (kernel_dir(cache, kernel) / "pkgs").is_dir() and \
        (source_root(cache, kernel.package_version) / "deb").is_dir()


def acquire_packages(kernel: KernelId, names: dict[str, str], cache: Path,
                     archive: Archive) -> KernelPackages:
    """Download and extract everything; return where each piece is."""
    debs_dir = cache / "debs"
    version = kernel.package_version
    root = kernel_dir(cache, kernel) / "pkgs"
    if not root.is_dir():
        extract_packages(debs_dir, [(names[role], version) for role in KERNEL_ROLES], root,
                         archive, finish=lambda tmp: fix_headers_makefile(
                             tmp / "usr" / "src" / names["headers"], root))
    fix_headers_makefile(root / "usr" / "src" / names["headers"], root)  # older caches
    src = source_root(cache, version) / "deb"
    if not src.is_dir():
        extract_packages(debs_dir, [(names["source"], version)], src, archive)
    return packages_from_roots(kernel, names, root, src)


def packages_from_roots(kernel: KernelId, names: dict[str, str], root: Path,
                        src: Path) -> KernelPackages:
    """Locate the files the later stages need; fail clearly if a package lacks one."""
    release = kernel.release
    tarballs = sorted((src / "usr" / "src").glob(f"{names['source']}.tar.*"))
    headers = root / "usr" / "src" / names["headers"]
    paths = {
        "source tarball": tarballs[0] if tarballs else src / "usr/src" / names["source"],
        "headers": headers,
        "vmlinuz": root / "boot" / f"vmlinuz-{release}",
        "config": root / "boot" / f"config-{release}",
        # Debian 13 ships modules under /usr/lib (merged /usr), Debian 12 under /lib
        "modules": next((d for d in (root / "lib" / "modules" / release,
                                     root / "usr" / "lib" / "modules" / release)
                         if d.is_dir()), root / "lib" / "modules" / release),
        "Module.symvers": headers / "Module.symvers",
    }
    for what, path in paths.items():
        if not path.exists():
            raise BuildError(stage=STAGE, file=str(path), message=f"the {what} is missing",
                             hint="delete the extracted directory to re-extract: "
                                  f"{root.parent}")
    # The headers' sign-file: built from the source and linked in by the prepare stage
    # when the kernel signs modules at all (as the kbuild package would have it).
    signs = read_config(paths["config"]).get("CONFIG_MODULE_SIG_FORMAT") == "y"
    return KernelPackages(
        kernel=kernel, source_tarball=paths["source tarball"], headers_dir=headers,
        vmlinuz=paths["vmlinuz"], config=paths["config"], modules_dir=paths["modules"],
        module_symvers=paths["Module.symvers"],
        sign_file=headers / "scripts" / "sign-file" if signs else None)


__all__ = ["acquire_packages", "download", "extract_atomically", "extract_packages",
           "BadPackage",
           "rename_into_place", "repoint_symlinks", "KERNEL_ROLES"]
