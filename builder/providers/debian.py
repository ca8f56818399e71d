# SPDX-License-Identifier: GPL-3.0-or-later
"""Debian kernels: release names, package names, archive versions. One provider,
parameterised by Debian release (12 bookworm, 13 trixie); the archive of each suite is
read through builder/providers/archive.py.

Two naming schemes live side by side:
  6.1 (Debian 12's own kernel):    6.1.0-56-amd64        ABI 6.1.0-56
  6.12 (Debian 12 via security):   6.12.57+deb12-amd64   ABI 6.12.57+deb12
  6.12 (Debian 13's own kernel):   6.12.57+deb13-amd64   ABI 6.12.57+deb13
They differ in how the kbuild package is named (per series vs per ABI).

The archive keeps the ABI-named packages of older uploads (image, headers, common
headers) and every linux-source, but only the newest linux-kbuild-6.1 of a suite: the
builder therefore downloads image, headers, common headers and source only, and builds
the kbuild tools from that exact source (builder/stages/prepare.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from builder.artifacts import KernelId, KernelPackages
from builder.cache import cache_dir
from builder.errors import BuildError
from builder.providers.archive import (
    SUITES,
    Archive,
    debian_release_of,
    sorted_versions,
)
from builder.providers.base import Provider

FLAVOURS = ("amd64", "cloud-amd64", "rt-amd64")
# What the builder downloads, at the kernel's exact version. Not "kbuild": its tools are
# built from the source (the archive drops linux-kbuild-6.1 with each new upload).
ARCHIVE_ROLES = ("image", "headers", "common", "source")
# 6.1.0-56-amd64 → ABI "6.1.0-56"; 6.12.57+deb12-cloud-amd64 → ABI "6.12.57+deb12".
_RELEASE = re.compile(
    r"^(?P<abi>(?P<series>\d+\.\d+)\.(?:0-\d+|\d+\+deb\d+))-(?P<flavour>[a-z0-9-]+)$")


@dataclass(frozen=True)
class DebianRelease:
    """A parsed `uname -r` of a Debian kernel."""

    release: str
    abi: str  # 6.1.0-56 or 6.12.57+deb12
    series: str  # 6.1, 6.12: names the source package
    flavour: str  # amd64, cloud-amd64, rt-amd64

    @property
    def per_abi_kbuild(self) -> bool:
        """6.12-style ABIs ship one kbuild package per ABI, 6.1 one per series."""
        return "+deb" in self.abi

    @property
    def order(self) -> tuple[int, ...]:
        """Every number of the ABI, left to right: orders the releases of one series
        (6.1.0-9 before 6.1.0-56, 6.12.9+deb12 before 6.12.101+deb12)."""
        return tuple(int(n) for n in re.findall(r"\d+", self.abi))


def _split(release: str) -> DebianRelease | None:
    """The parts of a release name of a supported flavour, whichever Debian it names."""
    match = _RELEASE.match(release.strip())
    if not match or match["flavour"] not in FLAVOURS:
        return None
    return DebianRelease(release=release.strip(), abi=match["abi"], series=match["series"],
                         flavour=match["flavour"])


def release_parts(release: str) -> DebianRelease | None:
    """A Debian 12 or 13 kernel release split into its parts; None for any other name
    (an image package's -dbg or -unsigned twin, a meta package, another Debian's kernel).
    The one grammar of release names: the builder's and the lab's (lab/kernels.py)."""
    rel = _split(release)
    return rel if rel is not None and debian_release_of(rel.release) in SUITES else None


def parse_release(release: str) -> DebianRelease:
    """Split a Debian kernel release; refuse anything else with an example."""
    rel = release_parts(release)
    if rel is not None:
        return rel
    if _split(release) is None:
        raise BuildError(
            stage="resolve", message=f"{release!r} is not a Debian 12 or 13 kernel release",
            hint="use the target's `uname -r`, e.g. 6.1.0-56-amd64, 6.1.0-56-cloud-amd64, "
                 f"6.12.57+deb12-amd64 or 6.12.57+deb13-amd64 (flavours: {', '.join(FLAVOURS)})")
    raise BuildError(
        stage="resolve", message=f"{release!r} is a kernel of a Debian release the "
                                 "builder does not know",
        hint="supported: " + ", ".join(f"Debian {n} ({s})" for n, s in SUITES.items()))


def package_names_for(rel: DebianRelease) -> dict[str, str]:
    """Every package the builder needs for one release (image: the unsigned one)."""
    common = f"linux-headers-{rel.abi}-common" + ("-rt" if rel.flavour.startswith("rt-") else "")
    kbuild = f"linux-kbuild-{rel.abi}" if rel.per_abi_kbuild else f"linux-kbuild-{rel.series}"
    return {
        "image": f"linux-image-{rel.release}-unsigned",
        "image_signed": f"linux-image-{rel.release}",
        "headers": f"linux-headers-{rel.release}",
        "common": common,
        "kbuild": kbuild,
        "source": f"linux-source-{rel.series}",
    }


def madison_versions(package: str, archive: Archive) -> list[str]:
    """Versions of a package the archive offers, newest first (apt's own order)."""
    return archive.madison(package).get(package, [])


def missing_packages(names: dict[str, str], version: str,
                     offered: dict[str, list[str]]) -> list[str]:
    """The packages of ARCHIVE_ROLES the archive does not offer at exactly `version`."""
    return [names[role] for role in ARCHIVE_ROLES
            if names[role] in offered and version not in offered[names[role]]]


def missing_message(release: str, version: str, missing: list[str],
                    offered: dict[str, list[str]]) -> BuildError:
    """Say which packages of a kernel are gone, what the archive has instead, what to do."""
    kept = "; ".join(f"{name} {', '.join(offered.get(name, [])[:4]) or 'none'}"
                     for name in missing)
    return BuildError(
        stage="acquire",
        message=f"the archive no longer has every package of {release} at {version}: "
                f"{', '.join(f'{name}={version}' for name in missing)} "
                f"(it offers: {kept}). A livepatch is built from the exact source and headers "
                "of the running kernel; Debian keeps only the signed image of some uploads",
        hint="reboot these hosts into a kernel the archive has in full (`apt-cache madison "
             "linux-headers-<release>` lists them), or put the missing .deb files into "
             "$KLP_CACHE/debs (default ~/.cache/klp-livepatch/debs)")


def available_releases(archive: Archive) -> list[str]:
    """Releases of the supported flavours the archive knows (for error messages)."""
    out = archive.query("apt-cache", "pkgnames", "linux-image-")
    releases = set()
    for name in out.split():
        rel = name.removeprefix("linux-image-").removesuffix("-unsigned")
        if _split(rel) is not None:
            releases.add(rel)
    return sorted(releases, key=lambda r: [int(x) if x.isdigit() else x
                                           for x in re.split(r"[.+-]", r)])


class DebianProvider(Provider):
    """One Debian release's kernels, from that suite of Debian's archive."""

    def __init__(self, debian: str = "12"):
        self.debian = debian
        self.name = f"debian-{debian}"
        self.archive = Archive(SUITES[debian])

    def resolve(self, release: str, package_version: str | None = None) -> KernelId:
        rel = parse_release(release)
        if debian_release_of(release) != self.debian:
            raise BuildError(stage="resolve",
                             message=f"{release} is a Debian {debian_release_of(release)} "
                                     f"kernel, not one of {self.name}",
                             hint="let the builder pick the provider from the release")
        if package_version is not None:
            from builder.stages.acquire import extracted

            known = KernelId(release=rel.release, package_version=package_version,
                             distribution=self.name)
            if extracted(known, cache_dir()):  # fetched from the archive before
                return known
        names = package_names_for(rel)
        versions = (madison_versions(names["image"], self.archive)
                    or madison_versions(names["image_signed"], self.archive))
        if not versions:
            known = available_releases(self.archive)
            raise BuildError(
                stage="resolve",
                message=f"Debian's {self.archive.suite} archive has no kernel {release}",
                hint="available releases: " + (", ".join(known) if known else
                                               "none; " + self.archive.update_hint())
                     + self.archive.sources_hint())
        if package_version is None:
            package_version = versions[0]
        else:
            signed = madison_versions(names["image_signed"], self.archive)
            if package_version not in versions + signed:
                raise BuildError(
                    stage="resolve",
                    message=f"{release} has no package version {package_version}",
                    hint="available versions: " + ", ".join(sorted_versions(
                        list(set(versions + signed)))))
        return KernelId(release=rel.release, package_version=package_version,
                        distribution=self.name)

    def package_names(self, kernel: KernelId, debs: Path) -> dict[str, str]:
        """Exact names for this version: the unsigned image when that version has one
        (the archive is asked only when neither image is in `debs` already)."""
        from builder.stages.acquire import deb_path

        names = package_names_for(parse_release(kernel.release))
        version = kernel.package_version
        cached = {role: deb_path(debs, names[role], version) is not None
                  for role in ("image", "image_signed")}
        if not cached["image"] and (cached["image_signed"] or version not in
                                    madison_versions(names["image"], self.archive)):
            names["image"] = names["image_signed"]
        del names["image_signed"]
        return names

    def acquire(self, kernel: KernelId, cache: Path | None = None) -> KernelPackages:
        from builder.stages.acquire import acquire_packages, deb_path, extracted

        cache = cache or cache_dir()
        names = self.package_names(kernel, cache / "debs")
        # Ask the archive once, before downloading anything, about every package not yet
        # cached: a kernel whose headers or source are gone is refused naming all of them.
        # (Not when all is extracted: the image .deb kept may be the -unsigned one.)
        wanted = {} if extracted(kernel, cache) else {
            names[role]: None for role in ARCHIVE_ROLES
            if deb_path(cache / "debs", names[role], kernel.package_version) is None}
        if wanted:
            offered = self.archive.madison(*wanted, stage="acquire")
            offered = {name: offered.get(name, []) for name in wanted}
            missing = missing_packages(names, kernel.package_version, offered)
            if missing:
                raise missing_message(kernel.release, kernel.package_version, missing, offered)
        return acquire_packages(kernel, names, cache, self.archive)


__all__ = ["DebianProvider", "DebianRelease", "parse_release", "release_parts",
           "package_names_for", "available_releases", "madison_versions", "missing_packages",
           "ARCHIVE_ROLES"]
