# SPDX-License-Identifier: GPL-3.0-or-later
"""Distribution knowledge: which packages hold a kernel, and how to get them.

A provider turns the release a target runs (`uname -r`) into exact package names
and versions, so everything downstream is built from what the target really runs.
"""

from __future__ import annotations

from builder.cache import cache_dir
from builder.errors import BuildError
from builder.providers.archive import SUITES, debian_release_of
from builder.providers.base import Provider
from builder.providers.debian import DebianProvider


def get_provider(name: str = "debian-12") -> Provider:
    """The provider for a distribution name such as 'debian-12' or 'debian-13'."""
    supported = [f"debian-{number}" for number in SUITES]
    if name not in supported:
        raise BuildError(stage="acquire", message=f"unknown distribution {name!r}",
                         hint="supported: " + ", ".join(supported))
    return DebianProvider(name.removeprefix("debian-"))


def distribution_of(release: str) -> str:
    """The distribution a kernel release belongs to: '6.12.57+deb13-amd64' -> 'debian-13'."""
    return f"debian-{debian_release_of(release)}"


def provider_for(release: str) -> Provider:
    """The provider of the distribution a kernel release belongs to."""
    return get_provider(distribution_of(release))


__all__ = ["Provider", "get_provider", "provider_for", "distribution_of", "cache_dir"]
