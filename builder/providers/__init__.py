# SPDX-License-Identifier: GPL-3.0-or-later
"""Distribution knowledge: which packages hold a kernel, and how to get them.

A provider turns the release a target runs (`uname -r`) into exact package names
and versions, so everything downstream is built from what the target really runs.
"""

from __future__ import annotations

import abc
from pathlib import Path

from builder.artifacts import KernelId, KernelPackages
from builder.cache import cache_dir
from builder.errors import BuildError


class Provider(abc.ABC):
    """One distribution release's kernels."""

    name: str = ""

    @abc.abstractmethod
    def resolve(self, release: str, package_version: str | None = None) -> KernelId:
        """Pin a release to one package version (default: the newest in the archive)."""

    @abc.abstractmethod
    def package_names(self, kernel: KernelId) -> dict[str, str]:
        """Role ("image", "headers", "common", "kbuild", "source") -> package name."""

    @abc.abstractmethod
    def acquire(self, kernel: KernelId, cache: Path | None = None) -> KernelPackages:
        """Download (if needed) and extract the kernel's packages under the cache."""


def get_provider(name: str = "debian-12") -> Provider:
    """The provider for a distribution name such as 'debian-12'."""
    from builder.providers.debian import DebianProvider

    registry: dict[str, type[Provider]] = {"debian-12": DebianProvider}
    if name not in registry:
        raise BuildError(stage="acquire", message=f"unknown distribution {name!r}",
                         hint="supported: " + ", ".join(sorted(registry)))
    return registry[name]()


__all__ = ["Provider", "get_provider", "cache_dir"]
