# SPDX-License-Identifier: GPL-3.0-or-later
"""What every distribution provider offers the pipeline."""

from __future__ import annotations

import abc
from pathlib import Path

from builder.artifacts import KernelId, KernelPackages


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
