# SPDX-License-Identifier: GPL-3.0-or-later
"""Compile: build every translation unit the patch touches, original and patched.

The extracted source tree is shared by every kernel flavour of a source version, so
patching it is guarded: an exclusive lock, a dry run first, a backup of each touched
file (content and mtime) recorded under a "dirty" marker before the first change, and
a restore in `finally`. A run that was killed mid-way leaves the marker behind and
the next run restores the tree before doing anything else.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from builder.artifacts import CompiledUnit, CompileResult, PreparedTree
from builder.errors import BuildError
from builder.patchset import PatchFile, PatchSet
from builder.progress import timed

STAGE = "compile"
RECIPE = 1  # bump when KCFLAGS or the way originals are built changes
KCFLAGS = "-ffunction-sections -fdata-sections"
# The kmod/ compat headers (e.g. <linux/livepatch_helpers.h> for kernels before 6.19),
# searched after the kernel's own include paths so they never shadow a real header.
COMPAT_INCLUDE = Path(__file__).resolve().parents[2] / "kmod" / "include"

# GNU patch's report of a hunk it did not apply exactly where the patch says (LC_ALL=C).
_APPLIED_FILE = re.compile(r"^(?:checking|patching) file (.+?)(?: \(renamed from .+\))?$")
_APPLIED_HUNK = re.compile(r"^Hunk #(\d+) succeeded at \d+(?: with fuzz (\d+))?"
                           r"(?: \(offset (-?\d+) lines?\))?\.$")


# ---------------------------------------------------------------- what to compile
def check_compilable(patches: PatchSet) -> list[str]:
    """The .c files to compile; refuse what this builder cannot handle, clearly."""
    sources: list[str] = []
    for fp in patches.files:
        path = fp.path
        if path.endswith(".h"):
            raise BuildError(
                stage=STAGE, file=fp.patch,
                message=f"patch changes {path} (a header): every file including it would "
                        "have to be rebuilt and compared, which this builder does not do",
                hint="move the change into the .c files that need it (e.g. a static inline "
                     "copy), or split the header change out of the live patch")
        if not path.endswith(".c"):
            raise BuildError(stage=STAGE, file=fp.patch,
                             message=f"patch changes {path}: only C sources (.c) can be "
                                     "live-patched",
                             hint="Makefiles, Kconfig, assembly and data files cannot change "
                                  "in a running kernel; drop those hunks")
        if fp.created or fp.deleted or fp.renamed:
            what = (f"copies {fp.old} to {path}" if fp.copied else
                    f"creates {path}" if fp.created else
                    f"deletes {path}" if fp.deleted else f"renames {fp.old} to {path}")
            raise BuildError(stage=STAGE, file=fp.patch, message=f"patch {what}",
                             hint="a live patch can only change files the kernel was built "
                                  "from, in place; add new functions to an existing .c file")
        if fp.binary:
            raise BuildError(stage=STAGE, file=fp.patch,
                             message=f"patch changes {path} as a binary file",
                             hint="pass a textual unified diff of the C source")
        if fp.hunks and path not in sources:  # a mode change alone compiles nothing new
            sources.append(path)
    if not sources:
        raise BuildError(stage=STAGE, file=", ".join(p.name for p in patches.patches),
                         message="the patches change no line of any C source",
                         hint="pass a unified diff that changes the code to live-patch")
    return sources


# ---------------------------------------------------------------- tree safety
def _state_dir(tree: PreparedTree) -> Path:
    """Per-source-tree state (lock, dirty marker): the tree is shared by flavours."""
    return tree.source_dir.parent


@contextmanager
def locked(tree: PreparedTree) -> Iterator[None]:
    """Exclusive use of the shared source tree (other builds wait)."""
    lock_path = _state_dir(tree) / ".klp-lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _dirty_dir(tree: PreparedTree) -> Path:
    return _state_dir(tree) / ".klp-dirty"


def save_files(tree: PreparedTree, paths: list[str]) -> None:
    """Back up content and mtime of each file, then write the marker (manifest) last."""
    backup = _dirty_dir(tree)
    shutil.rmtree(backup, ignore_errors=True)
    backup.mkdir()
    manifest = {}
    for index, rel in enumerate(paths):
        src = tree.source_dir / rel
        entry: dict = {"exists": src.exists()}
        if src.exists():
            st = src.stat()
            shutil.copyfile(src, backup / str(index))
            entry.update(copy=str(index), atime_ns=st.st_atime_ns, mtime_ns=st.st_mtime_ns,
                         mode=st.st_mode & 0o7777)
        manifest[rel] = entry
    tmp = backup / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest))
    tmp.replace(backup / "manifest.json")


def restore_files(tree: PreparedTree) -> list[str]:
    """Undo a (possibly interrupted) patched build; returns the files restored."""
    backup = _dirty_dir(tree)
    manifest_path = backup / "manifest.json"
    if not manifest_path.is_file():
        shutil.rmtree(backup, ignore_errors=True)
        return []
    manifest = json.loads(manifest_path.read_text())
    for rel, entry in manifest.items():
        dst = tree.source_dir / rel
        for leftover in (dst.with_name(dst.name + ".orig"), dst.with_name(dst.name + ".rej")):
            leftover.unlink(missing_ok=True)
        if not entry["exists"]:
            dst.unlink(missing_ok=True)
            continue
        tmp = dst.with_name(f".{dst.name}.klp-restore")
        shutil.copyfile(backup / entry["copy"], tmp)
        os.chmod(tmp, entry["mode"])
        tmp.replace(dst)
        # kbuild and make judge by mtime: the pristine file keeps its original one.
        os.utime(dst, ns=(entry["atime_ns"], entry["mtime_ns"]))
    manifest_path.unlink()
    shutil.rmtree(backup, ignore_errors=True)
    return list(manifest)


# ---------------------------------------------------------------- kbuild
def object_of(source: str) -> str:
    return source[:-2] + ".o"


def _config_value(tree: PreparedTree, symbol: str) -> str:
    for line in (tree.build_dir / ".config").read_text().splitlines():
        if line.startswith(symbol + "="):
            return line.split("=", 1)[1]
    return "n"


def config_guard(tree: PreparedTree, source: str) -> str | None:
    """The CONFIG_ option that excludes this object, if a kbuild line sets it to n.

    kbuild happily compiles any single .o on request, even one the configuration does
    not link anywhere, so "it compiled" proves nothing. Look at the line naming the
    object in its directory's Makefile, then at the line naming each directory in its
    parent's (fs/ext2/super.o needs `obj-$(CONFIG_EXT2_FS) += ext2/` in fs/Makefile).
    """
    parts = Path(source).parts
    entries = [(Path(*parts[:-1]), Path(source).with_suffix(".o").name)]
    for depth in range(len(parts) - 2, 0, -1):
        entries.append((Path(*parts[:depth]), parts[depth] + "/"))
    for directory, entry in entries:
        symbol = _guard_in(tree, tree.source_dir / directory, entry)
        if symbol:
            return symbol
    return None


def _guard_in(tree: PreparedTree, directory: Path, entry: str) -> str | None:
    for name in ("Kbuild", "Makefile"):
        makefile = directory / name
        if not makefile.is_file():
            continue
        text = makefile.read_text(errors="replace").replace("\\\n", " ")
        for line in text.splitlines():
            lhs, sep, rhs = line.partition("+=") if "+=" in line else line.partition(":=")
            if not sep or not re.search(rf"(^|\s){re.escape(entry)}(\s|$)", rhs):
                continue
            for symbol in re.findall(r"\$\((CONFIG_[A-Za-z0-9_]+)\)", lhs):
                if _config_value(tree, symbol) not in ("y", "m"):
                    return symbol
            return None
        return None
    return None


def build_object(tree: PreparedTree, source: str, extra_cflags: str = "") -> tuple[Path, str]:
    """Build one object with kbuild's single-object target; return (object, command)."""
    obj = object_of(source)
    built = tree.build_dir / obj
    built.unlink(missing_ok=True)  # mtimes are restored after patching: never trust them
    kcflags = f"{KCFLAGS} {extra_cflags}".strip()
    cmd = tree.make_args + [obj, f"KCFLAGS={kcflags}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0 or not built.is_file():
        # Paths relative to the source tree read like the user's own patch.
        output = (proc.stderr + proc.stdout).strip().replace(f"{tree.source_dir}/", "")
        if proc.returncode == 0:
            raise BuildError(stage=STAGE, file=source,
                             message="kbuild built nothing for it: this configuration does "
                                     f"not build {source} (its directory is not enabled)",
                             hint="check the kernel config of the target; only code that "
                                  "is built into the running kernel can be patched")
        raise BuildError(stage=STAGE, file=source,
                         message=f"compiling {obj} failed:\n{output[-2500:]}",
                         hint="fix the patch so the file compiles against this kernel")
    return built, kbuild_command(tree, obj)


def kbuild_command(tree: PreparedTree, obj: str) -> str:
    """The compiler command line kbuild recorded in .<name>.o.cmd."""
    cmd_file = tree.build_dir / Path(obj).parent / f".{Path(obj).name}.cmd"
    if not cmd_file.is_file():
        return ""
    first = cmd_file.read_text(errors="replace").splitlines()[0]
    return first.split(":=", 1)[1].strip() if ":=" in first else first


def target_object(command: str) -> str:
    """"vmlinux", or the module name (underscores) the object is linked into."""
    tokens = command.split()
    if "-DMODULE" not in tokens:
        return "vmlinux"
    match = re.search(r"-DKBUILD_MODNAME='?\"?\\?\"?([A-Za-z0-9_-]+)", command)
    if not match:
        raise BuildError(stage=STAGE, message="kbuild's command line has -DMODULE but no "
                         "KBUILD_MODNAME", hint="report this with the .cmd file")
    return match[1].replace("-", "_")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def original_object(tree: PreparedTree, source: str) -> tuple[Path, str]:
    """The pristine object, cached by the source's content (warm runs skip kbuild)."""
    key = hashlib.sha256(f"{RECIPE}:{KCFLAGS}:{_sha256(tree.source_dir / source)}"
                         .encode()).hexdigest()[:24]
    cached = tree.build_dir / ".klp-orig" / key / object_of(source)
    cmd_cached = cached.with_name(cached.name + ".cmdline")
    if cached.is_file() and cmd_cached.is_file():
        return cached, cmd_cached.read_text()
    built, command = build_object(tree, source)
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(built, cached.with_suffix(".tmp"))
    cmd_cached.write_text(command)
    cached.with_suffix(".tmp").replace(cached)
    return cached, command


def _copy_out(obj: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(obj, dest)
    return dest


def apply_patch(tree: PreparedTree, patch: PatchFile, dry_run: bool) -> PatchFile:
    """Apply one patch file (its parsed bytes) to the tree with GNU patch -p1.

    Returns the patch with each hunk moved to where patch found it: a hunk may apply
    at an offset (the kernel's file has lines the patch's base had not), and the line
    maps must follow. A hunk that needs fuzz (context lines that differ) is refused on
    the dry run, before anything is written.
    """
    cmd = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-",
           "-d", str(tree.source_dir)]
    cmd.append("--dry-run" if dry_run else "--fuzz=0")
    proc = subprocess.run(cmd, input=patch.data, capture_output=True, check=False,
                          env={**os.environ, "LC_ALL": "C"})
    output = (proc.stdout + proc.stderr).decode(errors="replace")
    if proc.returncode != 0:
        raise BuildError(stage=STAGE, file=patch.name,
                         message="the patch does not apply to "
                                 f"{tree.source_dir.name} {tree.kernel.package_version}:\n"
                                 + output.strip()[-2000:],
                         hint="rebase the patch onto this kernel's source (the Debian "
                              "linux-source package of the same version)")
    offsets: dict[int, list[int]] = {}
    index = -1
    for line in output.splitlines():
        match = _APPLIED_FILE.match(line)
        if match:
            name = match[1].strip("'\"")
            index = next((i for i in range(index + 1, len(patch.files))
                          if name in (patch.files[i].path, patch.files[i].old)), index)
            continue
        match = _APPLIED_HUNK.match(line)
        if not match:
            continue
        if index < 0:
            raise BuildError(stage=STAGE, file=patch.name,
                             message=f"cannot tell which file patch means by {line!r}",
                             hint="report this with the patch")
        fp, number = patch.files[index], int(match[1])
        if match[2]:
            raise BuildError(
                stage=STAGE, file=patch.name,
                message=f"hunk #{number} of {fp.path} (patch line {fp.hunks[number - 1].at}) "
                        f"applies to {tree.source_dir.name} {tree.kernel.package_version} "
                        f"only with fuzz {match[2]}: some of its context lines differ from "
                        "this kernel's source, so the change may not land where it should",
                hint="rebase the patch onto this kernel's source (the Debian linux-source "
                     "package of the same version); hunks found at an offset are fine")
        if match[3]:
            offsets.setdefault(index, [0] * len(fp.hunks))[number - 1] = int(match[3])
    applied = patch.with_offsets(offsets)
    if not dry_run:
        _check_landed(tree, applied)
    return applied


def _check_landed(tree: PreparedTree, patch: PatchFile) -> None:
    """Every hunk's new lines are in the patched file where the (moved) hunk says."""
    paths = [fp.path for fp in patch.files]
    for fp in patch.files:
        if fp.deleted or not fp.hunks or paths.count(fp.path) > 1:
            continue  # a later section of the same patch may have changed these lines
        lines = (tree.source_dir / fp.path).read_bytes().decode("utf-8", "surrogateescape") \
            .split("\n")
        for number, hunk in enumerate(fp.hunks, 1):
            start = hunk.new_first - 1
            found = lines[start:start + hunk.new_count]
            if [x.rstrip("\r") for x in found] != [x.rstrip("\r") for x in hunk.new_lines]:
                raise BuildError(
                    stage=STAGE, file=patch.name,
                    message=f"hunk #{number} of {fp.path}: its new lines are not at line "
                            f"{hunk.new_first} of the patched file, where patch's report "
                            "puts them, so the old→new line map would be wrong",
                    hint="report this with the patch; rebasing the patch onto this "
                         "kernel's source avoids it")


# ---------------------------------------------------------------- the stage
def compile_units(tree: PreparedTree, patches: PatchSet, work: Path,
                  compat_include: Path | None = COMPAT_INCLUDE) -> CompileResult:
    """Build originals and patched objects into work/orig and work/patched.

    The result's `patches` are the patches as they applied (hunks where patch found
    them), for the line maps of the diff stage.
    """
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    sources = check_compilable(patches)
    for source in sources:
        if not (tree.source_dir / source).is_file():
            raise BuildError(stage=STAGE, file=source,
                             message=f"{source} does not exist in {tree.source_dir.name} "
                                     f"{tree.kernel.package_version}",
                             hint="check the path in the patch header (patch -p1 is used)")
        symbol = config_guard(tree, source)
        if symbol:
            raise BuildError(stage=STAGE, file=source,
                             message=f"{source} is not built in this kernel's configuration "
                                     f"({symbol} is not set in config-{tree.kernel.release})",
                             hint="only code built into the target kernel can be patched")
    extra = f"-idirafter {compat_include}" if compat_include and compat_include.is_dir() else ""
    units: list[CompiledUnit] = []
    applied: list[PatchFile] = []
    with locked(tree):
        with timed(timings, "restore"):
            restore_files(tree)  # a previous run was interrupted: start from pristine
        originals = {}
        with timed(timings, "original"):
            for source in sources:
                originals[source] = original_object(tree, source)
        save_files(tree, list(patches.sources))  # every file patch may write, not only .c
        try:
            with timed(timings, "apply"):
                for patch in patches.patches:  # each on top of the previous ones; nothing
                    apply_patch(tree, patch, dry_run=True)  # is written if a hunk fails
                    applied.append(apply_patch(tree, patch, dry_run=False))
            with timed(timings, "patched"):
                for source in sources:
                    obj = object_of(source)
                    built, command = build_object(tree, source, extra)
                    orig_path, orig_command = originals[source]
                    units.append(CompiledUnit(
                        source=source, object_name=obj,
                        target_object=target_object(orig_command),
                        original=_copy_out(orig_path, work / "orig" / obj),
                        patched=_copy_out(built, work / "patched" / obj), command=command))
        finally:
            restore_files(tree)
            for source in sources:  # the tree's .o must not outlive the patched source
                (tree.build_dir / object_of(source)).unlink(missing_ok=True)
    return CompileResult(units=units, seconds=round(time.monotonic() - t0, 3), timings=timings,
                         patches=replace(patches, patches=tuple(applied)))


__all__ = ["compile_units", "apply_patch", "check_compilable", "target_object", "config_guard",
           "restore_files"]
