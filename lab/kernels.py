# SPDX-License-Identifier: GPL-3.0-or-later
"""Kernel releases and aliases, resolved against the Debian archive with apt-cache."""

from __future__ import annotations

import difflib
import functools

from lab.errors import LabError

# alias -> (suite, series, flavour, which). Versions are never hard-coded: the archive
# decides. The 6.1 and 6.12 aliases are Debian 12's; the -13- ones Debian 13's kernels.
ALIASES: dict[str, tuple[str, str, str, str]] = {
    "newest-6.1-amd64": ("bookworm", "6.1", "amd64", "newest"),
    "newest-6.1-cloud-amd64": ("bookworm", "6.1", "cloud-amd64", "newest"),
    "older-6.1-amd64": ("bookworm", "6.1", "amd64", "older"),
    "older-2-6.1-amd64": ("bookworm", "6.1", "amd64", "older-2"),
    "newest-6.12-amd64": ("bookworm", "6.12", "amd64", "newest"),
    "older-6.12-amd64": ("bookworm", "6.12", "amd64", "older"),
    "newest-13-amd64": ("trixie", "6.12", "amd64", "newest"),
    "newest-13-cloud-amd64": ("trixie", "6.12", "cloud-amd64", "newest"),
}
DEFAULT_ALIAS = "newest-6.1-cloud-amd64"


def _parts(release: str):
    """The builder's parse of a release name (builder/providers/debian.py, one grammar for
    both): a DebianRelease, or None for a name that is no Debian 12 or 13 kernel release."""
    from builder.providers.debian import release_parts

    return release_parts(release)


def release_series(release: str) -> str:
    """'6.1.0-56-amd64' -> '6.1'; '6.12.57+deb12-amd64' -> '6.12'; '' for no release."""
    rel = _parts(release)
    return rel.series if rel else ""


def release_flavour(release: str) -> str:
    """'6.1.0-56-cloud-amd64' -> 'cloud-amd64'; '6.12.57+deb12-amd64' -> 'amd64'."""
    rel = _parts(release)
    return rel.flavour if rel else ""


def release_key(release: str) -> tuple[int, ...]:
    """Order releases of one series: every number of the ABI, left to right."""
    rel = _parts(release)
    return rel.order if rel else ()


def parse_search(text: str) -> list[str]:
    """Releases from `apt-cache search --names-only` output ('linux-image-R - description').

    A -dbg package or a meta package names no release (the parser says so). An -unsigned
    image names its release: Debian publishes it, with the source and headers, a day or
    more before the signed one, and `builder update --to latest` already builds to it.
    """
    releases = []
    for line in text.splitlines():
        name = line.split(" - ", 1)[0].strip().removesuffix("-unsigned")
        if name.startswith("linux-image-") and _parts(name.removeprefix("linux-image-")):
            releases.append(name.removeprefix("linux-image-"))
    return sorted(set(releases))


def image_packages(release: str) -> tuple[str, str]:
    """The signed image package of a release and its unsigned twin (the same kernel)."""
    return f"linux-image-{release}", f"linux-image-{release}-unsigned"


def image_versions(release: str, versions: dict[str, list[str]]) -> list[str]:
    """The versions of a release's image: the signed package's, else the unsigned one's."""
    signed, unsigned = image_packages(release)
    return versions.get(signed) or versions.get(unsigned, [])


def parse_madison(text: str) -> dict[str, list[str]]:
    """Package -> versions (newest first) from `apt-cache madison` output: the builder's
    parser, so the lab and the builder read the archive the same way."""
    from builder.providers.archive import parse_madison as builder_parse

    return builder_parse(text)


def pick(releases: list[str], versions: dict[str, list[str]], series: str, flavour: str,
         which: str) -> str:
    """Choose the release an alias means, from the archive's releases and package versions.

    'newest' is the highest ABI of the series and flavour; 'older' is the highest ABI below
    it whose image and the packages the builder downloads (headers, common headers,
    linux-source) all exist at the same version — what a fleet that has not rebooted into
    the newest kernel runs; 'older-2' the next such one below that (two uploads behind).
    linux-kbuild does not count: the archive keeps only the newest one, and the builder
    builds its tools from the exact source.
    """
    candidates = sorted((r for r in releases if release_series(r) == series
                         and release_flavour(r) == flavour), key=release_key, reverse=True)
    if not candidates:
        raise LabError(f"the archive has no linux-image for Linux {series} {flavour}; "
                       "run 'apt-get update' and check /etc/apt/sources.list")
    if which == "newest":
        return candidates[0]
    skip = 0 if which == "older" else int(which.split("-")[1]) - 1
    for release in candidates[1:]:
        image = image_versions(release, versions)
        if image and all(image[0] in versions.get(pkg, []) for pkg in builder_packages(release)):
            if skip == 0:
                return release
            skip -= 1
    raise LabError(f"no {which} Linux {series} {flavour} release in the archive has all the "
                   "packages the builder needs at the same version")


def builder_packages(release: str) -> list[str]:
    """The packages besides the image the builder downloads for a release (its own list)."""
    from builder.providers.debian import ARCHIVE_ROLES, package_names_for, parse_release

    names = package_names_for(parse_release(release))
    return [names[role] for role in ARCHIVE_ROLES if role != "image"]


def suite_of(release: str) -> str:
    """The Debian suite whose archive has a kernel release: 6.12.N+deb13-… is trixie's."""
    from builder.providers.archive import Archive

    return Archive.for_kernel(release).suite


def _apt_cache(*args: str, suite: str = "bookworm") -> str:
    """apt-cache against one suite of Debian's archive, as the builder reads it."""
    from builder.errors import BuildError
    from builder.providers.archive import Archive

    try:
        return Archive(suite).run("apt-cache", *args).stdout
    except BuildError as e:
        raise LabError(f"{e}: the lab needs a Debian host with apt") from e


@functools.cache
def archive_releases(suite: str = "bookworm") -> tuple[str, ...]:
    """Every amd64 kernel release a suite of the archive has an image package for."""
    out = _apt_cache("search", "--names-only", r"^linux-image-[0-9].*-amd64(-unsigned)?$",
                     suite=suite)
    return tuple(parse_search(out))


@functools.cache
def _madison(*packages: str, suite: str = "bookworm") -> dict[str, list[str]]:
    return parse_madison(_apt_cache("madison", *packages, suite=suite))


def package_version(release: str) -> str:
    """The Debian version of linux-image-<release> the archive offers (newest if several)."""
    versions = image_versions(release, _madison(*image_packages(release),
                                                 suite=suite_of(release)))
    if not versions:
        raise LabError(unknown_release_message(release))
    return versions[0]


def image_package(release: str) -> str:
    """The package a lab guest installs for a release: the signed image, or its unsigned
    twin while Debian has published only that one."""
    signed, unsigned = image_packages(release)
    return signed if _madison(signed, suite=suite_of(release)).get(signed) else unsigned


def unknown_release_message(release: str) -> str:
    close = difflib.get_close_matches(release, archive_releases(suite_of(release)), n=5,
                                      cutoff=0.6)
    hint = f" Close matches in the archive: {', '.join(close)}." if close else ""
    return (f"unknown kernel release {release!r}: the archive has no linux-image-{release}."
            f"{hint} Aliases: {', '.join(ALIASES)}.")


def resolve(alias: str) -> str:
    """An alias or a release -> a release the archive has (checked)."""
    if alias in ALIASES:
        suite, series, flavour, which = ALIASES[alias]
        releases = list(archive_releases(suite))
        versions: dict[str, list[str]] = {}
        if which.startswith("older"):
            olders = [r for r in releases if release_series(r) == series
                      and release_flavour(r) == flavour]
            pkgs = []
            for r in olders:
                pkgs += [*image_packages(r), *builder_packages(r)]
            versions = _madison(*dict.fromkeys(pkgs), suite=suite)
        return pick(releases, versions, series, flavour, which)
    package_version(alias)  # raises with close matches when unknown
    return alias
