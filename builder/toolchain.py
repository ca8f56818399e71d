# SPDX-License-Identifier: GPL-3.0-or-later
"""Where a kernel's own compiler runs: on the controller, or in a build root.

A rebuilt function is proven against the shipped kernel byte for byte, which holds
only with the exact compiler the kernel was built with (its CONFIG_CC_VERSION_TEXT,
e.g. "gcc-14 (Debian 14.2.0-19) 14.2.0"). When the controller has that compiler, the
kernel's make and gcc run here. Otherwise (a Debian 13 kernel, built with gcc-14, on
a Debian 12 controller) the builder makes a build root of the kernel's own Debian
suite once, under the cache (`roots/<suite>/`: debootstrap minbase plus the kernel
build packages), and every make, gcc, objtool and sign-file call for that kernel runs
in a mount namespace of its own where the root's /usr and /etc stand in for the
controller's. Every other path (the cache, the work directory, the checkout) stays
where it is, so nothing has to be copied in or out.

A toolchain is a command prefix: [] for the controller, or the `unshare` call that
enters the root; the stages put it in front of the commands they run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from builder.cache import cache_dir, exclusive, root_dir, stamped, temporary_for
from builder.errors import BuildError
from builder.providers.archive import Archive

STAGE = "prepare"
MIRROR = "http://deb.debian.org/debian"
# What a kernel module build needs besides the compiler (which the kernel names).
ROOT_PACKAGES = ("make", "bc", "bison", "flex", "libelf-dev", "libssl-dev", "dwarves",
                 "kmod", "python3", "cpio")
ROOT_RECIPE = 1
TRIPLET = "x86_64-linux-gnu"  # Debian 13 names its kernel compiler with the triplet
# Runs as `sh -c ENTER ROOT COMMAND...`: the root's /usr (and with it /bin, /lib, /sbin
# on merged-/usr systems) and /etc over the controller's, then the command.
ENTER = 'mount --bind "$0/usr" /usr && mount --bind "$0/etc" /etc && exec "$@"'


def compiler_of(config: dict[str, str]) -> tuple[str, str]:
    """(command, version text) the shipped kernel was built with, from its config."""
    text = config.get("CONFIG_CC_VERSION_TEXT", "").strip('"')
    if not text:
        raise BuildError(stage=STAGE, message="the kernel config has no CONFIG_CC_VERSION_TEXT",
                         hint="is this a real kernel config (boot/config-<release>)?")
    return text.split()[0], text


def compiler_text(prefix: list[str], cc: str) -> str | None:
    """The first line of `cc --version` under a toolchain prefix; None when it is missing."""
    try:
        proc = subprocess.run([*prefix, cc, "--version"], capture_output=True, text=True,
                              check=False)
    except OSError:
        return None
    lines = proc.stdout.splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


def enter(root: Path) -> list[str]:
    """The prefix that runs a command with `root`'s /usr and /etc."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--propagation", "private", "--",
            "sh", "-c", ENTER, str(root)]


def toolchain_for(config: dict[str, str], release: str) -> tuple[list[str], str]:
    """(prefix, cc) that compile exactly like the shipped kernel, or BuildError."""
    cc, wanted = compiler_of(config)
    here = compiler_text([], cc)
    if here == wanted:
        return [], cc
    suite = Archive.for_kernel(release).suite
    root = build_root(suite, cc)
    prefix = enter(root)
    there = compiler_text(prefix, cc)
    if there != wanted:
        raise BuildError(
            stage=STAGE, message=f"the kernel was built with {wanted!r}; the controller has "
                                 f"{here or f'no {cc}'} and the {suite} build root {root} has "
                                 f"{there or f'no {cc}'}",
            hint="other code generation would not match the shipped kernel: build on a "
                 f"{suite} machine with exactly that compiler, or delete {root} so it is made "
                 "again from the archive")
    return prefix, cc


def compiler_package(cc: str) -> str:
    """The Debian package of a compiler command: x86_64-linux-gnu-gcc-14 -> gcc-14."""
    return cc.removeprefix(f"{TRIPLET}-")


def build_root(suite: str, cc: str) -> Path:
    """The cached build root of a suite with `cc` and ROOT_PACKAGES; made once."""
    root = root_dir(cache_dir(), suite)
    wanted = {"recipe": ROOT_RECIPE, "suite": suite,
              "packages": sorted({compiler_package(cc), *ROOT_PACKAGES})}
    stamp = root / ".klp-root"
    if stamped(stamp, wanted):
        return root
    with exclusive(root):
        if stamped(stamp, wanted):
            return root  # another build made it while we waited
        tmp = temporary_for(root)
        try:
            proc = subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=" + ",".join(wanted["packages"]),
                 suite, str(tmp), MIRROR], capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                log = tmp / "debootstrap" / "debootstrap.log"
                detail = log.read_text()[-1200:] if log.is_file() else proc.stderr[-1200:]
                raise BuildError(stage=STAGE, message=f"could not make the {suite} build root "
                                 f"({' '.join(wanted['packages'])}):\n{detail}",
                                 hint="the builder needs debootstrap and Debian's archive "
                                      "(apt-get install debootstrap)")
            (tmp / stamp.name).write_text(json.dumps(wanted))
            shutil.rmtree(root, ignore_errors=True)
            tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


__all__ = ["toolchain_for", "compiler_of", "build_root", "enter", "ROOT_PACKAGES"]
