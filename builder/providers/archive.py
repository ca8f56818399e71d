# SPDX-License-Identifier: GPL-3.0-or-later
"""Debian's archive, per suite: the versions it offers, and downloading them.

Kernels of the controller's own suite are looked up through the controller's apt
configuration, as `apt-cache madison` shows them. Another suite (trixie's kernels from
a Debian 12 controller, or bookworm's from a Debian 13 one) is read through a private
apt root under the cache, `apt/<suite>/`: its own sources (SUITE, SUITE-updates,
SUITE-security), lists and state, refreshed when older than REFRESH_SECONDS. Nothing
of the controller's apt configuration changes.

The builder and the lab both read the archive through this module.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from builder.cache import apt_root, cache_dir, exclusive
from builder.errors import BuildError

# Debian release -> suite; a kernel's release string names its Debian release
# ("6.12.57+deb13-amd64"); 6.1's own ABI names ("6.1.0-56-amd64") are Debian 12's.
SUITES = {"12": "bookworm", "13": "trixie"}
DEFAULT_DEBIAN = "12"
REFRESH_SECONDS = 6 * 3600
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
_DEB_TAG = re.compile(r"\+deb(\d+)-")


def debian_release_of(kernel_release: str) -> str:
    """'6.12.57+deb13-amd64' -> '13'; '6.1.0-56-amd64' and '6.12.57+deb12-amd64' -> '12'."""
    match = _DEB_TAG.search(kernel_release)
    return match.group(1) if match else DEFAULT_DEBIAN


def host_suite() -> str | None:
    """The controller's own Debian suite (VERSION_CODENAME of /etc/os-release), if any."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return None
    match = re.search(r"^VERSION_CODENAME=\"?([a-z]+)\"?$", text, re.M)
    return match.group(1) if match else None


def parse_madison(text: str) -> dict[str, list[str]]:
    """`apt-cache madison` output -> package -> versions (deduplicated, newest first)."""
    versions: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) >= 2 and parts[0] and parts[1]:
            seen = versions.setdefault(parts[0], [])
            if parts[1] not in seen:
                seen.append(parts[1])
    return {name: sorted_versions(found) for name, found in versions.items()}


def version_newer(a: str, b: str) -> bool:
    """Debian version comparison, by dpkg itself (epochs, tildes...)."""
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b],
                          check=False).returncode == 0


def sorted_versions(versions: list[str]) -> list[str]:
    """Newest first."""
    def cmp(a: str, b: str) -> int:
        return 0 if a == b else (-1 if version_newer(a, b) else 1)
    return sorted(versions, key=functools.cmp_to_key(cmp))


def _sources(suite: str) -> str:
    stanza = ("Types: deb\nURIs: {uri}\nSuites: {suites}\nComponents: main\n"
              f"Signed-By: {KEYRING}\n")
    return (stanza.format(uri="http://deb.debian.org/debian", suites=f"{suite} {suite}-updates")
            + "\n" + stanza.format(uri="http://deb.debian.org/debian-security",
                                   suites=f"{suite}-security"))


@dataclass(frozen=True)
class Archive:
    """One suite of Debian's archive, as apt sees it."""

    suite: str

    @classmethod
    def for_kernel(cls, kernel_release: str) -> Archive:
        return cls(SUITES[debian_release_of(kernel_release)])

    @property
    def private(self) -> bool:
        """Read through a private apt root (not the controller's own suite)."""
        return self.suite != host_suite()

    def root(self) -> Path:
        return apt_root(cache_dir(), self.suite)

    def env(self) -> dict[str, str]:
        """The environment apt runs with: the controller's, or the private root's."""
        if not self.private:
            return dict(os.environ)
        return {**os.environ, "APT_CONFIG": str(self._ready_root() / "apt.conf")}

    def _ready_root(self) -> Path:
        """Make the private root (once) and refresh its lists when they are stale."""
        root = self.root()
        stamp = root / "updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < REFRESH_SECONDS:
            return root
        with exclusive(root):
            if stamp.exists() and time.time() - stamp.stat().st_mtime < REFRESH_SECONDS:
                return root  # another build refreshed it while we waited
            for sub in ("etc/apt/sources.list.d", "etc/apt/apt.conf.d", "etc/apt/preferences.d",
                        "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
                        "var/lib/dpkg"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            (root / "var/lib/dpkg/status").touch()
            (root / "etc/apt/sources.list.d/debian.sources").write_text(_sources(self.suite))
            (root / "apt.conf").write_text(
                f'Dir "{root}/";\nDir::State::status "{root}/var/lib/dpkg/status";\n'
                'APT::Architecture "amd64";\nAPT::Architectures "amd64";\n'
                'Acquire::Languages "none";\nAPT::Sandbox::User "root";\n')
            env = {**os.environ, "APT_CONFIG": str(root / "apt.conf")}
            proc = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True,
                                  text=True, check=False)
            if proc.returncode != 0 or "\nE: " in "\n" + proc.stderr:
                raise BuildError(stage="resolve",
                                 message=f"cannot read Debian's {self.suite} archive: "
                                         f"{proc.stderr.strip()[-600:]}",
                                 hint="check that deb.debian.org is reachable; the builder "
                                      f"keeps {self.suite}'s package lists in {root}")
            stamp.touch()
        return root

    def run(self, *argv: str, stage: str = "resolve", cwd: Path | None = None
            ) -> subprocess.CompletedProcess:
        """An apt command against this suite; BuildError when apt is missing."""
        try:
            return subprocess.run(list(argv), env=self.env(), cwd=cwd, capture_output=True,
                                  text=True, check=False)
        except FileNotFoundError as err:
            raise BuildError(stage=stage, message=f"{argv[0]} is not installed",
                             hint="the builder needs Debian's apt tools") from err

    def query(self, *argv: str, stage: str = "resolve") -> str:
        """stdout of an apt-cache query; BuildError naming the command when it fails."""
        proc = self.run(*argv, stage=stage)
        if proc.returncode != 0:
            raise BuildError(stage=stage, message=f"`{' '.join(argv)}` ({self.suite}) failed: "
                             f"{proc.stderr.strip()[-800:]}",
                             hint=self.update_hint())
        return proc.stdout

    def madison(self, *packages: str, stage: str = "resolve") -> dict[str, list[str]]:
        """Package -> versions this suite offers (newest first), one apt-cache call."""
        return parse_madison(self.query("apt-cache", "madison", *packages, stage=stage))

    def update_hint(self) -> str:
        if self.private:
            return (f"the builder's {self.suite} package lists are in {self.root()}; delete "
                    "its 'updated' file to read the archive again")
        return "run `apt-get update`; check that the archive is reachable"

    def sources_hint(self) -> str:
        """What the controller's own apt sources must list (its suite is read through them)."""
        if self.private:
            return ""
        return (f"; this controller's own apt sources are read for {self.suite}: they must "
                f"list {self.suite}, {self.suite}-updates and {self.suite}-security (as a "
                "standard Debian installation does), then `apt-get update`")


__all__ = ["SUITES", "Archive", "debian_release_of", "host_suite", "parse_madison",
           "sorted_versions", "version_newer"]
