# SPDX-License-Identifier: GPL-3.0-or-later
"""What a Debian kernel update fixes: its changelog items between two versions.

Debian's `changelog.Debian.gz` (parsed with python-debian) lists, per upload, items
such as `* nfsd: preflight SEQUENCE replies … (CVE-2026-99362)` and, for a stable update,
one `- subsystem: summary (CVE-…)` line per upstream commit. An item is tied to a fix
unit when the words before its colons name the unit's files: a path (`net/sched` →
net/sched/…), a file (`io-wq` → io_uring/io-wq.c) or a directory (`nfsd` → fs/nfsd/…, `mm` → mm/…;
never a wide one like `net` or `drivers`); the most specific match wins, and a match by
directory that several units share ties to none (`sched:` is kernel/ or net/sched).
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path

from debian.changelog import Changelog

from builder.providers.archive import version_newer

CVE = re.compile(r"CVE-\d{4}-\d{4,}")
_ITEM = re.compile(r"^\s{2,}[*-] ")
_ARCH = re.compile(r"^\[[^\]]*\]\s*")  # "[x86] KVM: …", "[powerpc*] …"
_PREFIX_WORD = re.compile(r"^[A-Za-z0-9_./,+ -]+$")


@dataclass
class Item:
    """One changelog item of one upload."""

    version: str
    text: str  # the item, continuation lines joined
    cves: list[str] = field(default_factory=list)

    @property
    def prefixes(self) -> list[str]:
        """'net/sched: act_pedit: use…' → ['net/sched', 'act_pedit']; up to three deep."""
        found: list[str] = []
        rest = _ARCH.sub("", self.text)
        for _depth in range(3):
            head, sep, tail = rest.partition(": ")
            if not sep or not _PREFIX_WORD.match(head) or len(head) > 60:
                break
            found.append(head.strip().lower())
            rest = tail
        return found

    @property
    def subsystem_words(self) -> list[str]:
        """'io_uring/io-wq: don't…' → ['io_uring', 'io-wq']."""
        return [w.strip() for head in self.prefixes for w in re.split(r"[/,]", head)
                if w.strip()]

    def as_dict(self) -> dict:
        return {"version": self.version, "text": self.text, "cves": self.cves}


def read_changelog(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as fh:
        return fh.read()


def items_between(text: str, older: str, newer: str) -> list[Item]:
    """Items of the uploads after `older` up to and including `newer`, newest first."""
    items: list[Item] = []
    for block in Changelog(text, strict=False):
        version = str(block.version)
        if version_newer(version, newer):
            continue
        if not version_newer(version, older):
            break
        current: list[str] = []
        for line in [*block.changes(), ""]:
            if _ITEM.match(line) or not line.strip():
                if current:
                    joined = " ".join(part.strip() for part in current)
                    items.append(Item(version, joined.lstrip("*- ").strip(),
                                      sorted(set(CVE.findall(joined)))))
                current = [line] if line.strip() else []
            elif current:
                current.append(line)
    return [item for item in items if not item.text.startswith(
        ("New upstream stable update", "https://"))]


def _unit_words(files: list[str]) -> tuple[set[str], set[str]]:
    """(file stems, directory names): below the top level, or the top level itself when
    the files sit right in it (mm/, io_uring/) — `net` or `drivers` name no one unit."""
    stems, dirs = set(), set()
    for rel in files:
        parts = rel.lower().split("/")
        stems.add(re.sub(r"\.[ch]$", "", parts[-1]))
        dirs.update(parts[:-1] if len(parts) == 2 else parts[1:-1])
    return stems, dirs


def tie(items: list[Item], units: dict[str, list[str]]) -> dict[str, list[Item]]:
    """Unit name → the items whose subsystem words name its files (see module doc)."""
    words = {name: _unit_words(files) for name, files in units.items()}
    tied: dict[str, list[Item]] = {name: [] for name in units}

    def variants(word: str) -> set[str]:
        return {word, word.replace("-", "_"), word.replace("_", "-")}

    for item in items:
        scores: dict[str, int] = {}
        paths = [head for head in item.prefixes if "/" in head]
        for name, (stems, dirs) in words.items():
            score = 4 if any(f.lower().startswith(f"{p}/") or f.lower().startswith(f"{p}.")
                             for p in paths for f in units[name]) else 0
            for word in item.subsystem_words:
                forms = variants(word)
                if forms & stems:
                    score = max(score, 3)
                elif forms & dirs:
                    score = max(score, 2)
            if score:
                scores[name] = score
        if not scores:
            continue
        best = max(scores.values())
        chosen = [name for name, score in scores.items() if score == best]
        if best < 3 and len(chosen) > 1:
            continue  # "net: …" or "sched: …" alone does not say which unit
        for name in chosen:
            tied[name].append(item)
    return tied


__all__ = ["Item", "read_changelog", "items_between", "tie", "CVE"]
