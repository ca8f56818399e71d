# SPDX-License-Identifier: GPL-3.0-or-later
"""Typed artifacts passed between builder stages, each saved as JSON in the work dir."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from builder.patchset import PatchSet

T = TypeVar("T")


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def save(artifact: Any, path: Path) -> None:
    """Write an artifact atomically so a resumed run never reads half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_encode(artifact), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def load(cls: type[T], path: Path) -> T:
    return _decode(cls, json.loads(path.read_text()))


def _decode(cls: Any, data: Any) -> Any:
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, typ in hints.items():
        if name not in data:
            continue
        kwargs[name] = _decode_value(typ, data[name])
    return cls(**kwargs)


def _decode_value(typ: Any, value: Any) -> Any:
    typ = str(typ)
    if value is None:
        return None
    if typ.startswith("Path"):
        return Path(value)
    if typ.startswith("list[Path]"):
        return [Path(v) for v in value]
    for name, cls in _NESTED.items():
        if typ.startswith(f"list[{name}]"):
            return [_decode(cls, v) for v in value]
        if typ.startswith(name):
            return _decode(cls, value)
    return value


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


_NESTED: dict[str, Any] = {
    "KernelId": KernelId,
    "CompiledUnit": CompiledUnit,
}
