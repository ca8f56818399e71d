# SPDX-License-Identifier: GPL-3.0-or-later
"""The patches of a build, parsed once into one immutable value every stage uses.

A `PatchSet` holds the patch files in the order they are applied, each with its bytes,
its sha256 and the files it changes (`FilePatch`: paths as `patch -p1` strips them,
created/deleted/renamed/copied, hunks). For every touched path it gives the old→new
line map of the whole set: several patches (or several sections of one patch) that
change the same file compose in order, the second one's old lines being the first
one's new lines.

The parser reads unified diffs as `diff -u` and `git diff`/`git format-patch` write
them. Hunk bodies are consumed by the line counts of their `@@` headers, so a removed
line that itself starts with `--` (`--count;` removed is `---count;`) or an added one
that starts with `++` is never taken for a file header.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType

from builder.errors import BuildError

STAGE = "patch"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@(.*)$")
_REGENERATE = "regenerate the patch with `git diff` or `diff -u` against the kernel source"
# git's extended header lines between `diff --git` and `---`/`+++` (or the next file)
_GIT_FIELDS = ("old mode ", "new mode ", "deleted file mode ", "new file mode ",
               "similarity index ", "dissimilarity index ", "rename from ", "rename to ",
               "copy from ", "copy to ", "index ")


# ---------------------------------------------------------------- line maps
@dataclass(frozen=True)
class _Layer:
    """One file section's old→new map: exact for kept lines, shifted elsewhere."""

    exact: Mapping[int, int]
    starts: tuple[int, ...]  # old line from which `deltas[i]` applies, ascending
    deltas: tuple[int, ...]

    def __call__(self, line: int) -> int:
        if line in self.exact:
            return self.exact[line]
        index = bisect_right(self.starts, line) - 1
        return line + (self.deltas[index] if index >= 0 else 0)


@dataclass(frozen=True)
class LineMap:
    """Old line number → new line number of one source file through the patches.

    Lines a hunk keeps (context lines) map exactly; any other line is shifted by the
    line count difference of what comes before it (a removed line by the delta before
    it). Layers apply in order, so maps of successive patches compose.
    """

    layers: tuple[_Layer, ...] = ()

    def __getitem__(self, line: int) -> int:
        for layer in self.layers:
            line = layer(line)
        return line

    __call__ = __getitem__

    def then(self, other: LineMap) -> LineMap:
        """This map followed by `other` (whose old lines are this map's new lines)."""
        return LineMap(self.layers + other.layers)

    @classmethod
    def of_hunks(cls, hunks: Sequence[Hunk]) -> LineMap:
        if not hunks:
            return cls()
        exact: dict[int, int] = {}
        steps: list[tuple[int, int]] = []
        for hunk in hunks:
            steps.append((hunk.old_first, hunk.new_first - hunk.old_first))
            old, new = hunk.old_start, hunk.new_start
            for tag, _text in hunk.body:
                if tag == " ":
                    exact[old] = new
                    old += 1
                    new += 1
                    steps.append((old, new - old))
                elif tag == "-":
                    old += 1
                elif tag == "+":
                    new += 1
            steps.append((hunk.old_end, hunk.new_end - hunk.old_end))
        return cls((_Layer(MappingProxyType(exact), tuple(s for s, _d in steps),
                           tuple(d for _s, d in steps)),))


# ---------------------------------------------------------------- the model
@dataclass(frozen=True)
class Hunk:
    """One `@@ -a,b +c,d @@` hunk; `body` holds (tag, text) with tag ' ', '-', '+' or '\\'.

    A '\\' entry ("\\ No newline at end of file") belongs to the line before it.
    """

    old_start: int
    old_count: int
    new_start: int
    new_count: int
    body: tuple[tuple[str, str], ...]
    at: int = 0  # line of the @@ header in the patch file
    heading: str = ""  # what follows the closing @@ (usually the function)

    @property
    def old_lines(self) -> tuple[str, ...]:
        return tuple(text for tag, text in self.body if tag in " -")

    @property
    def new_lines(self) -> tuple[str, ...]:
        return tuple(text for tag, text in self.body if tag in " +")

    @property
    def missing_newline(self) -> tuple[bool, bool]:
        """(old side, new side) end without a newline at end of file."""
        old = new = False
        for (tag, _text), (next_tag, _next) in zip(self.body, self.body[1:], strict=False):
            if next_tag == "\\":
                old = old or tag in " -"
                new = new or tag in " +"
        return old, new

    # An empty range (count 0) sits after line `start`: the first line after it is start+1.
    @property
    def old_first(self) -> int:
        return self.old_start if self.old_count else self.old_start + 1

    @property
    def new_first(self) -> int:
        return self.new_start if self.new_count else self.new_start + 1

    @property
    def old_end(self) -> int:
        """First old line after the hunk."""
        return self.old_first + self.old_count

    @property
    def new_end(self) -> int:
        return self.new_first + self.new_count

    def shifted(self, offset: int) -> Hunk:
        return replace(self, old_start=self.old_start + offset,
                       new_start=self.new_start + offset)


@dataclass(frozen=True)
class FilePatch:
    """One file's section of a patch file (paths already stripped like patch -p1)."""

    patch: str  # the patch file it came from (as given, for messages)
    old: str | None  # None: the file is created
    new: str | None  # None: the file is deleted
    hunks: tuple[Hunk, ...] = ()
    at: int = 0  # line of its first header line in the patch file
    copied: bool = False  # git "copy from/to": `new` starts as a copy of `old`
    binary: bool = False  # "Binary files … differ" or a GIT binary patch
    old_mode: str | None = None
    new_mode: str | None = None

    @property
    def path(self) -> str:
        return self.new or self.old or ""

    @property
    def created(self) -> bool:
        return self.old is None or self.copied

    @property
    def deleted(self) -> bool:
        return self.new is None

    @property
    def renamed(self) -> bool:
        return not self.copied and self.old is not None and self.new is not None and \
            self.old != self.new

    @property
    def line_map(self) -> LineMap:
        """Old→new lines of this section alone."""
        return LineMap.of_hunks(self.hunks)

    def shifted(self, offsets: Sequence[int]) -> FilePatch:
        """The same change with hunk i found `offsets[i]` lines from where it says."""
        if len(offsets) != len(self.hunks):
            raise ValueError(f"{len(offsets)} offsets for {len(self.hunks)} hunks")
        return replace(self, hunks=tuple(h.shifted(o) for h, o in
                                         zip(self.hunks, offsets, strict=True)))


@dataclass(frozen=True)
class PatchFile:
    """One patch file: its exact bytes, their sha256 and the file sections parsed."""

    name: str  # as given (e.g. on the command line), for messages
    sha256: str
    files: tuple[FilePatch, ...]
    data: bytes = field(default=b"", repr=False)  # what was hashed, parsed and is applied

    @property
    def basename(self) -> str:
        return Path(self.name).name

    @classmethod
    def parse(cls, data: bytes | str, name: str = "<patch>") -> PatchFile:
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        text = raw.decode("utf-8", "surrogateescape")
        return cls(name=name, sha256=hashlib.sha256(raw).hexdigest(),
                   files=_Parser(text, name).parse(), data=raw)

    @classmethod
    def read(cls, path: Path) -> PatchFile:
        try:
            data = path.read_bytes()
        except OSError as err:
            raise BuildError(stage=STAGE, file=str(path), message=f"cannot read: {err}",
                             hint="pass an existing patch file") from err
        return cls.parse(data, str(path))

    def with_offsets(self, offsets: Mapping[int, Sequence[int]]) -> PatchFile:
        """Hunks moved to where they applied: {index in `files`: offset of each hunk}."""
        files = tuple(fp.shifted(offsets[i]) if i in offsets else fp
                      for i, fp in enumerate(self.files))
        return replace(self, files=files)


@dataclass(frozen=True)
class TouchedFile:
    """Everything the patch set does to one path, in the order it is applied."""

    path: str
    changes: tuple[FilePatch, ...]

    @property
    def patches(self) -> tuple[str, ...]:
        """The patch files that change it."""
        return tuple(dict.fromkeys(fp.patch for fp in self.changes))

    @property
    def hunks(self) -> tuple[Hunk, ...]:
        return tuple(h for fp in self.changes for h in fp.hunks)

    @property
    def line_map(self) -> LineMap:
        """Lines of the original file → lines after every patch, composed in order."""
        result = LineMap()
        for fp in self.changes:
            result = result.then(fp.line_map)
        return result


@dataclass(frozen=True)
class PatchSet:
    """The patch files of one build, in the order they are applied."""

    patches: tuple[PatchFile, ...]

    @classmethod
    def read(cls, paths: Iterable[Path]) -> PatchSet:
        return cls(tuple(PatchFile.read(Path(p)) for p in paths))

    @property
    def sha256(self) -> str:
        """sha256 over the patch files' sha256 digests (the build key's patch_sha256)."""
        digest = hashlib.sha256()
        for patch in self.patches:
            digest.update(bytes.fromhex(patch.sha256))
        return digest.hexdigest()

    @property
    def files(self) -> tuple[FilePatch, ...]:
        """Every file section of every patch, in application order."""
        return tuple(fp for patch in self.patches for fp in patch.files)

    @property
    def sources(self) -> tuple[str, ...]:
        """Paths the patches change, in first-seen order, deduplicated."""
        return tuple(dict.fromkeys(fp.path for fp in self.files))

    @property
    def touched(self) -> Mapping[str, TouchedFile]:
        """Per resulting path, its changes in order (a rename carries the history along)."""
        chains: dict[str, list[FilePatch]] = {}
        for fp in self.files:
            if fp.old is None:
                chains[fp.path] = [fp]
            elif fp.copied:
                chains[fp.path] = [*chains.get(fp.old, []), fp]
            elif fp.renamed:
                chains[fp.path] = [*chains.pop(fp.old, []), fp]
            else:
                chains.setdefault(fp.path, []).append(fp)
        return MappingProxyType({path: TouchedFile(path, tuple(changes))
                                 for path, changes in chains.items()})

    def line_map(self, path: str) -> LineMap:
        """Old→new lines of `path` through every patch; the identity if none touches it."""
        touched = self.touched.get(path)
        return touched.line_map if touched else LineMap()


# ---------------------------------------------------------------- the parser
def _unquote(name: str) -> str:
    """A C-style quoted name as git writes it ("a/t\\303\\251st.c") → the name."""
    if not (len(name) >= 2 and name.startswith('"') and name.endswith('"')):
        return name
    out = bytearray()
    escapes = {"n": b"\n", "t": b"\t", '"': b'"', "\\": b"\\", "a": b"\a", "b": b"\b",
               "f": b"\f", "r": b"\r", "v": b"\v"}
    for match in re.finditer(r'\\([0-7]{3}|.)|([^\\]+)', name[1:-1], re.S):
        if match[2] is not None:
            out += match[2].encode("utf-8", "surrogateescape")
        elif match[1][0] in "01234567":
            out.append(int(match[1], 8) & 0xFF)
        else:
            out += escapes.get(match[1], match[1].encode())
    return out.decode("utf-8", "surrogateescape")


def strip_path(raw: str) -> str | None:
    """`a/fs/x.c\\t2024-01-01 …` → fs/x.c; /dev/null → None (patch -p1 semantics)."""
    name = _unquote(raw.split("\t", 1)[0].strip())
    if name == "/dev/null":
        return None
    parts = name.split("/", 1)
    return parts[1] if len(parts) == 2 else parts[0]


def _git_names(rest: str) -> tuple[str, str]:
    """Both names of `diff --git a/x b/y` (-p1 stripped); the split that makes them equal
    wins when the names hold spaces."""
    if rest.startswith('"'):
        match = re.match(r'("(?:[^"\\]|\\.)*")\s+(.*)$', rest)
        if match:
            return strip_path(match[1]) or "", strip_path(match[2]) or ""
    candidates = [i for i, ch in enumerate(rest) if ch == " "]
    for i in candidates:
        old, new = strip_path(rest[:i]) or "", strip_path(rest[i + 1:]) or ""
        if old == new:
            return old, new
    i = rest.find(" b/") if " b/" in rest else (candidates[0] if candidates else len(rest))
    return strip_path(rest[:i]) or "", strip_path(rest[i + 1:]) or ""


class _Parser:
    def __init__(self, text: str, name: str) -> None:
        # Only "\n" ends a line: kernel sources hold form feeds, which str.splitlines() splits.
        self.lines = text.split("\n")
        if self.lines and self.lines[-1] == "":
            self.lines.pop()
        self.name = name
        self.i = 0
        self.files: list[FilePatch] = []
        self.git: dict | None = None  # the pending `diff --git` header

    def error(self, line: int, message: str, hint: str = _REGENERATE) -> BuildError:
        return BuildError(stage=STAGE, file=self.name, message=f"line {line}: {message}",
                          hint=hint)

    def parse(self) -> tuple[FilePatch, ...]:
        lines = self.lines
        while self.i < len(lines):
            line = lines[self.i]
            if line.startswith("diff --git "):
                self._flush_git()
                old, new = _git_names(line[len("diff --git "):])
                self.git = {"at": self.i + 1, "old": old, "new": new}
                self.i += 1
            elif self.git is not None and line.startswith(_GIT_FIELDS):
                key, value = next((f.strip(), line[len(f):]) for f in _GIT_FIELDS
                                  if line.startswith(f))
                self.git[key] = _unquote(value.strip())
                self.i += 1
            elif line.startswith("GIT binary patch") or (
                    line.startswith("Binary files ") and line.endswith(" differ")):
                self._binary(line)
            elif line.startswith("--- ") and self.i + 1 < len(lines) and \
                    lines[self.i + 1].startswith("+++ "):
                self._file(strip_path(line[4:]), strip_path(lines[self.i + 1][4:]))
            elif line.startswith("@@ ") and self.files:
                raise self.error(self.i + 1, "hunk outside a file's section (a hunk before "
                                 "it has wrong line counts, or a file header is missing)")
            else:
                self._flush_git()  # anything else ends git's extended header
                self.i += 1
        self._flush_git()
        if not self.files:
            raise BuildError(stage=STAGE, file=self.name,
                             message="not a unified diff: no file changes found",
                             hint="pass a unified diff (`git diff`, `diff -u`) against the "
                                  "kernel source, applicable with patch -p1")
        return tuple(self.files)

    def _git_info(self) -> dict:
        git = self.git or {}
        self.git = None
        info: dict = {"old_mode": git.get("old mode") or git.get("deleted file mode"),
                      "new_mode": git.get("new mode") or git.get("new file mode")}
        if "copy from" in git:
            info["copied"] = True
        return info

    def _flush_git(self) -> None:
        """A `diff --git` section without ---/+++ (pure rename, mode change, empty file)."""
        git = self.git
        if git is None:
            return
        old = git.get("rename from") or git.get("copy from") or git["old"]
        new = git.get("rename to") or git.get("copy to") or git["new"]
        at = git["at"]
        info = self._git_info()
        self.files.append(FilePatch(
            patch=self.name, old=None if "new file mode" in git else old,
            new=None if "deleted file mode" in git else new, at=at, **info))

    def _binary(self, line: str) -> None:
        git = self.git
        if git is not None:
            old = git.get("rename from") or git.get("copy from") or git["old"]
            new = git.get("rename to") or git.get("copy to") or git["new"]
            created, deleted = "new file mode" in git, "deleted file mode" in git
            at = git["at"]
        else:  # "Binary files a/x and b/x differ" from diff -r
            match = re.match(r"Binary files (.*) and (.*) differ$", line)
            old, new = (strip_path(match[1]), strip_path(match[2])) if match else ("", "")
            created, deleted, at = old is None, new is None, self.i + 1
        info = self._git_info()
        self.files.append(FilePatch(patch=self.name, old=None if created else old,
                                    new=None if deleted else new, at=at, binary=True, **info))
        self.i += 1
        if line.startswith("GIT binary patch"):  # base85 data up to the next file
            while self.i < len(self.lines) and not self.lines[self.i].startswith("diff --git "):
                self.i += 1

    def _file(self, old: str | None, new: str | None) -> None:
        at = self.git["at"] if self.git is not None else self.i + 1
        info = self._git_info()
        self.i += 2
        hunks: list[Hunk] = []
        while self.i < len(self.lines) and self.lines[self.i].startswith("@@"):
            hunk = self._hunk()
            if hunks and hunk.old_first < hunks[-1].old_end:
                raise self.error(hunk.at, f"hunk starts at line {hunk.old_start} of "
                                 f"{old or new}, before the end of the hunk before it "
                                 "(hunks must be in order and must not overlap)")
            hunks.append(hunk)
        if not hunks:
            raise self.error(at, f"file header of {new or old} without any hunk")
        self.files.append(FilePatch(patch=self.name, old=old, new=new, hunks=tuple(hunks),
                                    at=at, **info))

    def _hunk(self) -> Hunk:
        at = self.i + 1
        match = _HUNK.match(self.lines[self.i])
        if not match:
            raise self.error(at, f"malformed hunk header {self.lines[self.i]!r}")
        old_start, new_start = int(match[1]), int(match[3])
        old_count = int(match[2]) if match[2] is not None else 1
        new_count = int(match[4]) if match[4] is not None else 1
        old_left, new_left = old_count, new_count
        body: list[tuple[str, str]] = []
        self.i += 1
        while old_left > 0 or new_left > 0:
            if self.i >= len(self.lines):
                if old_left != new_left:
                    raise self.error(at, f"the patch ends inside this hunk ({old_left} old "
                                     f"and {new_left} new lines missing)")
                # Trailing empty context lines lost to an editor: patch assumes them too.
                body += [(" ", "")] * old_left
                break
            line = self.lines[self.i]
            tag = line[:1]
            if tag in (" ", ""):
                old_left -= 1
                new_left -= 1
                tag = " "
            elif tag == "-":
                old_left -= 1
            elif tag == "+":
                new_left -= 1
            elif tag != "\\":
                raise self.error(self.i + 1, f"malformed hunk line {line!r} (the hunk "
                                 f"at line {at} expects {old_left} more old and {new_left} "
                                 "more new lines)")
            if old_left < 0 or new_left < 0:
                raise self.error(self.i + 1, f"hunk at line {at} has more lines than its "
                                 "header counts")
            body.append((tag, line[1:]))
            self.i += 1
        if self.i < len(self.lines) and self.lines[self.i].startswith("\\"):
            body.append(("\\", self.lines[self.i][1:]))  # "\ No newline" after the last line
            self.i += 1
        return Hunk(old_start, old_count, new_start, new_count, tuple(body), at=at,
                    heading=match[5].strip())


__all__ = ["PatchSet", "PatchFile", "FilePatch", "TouchedFile", "Hunk", "LineMap",
           "strip_path"]
