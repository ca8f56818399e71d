# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller's cache ($KLP_CACHE): what it holds, and pruning it to a size budget.

A source tree is about 1.6 GB per Debian source version and every kernel adds its
packages, so a controller that follows the archive fills its disk. `python3 -m builder
cache list` shows each entry with its size and when a build last used it; `cache prune
--max-size 20G` deletes the least recently used entries until the rest fits.

This module owns the layout: every stage asks it where things go.
Entries (the lab's images and the artifact store are not builder cache and are left):
  debs/<file>.deb              downloaded packages
  kernels/<release>_<version>  a kernel's extracted packages, vmlinux, kallsyms, layout
  src/<source-version>         a prepared source tree (shared by flavours, locked in use)
  work/<name>-<release>        a build's compiled objects
  roots/<suite>                a build root with a suite's own compiler (builder/toolchain.py)
  apt/<suite>                  package lists of a suite the controller's apt does not
                               follow (small, kept)
Builds mark what they use (USED_MARK); an entry never marked counts from its mtime. A
source tree another build holds (its lock is taken) is never removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

AREAS = ("debs", "kernels", "src", "work")
USED_MARK = ".klp-used"
TREE_LOCK = ".klp-lock"  # compile.locked() holds it on src/<version>/
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Entry:
    path: Path
    area: str
    size: int
    last_used: float


def cache_dir() -> Path:
    """$KLP_CACHE, default ~/.cache/klp-livepatch (never in git)."""
    return Path(os.environ.get("KLP_CACHE") or Path.home() / ".cache" / "klp-livepatch")


def kernel_dir(root: Path, kernel) -> Path:
    """A kernel's packages (pkgs/), build dir, kbuild tools, vmlinux and symbols."""
    return root / "kernels" / f"{kernel.release}_{kernel.package_version}"


def symbols_dir(kernel_root: Path) -> Path:
    """The shipped image's extracted vmlinux and symbol tables, beside pkgs/ and build/
    of the kernel's directory (kernel_dir)."""
    return kernel_root / "symbols"


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes: cache keys, manifests and module checks use it."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def apt_root(root: Path, suite: str) -> Path:
    """A private apt root for a suite the controller's apt does not follow."""
    return root / "apt" / suite


def root_dir(root: Path, suite: str) -> Path:
    """A build root of a suite (its compiler and kbuild's needs), for its kernels."""
    return root / "roots" / suite


def source_root(root: Path, source_version: str) -> Path:
    """A Debian source version: its linux-source package (deb/) and prepared tree."""
    return root / "src" / source_version


def work_dir(root: Path, name: str, release: str) -> Path:
    """Where a build of module NAME for kernel RELEASE keeps its compiled objects."""
    return root / "work" / f"{name}-{release}"


def temporary_for(dest: Path) -> Path:
    """This thread's temporary name beside `dest` (`.NAME.tmp-PID.THREAD`), renamed into
    place when complete; a leftover of a process that no longer runs (a killed build),
    or of this very thread, is removed first, so an interrupted build never leaves a half
    tree for good. Threads of one process (the update builds units two at a time) never
    share a name, so neither removes nor renames the other's."""
    mine = f"{os.getpid()}.{threading.get_ident()}"
    for leftover in dest.parent.glob(f".{dest.name}.tmp-*"):
        owner = leftover.name.rpartition(".tmp-")[2]
        pid = owner.split(".")[0]
        if pid.isdigit() and (owner == mine or not _running(int(pid))):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
    return dest.with_name(f".{dest.name}.tmp-{mine}")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def stamped(path: Path, wanted: dict) -> bool:
    """Does the JSON stamp at `path` record exactly `wanted` (a cached step is current)?"""
    try:
        return json.loads(path.read_text()) == wanted
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def exclusive(work: Path):
    """One build at a time per work directory: two runs of the same build (AWX slices,
    two playbooks) take turns, so the second finds the first's result instead of
    compiling into the same directory at the same time."""
    work.parent.mkdir(parents=True, exist_ok=True)
    with open(work.with_name(f".{work.name}.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mark_used(*paths: Path) -> None:
    """Record that a build used these cache entries now (for prune's order)."""
    for path in paths:
        if path.is_dir():
            (path / USED_MARK).touch()


def parse_size(text: str) -> int:
    """'20G', '500M', '1.5T', '123' (bytes) -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 20G, 500M or 123456")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def human(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _UNITS[unit]:
            return f"{size / _UNITS[unit]:.1f}{unit}"
    return f"{size}B"


def _size(path: Path) -> int:
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            with contextlib.suppress(OSError):  # removed meanwhile by a build's clean-up
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _last_used(path: Path) -> float:
    mark = path / USED_MARK
    return mark.stat().st_mtime if mark.exists() else path.lstat().st_mtime


def entries(root: Path) -> list[Entry]:
    """Every cache entry, least recently used first (temporary names are skipped)."""
    found = []
    for area in AREAS:
        base = root / area
        if not base.is_dir():
            continue
        for path in base.iterdir():
            if path.name.startswith("."):
                continue  # a download or extraction under way, renamed into place later
            found.append(Entry(path, area, _size(path), _last_used(path)))
    return sorted(found, key=lambda e: e.last_used)


def _in_use(entry: Entry) -> bool:
    """A source tree whose lock another build holds (tried without waiting)."""
    lock = entry.path / TREE_LOCK
    if entry.area != "src" or not lock.exists():
        return False
    with open(lock, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def prune(root: Path, max_size: int, dry_run: bool = False) -> tuple[list[Entry], int]:
    """Remove least recently used entries until the cache is at most max_size bytes.
    Returns the entries removed (or that would be) and the size left."""
    listed = entries(root)
    total = sum(e.size for e in listed)
    removed = []
    for entry in listed:
        if total <= max_size:
            break
        if _in_use(entry):
            continue
        if not dry_run:
            # Rename first, so no build ever sees half an entry; then delete.
            doomed = entry.path.with_name(f".{entry.path.name}.pruned-{os.getpid()}")
            entry.path.rename(doomed)
            if doomed.is_dir() and not doomed.is_symlink():
                shutil.rmtree(doomed)
            else:
                doomed.unlink()
        removed.append(entry)
        total -= entry.size
    return removed, total


def render(listed: list[Entry], root: Path) -> str:
    """The `cache list` table: least recently used first, with the total."""
    lines = [f"{'size':>8}  {'last used':<16}  entry"]
    for e in listed:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(e.last_used))
        lines.append(f"{human(e.size):>8}  {when:<16}  {e.path.relative_to(root)}")
    lines.append(f"{human(sum(e.size for e in listed)):>8}  total in {root}")
    return "\n".join(lines)
