# SPDX-License-Identifier: GPL-3.0-or-later
"""Typed artifacts passed between builder stages (in memory; each stage caches its own
outputs under the kernel's cache directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from builder.patchset import PatchSet


@dataclass
class KernelId:
    """Which kernel a patch is built for: exactly what the target runs."""

    release: str  # as `uname -r` prints it, e.g. 6.1.0-56-amd64
    package_version: str  # Debian package version, e.g. 6.1.192-2
    distribution: str = "debian-12"


@dataclass
class KernelPackages:
    """Acquire: the kernel's packages, extracted in the cache."""

    kernel: KernelId
    source_tarball: Path  # linux-source-X.Y.tar.xz
    headers_dir: Path  # usable with `make -C headers_dir M=...` (vermagic, modversions)
    vmlinuz: Path
    config: Path
    modules_dir: Path  # lib/modules/<release> of the image package
    module_symvers: Path
    sign_file: Path | None = None  # the headers' scripts/sign-file (prepare builds it from source)


@dataclass
class PreparedTree:
    """Prepare: a source tree configured like the shipped kernel, modules_prepare done."""

    kernel: KernelId
    source_dir: Path
    build_dir: Path  # O= directory holding .config and generated headers
    make_args: list[str] = field(default_factory=list)  # e.g. CC=gcc-12, O=..., -s
    objtool_at_link: bool = False  # objtool runs on the linked module, not per object
    # The kernel's own compiler: [] on the controller, else the prefix that enters the
    # build root of the kernel's suite (builder/toolchain.py); make_args start with it.
    toolchain: list[str] = field(default_factory=list)
    compiler: str = ""  # CONFIG_CC_VERSION_TEXT: the compiler both builds used
    build_root: str | None = None  # the suite of the build root, None: the controller's


@dataclass
class CompiledUnit:
    """Compile: one translation unit the patch touches, built twice."""

    source: str  # path relative to the source tree, e.g. fs/proc/cmdline.c
    object_name: str  # e.g. fs/proc/cmdline.o
    target_object: str  # "vmlinux" or the module name, e.g. "binfmt_misc"
    original: Path
    patched: Path
    command: str = ""  # kbuild's command line for the patched object (diagnostics)
    because: str = ""  # "" when the patch changes it, else e.g. "includes fs/proc/internal.h"


@dataclass
class CompileResult:
    units: list[CompiledUnit] = field(default_factory=list)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)  # per step, e.g. "patched"
    patches: PatchSet | None = None  # as applied: each hunk where patch found it
    # includers of changed headers left out: their preprocessed text showed no change
    # gcc emits code for (builder/preprocess.py)
    same_after_preprocessing: int = 0
