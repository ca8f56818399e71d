# SPDX-License-Identifier: GPL-3.0-or-later
"""Compile: build every translation unit the patch touches, original and patched.

The extracted source tree is shared by every kernel flavour of a source version, so
patching it is guarded: an exclusive lock, a dry run first, a backup of each touched
file (content and mtime) recorded under a "dirty" marker before the first change, and
a restore in `finally`. A run that was killed mid-way leaves the marker behind and
the next run restores the tree before doing anything else.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from builder.artifacts import CompiledUnit, CompileResult, PreparedTree
from builder.cache import sha256_file
from builder.errors import BuildError
from builder.includes import IncludeGraph
from builder.kbuild import Kbuild
from builder.layouts import changed_types, refuse_layout_changes
from builder.patchset import PatchFile, PatchSet
from builder.preprocess import RULES as PREPROCESS_RULES
from builder.preprocess import compare as compare_preprocessed
from builder.progress import Timer, timed
from builder.request import MAX_FILES

STAGE = "compile"
RECIPE = 2  # bump when KCFLAGS or the way originals are built changes
BATCH = 16  # objects per make run: both cores busy, progress between runs
# Includers of changed headers are preprocessed first (builder/preprocess.py) when at
# least PREPROCESS_FROM of them would be compiled, PREPROCESS_CHUNK at a time (each
# preprocessed file is megabytes); a build may preprocess INCLUDERS_PER_COMPILED times
# more includers than it may compile (`max_files`).
PREPROCESS_FROM = int(os.environ.get("KLP_PREPROCESS_FROM", "8"))  # bench: a huge value
PREPROCESS_CHUNK = 48
INCLUDERS_PER_COMPILED = 4
KCFLAGS = "-ffunction-sections -fdata-sections"
# The kmod/ compat headers (e.g. <linux/livepatch_helpers.h> for kernels before 6.19),
# searched after the kernel's own include paths so they never shadow a real header.
COMPAT_INCLUDE = Path(__file__).resolve().parents[2] / "kmod" / "include"

# GNU patch's report of a hunk it did not apply exactly where the patch says (LC_ALL=C).
_APPLIED_FILE = re.compile(r"^(?:checking|patching) file (.+?)(?: \(renamed from .+\))?$")
_APPLIED_HUNK = re.compile(r"^Hunk #(\d+) succeeded at \d+(?: with fuzz (\d+))?"
                           r"(?: \(offset (-?\d+) lines?\))?\.$")


# ---------------------------------------------------------------- what to compile
def check_compilable(patches: PatchSet) -> tuple[list[str], list[str]]:
    """(.c files, headers) the patches change; refuse what cannot be live-patched, clearly."""
    sources: list[str] = []
    headers: list[str] = []
    for fp in patches.files:
        path = fp.path
        if not path.endswith((".c", ".h")):
            raise BuildError(stage=STAGE, file=fp.patch,
                             message=f"patch changes {path}: only C sources and headers "
                                     "can be live-patched",
                             hint="Makefiles, Kconfig, assembly and data files cannot change "
                                  "in a running kernel; drop those hunks")
        if fp.created and path.endswith(".h") and not fp.renamed:
            continue  # a new header is fine: the files that include it are in the patch
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
        found = headers if path.endswith(".h") else sources
        if fp.hunks and path not in found:  # a mode change alone compiles nothing new
            found.append(path)
    if not sources and not headers:
        raise BuildError(stage=STAGE, file=", ".join(p.name for p in patches.patches),
                         message="the patches change no line of any C source or header",
                         hint="pass a unified diff that changes the code to live-patch")
    return sources, headers


class TooManyFiles(BuildError):
    """More built files include the changed headers than the build may compile."""

    planned: list[Planned]  # all of them


@dataclass(frozen=True)
class Planned:
    """A translation unit to build twice, and why it is in the build."""

    source: str
    because: str = ""  # "" when the patch changes it, else the changed header it includes


def plan_units(tree: PreparedTree, patches: PatchSet, progress=None,
               max_files: int = MAX_FILES) -> list[Planned]:
    """The changed .c files, and every built file that includes a changed header (at
    most INCLUDERS_PER_COMPILED × `max_files` in all: the compile stage preprocesses
    them and compiles only those whose code can change, at most `max_files`).

    Where a file is built comes from kbuild itself (builder/kbuild.py); which files
    include a header from the tree's include graph (builder/includes.py), narrowed later
    to the units whose compiler-recorded dependencies name the header.
    """
    sources, headers = check_compilable(patches)
    kbuild = Kbuild(tree.source_dir, tree.build_dir, tree.make_args)
    graph: IncludeGraph | None = None
    for source in list(sources):
        if not (tree.source_dir / source).is_file():
            raise BuildError(stage=STAGE, file=source,
                             message=f"{source} does not exist in {tree.source_dir.name} "
                                     f"{tree.kernel.package_version}",
                             hint="check the path in the patch header (patch -p1 is used)")
        placement = kbuild.placement(source)
        if placement.target is None:
            # kernel/sched/rt.c is built as part of build_policy.c, which #includes it:
            # a .c file that built files include is compiled through them, as a header.
            graph = graph or IncludeGraph.load(tree.source_dir, tree.build_dir)
            if any(kbuild.placement(c).target for c in graph.dependents([source])
                   if c != source and c.endswith(".c")):
                sources.remove(source)
                headers.append(source)
                continue
            symbol = config_guard(tree, source)
            unset = f"; {symbol} is not set in config-{tree.kernel.release}" if symbol else ""
            raise BuildError(stage=STAGE, file=source, message=placement.reason + unset,
                             hint="only code built into the target kernel can be patched")
    planned = [Planned(source) for source in sources]
    if not headers:
        return planned
    graph = graph or IncludeGraph.load(tree.source_dir, tree.build_dir)
    for header in headers:
        users = [c for c in graph.dependents([header])
                 if c not in sources and (tree.source_dir / c).is_file()]
        if progress:
            progress(f"{header}: {len(users)} files include it; asking kbuild which are built")
        planned += [Planned(c, f"includes {header}") for c in users
                    if c not in {p.source for p in planned} and kbuild.placement(c).target]
    if len(planned) > max_files * INCLUDERS_PER_COMPILED:
        raise too_many(headers, planned, f"the builder preprocesses at most "
                       f"{max_files * INCLUDERS_PER_COMPILED} ({INCLUDERS_PER_COMPILED} × "
                       f"--max-files {max_files})")
    return planned


def too_many(headers: list[str], planned: list[Planned], bound: str, includers: int = 0
             ) -> TooManyFiles:
    """The refusal of a header change more files include than a build may take."""
    includers = includers or sum(1 for p in planned if p.because)
    wide = TooManyFiles(stage=STAGE, file=", ".join(headers),
                        message=f"{includers} built files include the changed header(s); "
                                f"{bound}",
                        hint="move the change out of a header this widely used (e.g. into "
                             "the .c files that need it), or raise --max-files")
    wide.planned = planned
    return wide


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


@contextmanager
def pristine(*source_dirs: Path) -> Iterator[None]:
    """Read shared source trees as shipped: each locked (in one order, so two readers
    never deadlock) and restored from an interrupted build first."""
    with contextlib.ExitStack() as stack:
        for source_dir in sorted(set(source_dirs)):
            tree = SimpleNamespace(source_dir=source_dir)
            stack.enter_context(locked(tree))
            restore_files(tree)
        yield


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


def build_objects(tree: PreparedTree, sources: list[str], extra_cflags: str = "",
                  progress=None, label: str = "", missing_ok: bool = False
                  ) -> dict[str, tuple[Path, str]]:
    """Build objects with kbuild's single-object targets, a batch per make run (all cores).

    Returns source -> (object, kbuild's command line). A source that does not compile
    raises, or with `missing_ok` is left out.
    """
    built: dict[str, tuple[Path, str]] = {}
    kcflags = f"{KCFLAGS} {extra_cflags}".strip()
    for start in range(0, len(sources), BATCH):
        batch = sources[start:start + BATCH]
        objects = [object_of(s) for s in batch]
        for obj in objects:  # mtimes are restored after patching: never trust them
            (tree.build_dir / obj).unlink(missing_ok=True)
        proc = subprocess.run(tree.make_args + ["-k", *objects, f"KCFLAGS={kcflags}"],
                              capture_output=True, text=True, check=False)
        for source, obj in zip(batch, objects, strict=True):
            path = tree.build_dir / obj
            if path.is_file():
                built[source] = (path, kbuild_command(tree, obj))
            elif not missing_ok:
                _compile_failed(tree, source, obj, proc)
        if progress and len(sources) > 1:
            progress(f"{label}{start + len(batch)}/{len(sources)} compiled "
                     f"(last: {batch[-1]})")
    return built


def _compile_failed(tree: PreparedTree, source: str, obj: str, proc) -> None:
    # Paths relative to the source tree read like the user's own patch.
    output = (proc.stderr + proc.stdout).strip().replace(f"{tree.source_dir}/", "")
    if proc.returncode == 0:
        raise BuildError(stage=STAGE, file=source,
                         message="kbuild built nothing for it: this configuration does "
                                 f"not build {source} (its directory is not enabled)",
                         hint="check the kernel config of the target; only code that "
                              "is built into the running kernel can be patched")
    # Its own lines, and every error (one in a header it includes names the header).
    mine = [line for line in output.splitlines()
            if source in line or obj in line or "error:" in line]
    raise BuildError(stage=STAGE, file=source,
                     message=f"compiling {obj} failed:\n"
                             + ("\n".join(mine[-30:]) if mine else output[-2500:]),
                     hint="fix the patch so the file compiles against this kernel")


def dependencies(tree: PreparedTree, obj: str) -> list[str]:
    """Every file kbuild recorded an object as read from (its .cmd file: the source and
    what it included), relative to the tree."""
    cmd_file = tree.build_dir / Path(obj).parent / f".{Path(obj).name}.cmd"
    found = []
    in_deps = False
    for line in cmd_file.read_text(errors="replace").splitlines() if cmd_file.is_file() else []:
        if line.startswith(f"source_{obj} :="):
            found.append(line.split(":=", 1)[1].strip())
        elif line.startswith(f"deps_{obj} :="):
            in_deps = True
        elif in_deps:
            item = line.strip().rstrip("\\").strip()
            if item and not item.startswith("$("):
                found.append(item)
            in_deps = line.endswith("\\")
    return [_normal(tree, item) for item in found]


def _normal(tree: PreparedTree, path: str) -> str:
    """A recorded path as patches and the include graph name it: relative to the tree,
    `..` resolved (gcc keeps `mt7915/../mt76.h`), whether kbuild saw the tree through a
    symlink or not."""
    for root in _roots(tree.source_dir):
        if path.startswith(f"{root}/"):
            path = path[len(root) + 1:]
            break
    return os.path.normpath(path)


@functools.lru_cache(maxsize=8)
def _roots(source_dir: Path) -> tuple[str, ...]:
    """The tree's path as given and as kbuild resolves it (realpath)."""
    return tuple(dict.fromkeys((str(source_dir), os.path.realpath(source_dir))))


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


@dataclass(frozen=True)
class CachedObject:
    """An object kept in the per-kernel cache, and what kbuild recorded for it."""

    path: Path
    command: str
    headers: tuple[str, ...]  # the headers the compiler read, as kbuild recorded them
    reads: tuple[str, ...] | None = None  # every file it read (None: kept before recorded)

    def read_any(self, paths: set[str]) -> bool:
        """Whether the compiler read one of `paths` (a .c file it may have #included
        counts as read when only headers were recorded)."""
        if self.reads is None:
            return bool(paths & set(self.headers)) or any(not p.endswith(".h") for p in paths)
        return bool(paths & set(self.reads))


def original_objects(tree: PreparedTree, sources: list[str], progress=None
                     ) -> dict[str, CachedObject]:
    """Pristine objects, cached by the source's content (warm runs skip kbuild).

    The tree is pristine here (the caller holds the lock and has restored it), so a
    source's content and the kernel's headers decide the object.
    """
    cache = {s: _original_path(tree, _original_key(tree, s), s) for s in sources}
    missing = [s for s in sources if not _is_cached(cache[s])]
    fresh = build_objects(tree, missing, progress=progress, label="originals: ")
    for source in missing:
        store_object(tree, source, fresh[source], cache[source])
    return {source: _load(tree, cache[source]) for source in sources}


def patched_objects(tree: PreparedTree, patches: PatchSet, sources: list[str],
                    compat_include: Path | None, progress=None) -> dict[str, CachedObject]:
    """Objects of the tree with `patches` applied (the caller applied them).

    Cached the way ccache's direct mode caches: an object is reused when every file it
    read has the content it has now. Files no patch touches are as shipped, so only the
    touched ones are compared: those the object read, and any the patches create (a new
    header may be found before one it read). So an object built for one fix unit serves
    every build that changes the same among its files, and a changed builder (whose code
    is not in this key) compiles nothing it compiled before.
    """
    changed = changed_content(tree, patches)
    found = {s: find_patched(tree, s, compat_include, changed) for s in sources}
    missing = [s for s in sources if found[s] is None]
    fresh = build_objects(tree, missing, compat_flags(compat_include), progress,
                          label="patched: ")
    for source in missing:
        found[source] = store_patched(tree, source, fresh[source], compat_include, changed)
    return found


def changed_content(tree: PreparedTree, patches: PatchSet) -> dict[str, str]:
    """Each file the applied patches touch: a digest of what they made of it. A file they
    created (from /dev/null, or on a path the tree did not have) counts for every object:
    an include may now find it before the file it found before."""
    saved = _dirty_dir(tree) / "manifest.json"
    absent = {rel for rel, entry in json.loads(saved.read_text()).items()
              if not entry["exists"]} if saved.is_file() else set()
    created = {fp.path for fp in patches.files if fp.created} | absent
    digests = {}
    for path in patches.sources:
        file = tree.source_dir / path
        digest = sha256_file(file) if file.is_file() else "absent"
        digests[path] = f"new:{digest}" if path in created else digest
    return digests


def store_patched(tree: PreparedTree, source: str, built: tuple[Path, str],
                  compat_include: Path | None, changed: dict[str, str]) -> CachedObject:
    """Keep a patched object under what it read of the touched files."""
    reads = dependencies(tree, object_of(source))
    relevant = _relevant(changed, set(reads))
    entry = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:24]
    target = _patched_base(tree, source, compat_include) / entry / object_of(source)
    return store_object(tree, source, built, target, changed, reads)


def find_patched(tree: PreparedTree, source: str, compat_include: Path | None,
                 changed: dict[str, str]) -> CachedObject | None:
    """A patched object of `source` kept before that read what it reads now."""
    base = _patched_base(tree, source, compat_include)
    for meta_path in sorted(base.glob(f"*/{object_of(source)[:-2]}.json")):
        meta = json.loads(meta_path.read_text())
        reads = meta["reads"]
        # An entry kept before reads were normalized may have missed a changed file it
        # read (its "changed" is then wrong), and one without its own source is no record.
        if source not in reads or [_normal(tree, r) for r in reads] != reads:
            continue
        if _relevant(changed, set(reads)) == meta.get("changed") and \
                meta_path.with_suffix(".o").is_file():
            return _load(tree, meta_path.with_suffix(".o"))
    return None


def _relevant(changed: dict[str, str], reads: set[str]) -> dict[str, str]:
    return {path: digest for path, digest in changed.items()
            if path in reads or digest.startswith("new:")}


def compat_flags(compat_include: Path | None) -> str:
    return f"-idirafter {compat_include}" if compat_include and compat_include.is_dir() else ""


def _patched_base(tree: PreparedTree, source: str, compat_include: Path | None) -> Path:
    """The compile flags decide the object too: the compat headers by their content,
    not by where this checkout keeps them."""
    compat = _digest_of(compat_include) if compat_flags(compat_include) else "-"
    key = hashlib.sha256(f"{RECIPE}:{KCFLAGS}:{compat}:{source}".encode()).hexdigest()[:24]
    return tree.build_dir / ".klp-patched" / key


def store_object(tree: PreparedTree, source: str, built: tuple[Path, str], target: Path,
                 changed: dict[str, str] | None = None, reads: list[str] | None = None
                 ) -> CachedObject:
    """Keep a fresh object and what kbuild recorded for it (command, files read), and
    for a patched one what it read of the changed files."""
    path, command = built
    reads = reads if reads is not None else dependencies(tree, object_of(source))
    meta: dict = {"command": command, "headers": [r for r in reads if r.endswith(".h")],
                  "reads": reads}
    if changed is not None:
        meta["changed"] = _relevant(changed, set(reads))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target.with_suffix(".tmp"))
    target.with_suffix(".json").write_text(json.dumps(meta))
    target.with_suffix(".tmp").replace(target)
    return _load(tree, target)


def _original_path(tree: PreparedTree, key: str, source: str) -> Path:
    return tree.build_dir / ".klp-orig" / key / object_of(source)


def _is_cached(path: Path) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file()


def _load(tree: PreparedTree, path: Path) -> CachedObject:
    meta = json.loads(path.with_suffix(".json").read_text())
    reads = meta.get("reads")
    return CachedObject(path, meta["command"], tuple(_normal(tree, h) for h in meta["headers"]),
                        tuple(_normal(tree, r) for r in reads) if reads is not None else None)


def _original_key(tree: PreparedTree, source: str) -> str:
    return hashlib.sha256(f"{RECIPE}:{KCFLAGS}:{sha256_file(tree.source_dir / source)}"
                          .encode()).hexdigest()[:24]


@functools.lru_cache(maxsize=4)  # asked once per object looked up; fixed while we run
def _digest_of(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.h")):
        digest.update(f"{path.relative_to(folder)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


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
                  compat_include: Path | None = COMPAT_INCLUDE, progress=None,
                  max_files: int = MAX_FILES) -> CompileResult:
    """Build originals and patched objects into work/orig and work/patched.

    The result's `patches` are the patches as they applied (hunks where patch found
    them), for the line maps of the diff stage. Up to `max_files` files are compiled;
    includers of changed headers are preprocessed first (INCLUDERS_PER_COMPILED times as
    many may be), and those whose code cannot change are left out. When more files than
    that remain, the patch's own .c files are compiled all the same: a layout change
    they show is the reason to give (more files would not help).
    """
    timer = Timer()
    timings: dict[str, float] = {}
    try:
        with timed(timings, "plan"):
            planned = plan_units(tree, patches, progress, max_files)
        result = _compile(tree, patches, planned, work, compat_include, progress, timings,
                          max_files)
    except TooManyFiles as wide:
        # More files would not help if the change alters a type's layout: say that.
        probes = layout_probes(tree, patches, wide.planned)
        result = _compile(tree, patches, probes, work, compat_include, progress, timings)
        for unit in result.units:
            refuse_layout_changes(unit)
        raise
    return replace(result, seconds=round(timer.seconds, 3))


def layout_probes(tree: PreparedTree, patches: PatchSet, planned: list[Planned],
                  per_type: int = 2) -> list[Planned]:
    """The patch's own .c files, and for each struct or union whose body a changed
    header edits, the first `per_type` planned files that name it: what shows a layout
    change without compiling every includer."""
    own = [p for p in planned if not p.because]
    with pristine(tree.source_dir):
        types = [name for path, touched in patches.touched.items() if path.endswith(".h")
                 and (tree.source_dir / path).is_file()
                 for name in changed_types((tree.source_dir / path).read_text(
                     errors="replace"), touched.hunks)]
    probes = []
    for name in dict.fromkeys(types):
        word = re.compile(rf"\b{re.escape(name)}\b")
        probes += [p for p in planned if p.because and p not in probes and word.search(
            (tree.source_dir / p.source).read_text(errors="replace"))][:per_type]
    return own + probes


def _compile(tree: PreparedTree, patches: PatchSet, planned: list[Planned], work: Path,
             compat_include: Path | None, progress, timings: dict[str, float],
             max_files: int | None = None) -> CompileResult:
    """Compile `planned`, original and patched; with `max_files`, first leave out the
    includers whose code cannot change, and refuse when more than that remain."""
    units: list[CompiledUnit] = []
    applied: list[PatchFile] = []
    with locked(tree):
        with timed(timings, "restore"):
            restore_files(tree)  # a previous run was interrupted: start from pristine
        same: set[str] = set()
        if max_files is not None:
            with timed(timings, "preprocess"):
                same = _unaffected(tree, patches, planned, compat_include, work, progress)
            includers = sum(1 for p in planned if p.because)
            planned = [p for p in planned if p.source not in same]
            if len(planned) > max_files:
                raise too_many(sorted({p.because.removeprefix("includes ") for p in planned
                                       if p.because}), planned,
                               f"{len(same)} of them compile to the same code (gcc -E); "
                               f"the other {len(planned)} files are more than the "
                               f"{max_files} the builder compiles (--max-files)", includers)
        with timed(timings, "original"):
            originals = original_objects(tree, [p.source for p in planned], progress)
        # A file the include graph named but whose compiler never read the header is out.
        changed = set(patches.sources)
        planned = [p for p in planned if not p.because
                   or originals[p.source].read_any(changed)]
        try:
            with timed(timings, "apply"):
                applied = _apply_all(tree, patches)
            with timed(timings, "patched"):
                patched = patched_objects(tree, patches, [p.source for p in planned],
                                          compat_include, progress)
        finally:
            restore_files(tree)
            for plan in planned:  # the tree's .o must not outlive the patched source
                (tree.build_dir / object_of(plan.source)).unlink(missing_ok=True)
    for plan in planned:
        obj = object_of(plan.source)
        units.append(CompiledUnit(
            source=plan.source, object_name=obj,
            target_object=target_object(originals[plan.source].command),
            original=_copy_out(originals[plan.source].path, work / "orig" / obj),
            patched=_copy_out(patched[plan.source].path, work / "patched" / obj),
            command=patched[plan.source].command, because=plan.because))
    return CompileResult(units=units, seconds=0.0, timings=timings,
                         patches=replace(patches, patches=tuple(applied)),
                         same_after_preprocessing=len(same))


def _apply_all(tree: PreparedTree, patches: PatchSet) -> list[PatchFile]:
    """Apply every patch, each on top of the previous ones (the caller restores)."""
    save_files(tree, list(patches.sources))  # every file patch may write, not only .c
    applied = []
    for patch in patches.patches:  # nothing is written if a hunk fails
        apply_patch(tree, patch, dry_run=True)
        applied.append(apply_patch(tree, patch, dry_run=False))
    return applied


def _unaffected(tree: PreparedTree, patches: PatchSet, planned: list[Planned],
                compat_include: Path | None, work: Path, progress) -> set[str]:
    """The includers of changed headers in `planned` that compile to the same code
    (builder/preprocess.py). Only includers the object caches cannot serve are looked at:
    a cached object is faster than the preprocessor. The tree is pristine on return."""
    includers = [p.source for p in planned if p.because]
    if len(includers) < PREPROCESS_FROM:
        return set()
    keys = {s: _original_key(tree, s) for s in includers}  # pristine: as shipped
    try:
        _apply_all(tree, patches)
        changed = changed_content(tree, patches)
        todo = [s for s in includers
                if not _is_cached(_original_path(tree, keys[s], s))
                or find_patched(tree, s, compat_include, changed) is None]
    finally:
        restore_files(tree)
    markers = {s: _same_marker(tree, keys[s], compat_include, changed) for s in todo}
    known = {s for s in todo if markers[s].is_file()}
    todo = [s for s in todo if s not in known]
    if len(todo) < PREPROCESS_FROM:
        return known
    if progress:
        progress(f"preprocessing {len(todo)} files that include the changed header(s), "
                 "both versions, to compile only those whose code can change")
    same = _judge(tree, patches, todo, compat_include, work / "preprocessed", progress)
    for source in same:
        markers[source].parent.mkdir(parents=True, exist_ok=True)
        markers[source].touch()
    same |= known
    if progress:
        progress(f"{len(same)} of {len(includers)} files that include the changed header(s) "
                 f"compile to the same code; compiling {len(planned) - len(same)}")
    return same


def _judge(tree: PreparedTree, patches: PatchSet, sources: list[str],
           compat_include: Path | None, folder: Path, progress) -> set[str]:
    """The sources that preprocess to the same code, pristine and patched. The
    comparisons run in worker processes while make preprocesses the next chunk; a
    chunk's files are deleted once compared (at most two chunks on disk)."""
    same: set[str] = set()
    pending: list[tuple[Path, dict[str, Future]]] = []

    def settle(chunk_folder: Path, verdicts: dict[str, Future]) -> None:
        same.update(source for source, verdict in verdicts.items() if verdict.result())
        shutil.rmtree(chunk_folder, ignore_errors=True)

    workers = max(1, os.cpu_count() or 1)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")
                             ) as pool:
        for start in range(0, len(sources), PREPROCESS_CHUNK):
            chunk = sources[start:start + PREPROCESS_CHUNK]
            chunk_folder = folder / str(start)
            try:
                _apply_all(tree, patches)
                after = preprocess(tree, chunk, chunk_folder / "patched",
                                   compat_flags(compat_include))
            finally:
                restore_files(tree)
            before = preprocess(tree, list(after), chunk_folder / "orig")
            pending.append((chunk_folder, {source: pool.submit(same_code, path, after[source])
                                           for source, path in before.items()}))
            while len(pending) > 1:
                settle(*pending.pop(0))
            if progress:  # the verdicts come in behind: counted at the end
                progress(f"preprocessed {start + len(chunk)}/{len(sources)}")
        while pending:
            settle(*pending.pop(0))
    shutil.rmtree(folder, ignore_errors=True)
    return same


def _same_marker(tree: PreparedTree, original_key: str, compat_include: Path | None,
                 changed: dict[str, str]) -> Path:
    """Where a verdict "this includer compiles to the same code under these changes" is
    kept, so a rerun of the same patch does not preprocess it again."""
    compat = _digest_of(compat_include) if compat_flags(compat_include) else "-"
    key = json.dumps([RECIPE, PREPROCESS_RULES, KCFLAGS, compat, original_key, changed],
                     sort_keys=True)
    return tree.build_dir / ".klp-same" / hashlib.sha256(key.encode()).hexdigest()[:32]


def same_code(original: Path, patched: Path) -> bool:
    """Whether two preprocessed files compile to the same code (in a worker process)."""
    # latin-1 maps every byte to itself: two different invalid UTF-8 bytes must differ
    return compare_preprocessed(original.read_text(encoding="latin-1"),
                                patched.read_text(encoding="latin-1")).same


def preprocess(tree: PreparedTree, sources: list[str], folder: Path, extra_cflags: str = ""
               ) -> dict[str, Path]:
    """gcc -E of each source as kbuild compiles it (its %.i targets), moved into
    `folder`. A source that does not preprocess is left out (its compile will say why)."""
    found: dict[str, Path] = {}
    kcflags = f"{KCFLAGS} {extra_cflags}".strip()
    for start in range(0, len(sources), BATCH * 2):
        batch = sources[start:start + BATCH * 2]
        targets = [source[:-2] + ".i" for source in batch]
        for target in targets:
            (tree.build_dir / target).unlink(missing_ok=True)
        subprocess.run(tree.make_args + ["-k", *targets, f"KCFLAGS={kcflags}"],
                       capture_output=True, text=True, check=False)
        for source, target in zip(batch, targets, strict=True):
            if (tree.build_dir / target).is_file():
                dest = folder / target
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(tree.build_dir / target, dest)
                found[source] = dest
    return found


__all__ = ["compile_units", "apply_patch", "check_compilable", "plan_units", "target_object",
           "config_guard", "restore_files", "pristine", "build_objects", "original_objects",
           "patched_objects", "store_patched", "find_patched", "changed_content", "compat_flags",
           "preprocess",
           "dependencies", "object_of", "save_files"]
