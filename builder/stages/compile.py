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
from dataclasses import dataclass
from pathlib import Path

from builder.artifacts import CompiledUnit, CompileResult, PreparedTree
from builder.errors import BuildError
from builder.progress import timed

STAGE = "compile"
RECIPE = 1  # bump when KCFLAGS or the way originals are built changes
KCFLAGS = "-ffunction-sections -fdata-sections"
# The kmod/ compat headers (e.g. <linux/livepatch_helpers.h> for kernels before 6.19),
# searched after the kernel's own include paths so they never shadow a real header.
COMPAT_INCLUDE = Path(__file__).resolve().parents[2] / "kmod" / "include"

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


# ---------------------------------------------------------------- patch parsing
@dataclass
class FilePatch:
    """One file's part of a unified diff (paths already stripped like -p1)."""

    patch: str  # the patch file it came from (for messages)
    old: str | None  # None: the file is created
    new: str | None  # None: the file is deleted
    hunks: int = 0

    @property
    def path(self) -> str:
        return self.new or self.old or ""


def _strip_path(raw: str) -> str | None:
    """`a/fs/x.c\t2024-01-01 ...` → fs/x.c; /dev/null → None (patch -p1 semantics)."""
    name = raw.split("\t", 1)[0].strip()
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1]
    if name == "/dev/null":
        return None
    parts = name.split("/", 1)
    return parts[1] if len(parts) == 2 else parts[0]


def parse_patch(text: str, origin: str = "<patch>") -> list[FilePatch]:
    """Files and hunk counts of a unified diff.

    Hunk bodies are consumed by their line counts, so a removed line that itself starts
    with "--" (e.g. a SQL comment or a "---" separator) is never mistaken for a header.
    """
    lines = text.splitlines()
    files: list[FilePatch] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            files.append(FilePatch(patch=origin, old=_strip_path(line[4:]),
                                   new=_strip_path(lines[i + 1][4:])))
            i += 2
            continue
        match = _HUNK.match(line)
        if match and files:
            files[-1].hunks += 1
            old_left = int(match[2]) if match[2] is not None else 1
            new_left = int(match[4]) if match[4] is not None else 1
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0):
                body = lines[i]
                tag = body[:1]
                if tag in (" ", ""):
                    old_left -= 1
                    new_left -= 1
                elif tag == "-":
                    old_left -= 1
                elif tag == "+":
                    new_left -= 1
                elif tag != "\\":
                    raise BuildError(stage=STAGE, file=origin,
                                     message=f"line {i + 1}: malformed hunk line {body!r}",
                                     hint="regenerate the patch with `diff -u` or `git diff`")
                i += 1
            continue
        i += 1
    if not files:
        raise BuildError(stage=STAGE, file=origin, message="no file changes found",
                         hint="pass a unified diff (`git diff`, `diff -u`) against the "
                              "kernel source, applicable with patch -p1")
    return files


def parse_patches(patches: list[Path]) -> list[FilePatch]:
    out: list[FilePatch] = []
    for patch in patches:
        try:
            text = patch.read_text()
        except OSError as err:
            raise BuildError(stage=STAGE, file=str(patch), message=f"cannot read: {err}",
                             hint="pass an existing patch file") from err
        out.extend(parse_patch(text, str(patch)))
    return out


def touched_sources(patches: list[Path]) -> list[str]:
    """Source paths the patches change, in first-seen order, deduplicated."""
    seen: dict[str, None] = {}
    for fp in parse_patches(patches):
        seen.setdefault(fp.path, None)
    return list(seen)


def check_compilable(files: list[FilePatch]) -> list[str]:
    """The .c files to compile; refuse what this builder cannot handle, clearly."""
    sources: list[str] = []
    for fp in files:
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
        if fp.old is None or fp.new is None:
            what = "creates" if fp.old is None else "deletes"
            raise BuildError(stage=STAGE, file=fp.patch, message=f"patch {what} {path}",
                             hint="a live patch can only change files the kernel was built "
                                  "from; add new functions to an existing .c file")
        if path not in sources:
            sources.append(path)
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


def apply_patch(tree: PreparedTree, patch: Path, dry_run: bool) -> None:
    cmd = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-r", "-",
           "-d", str(tree.source_dir), "-i", str(patch.resolve())]
    if dry_run:
        cmd.append("--dry-run")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(stage=STAGE, file=str(patch),
                         message="the patch does not apply to "
                                 f"{tree.source_dir.name} {tree.kernel.package_version}:\n"
                                 + (proc.stdout + proc.stderr).strip()[-2000:],
                         hint="rebase the patch onto this kernel's source (the Debian "
                              "linux-source package of the same version)")


# ---------------------------------------------------------------- the stage
def compile_units(tree: PreparedTree, patches: list[Path], work: Path,
                  compat_include: Path | None = COMPAT_INCLUDE) -> CompileResult:
    """Build originals and patched objects into work/orig and work/patched."""
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    sources = check_compilable(parse_patches(patches))
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
    with locked(tree):
        with timed(timings, "restore"):
            restore_files(tree)  # a previous run was interrupted: start from pristine
        originals = {}
        with timed(timings, "original"):
            for source in sources:
                originals[source] = original_object(tree, source)
        save_files(tree, sources)
        try:
            with timed(timings, "apply"):
                for patch in patches:  # each on top of the previous ones; nothing is
                    apply_patch(tree, patch, dry_run=True)  # written if a hunk fails
                    apply_patch(tree, patch, dry_run=False)
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
    return CompileResult(units=units, seconds=round(time.monotonic() - t0, 3), timings=timings)


__all__ = ["compile_units", "parse_patch", "parse_patches", "touched_sources",
           "check_compilable", "target_object", "config_guard", "restore_files", "FilePatch"]
