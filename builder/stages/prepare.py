# SPDX-License-Identifier: GPL-3.0-or-later
"""Prepare: a source tree configured exactly like the shipped kernel.

The source is extracted once per source version ($KLP_CACHE/src/<version>/linux-source-X)
and shared by every flavour; each kernel gets its own out-of-tree build directory
(make O=...) holding the shipped .config, generated headers and Module.symvers.
A stamp records the recipe version, so a changed recipe re-prepares by itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from builder.artifacts import KernelPackages, PreparedTree
from builder.errors import BuildError

STAGE = "prepare"
RECIPE = 1  # bump when the way a tree is prepared changes
JOBS = "-j2"
# Config symbols that describe the host's tools rather than the kernel: a different
# pahole or linker version changes them without changing the code we compile.
_TOOL_SYMBOLS = re.compile(r"^CONFIG_(PAHOLE_VERSION|LD_VERSION|AS_VERSION|LLD_VERSION|"
                           r"RUSTC_LLVM_VERSION|RUSTC_VERSION|BINDGEN_VERSION|RUST_IS_AVAILABLE|.*_BTF.*)$")


def read_config(path: Path) -> dict[str, str]:
    """CONFIG_X=value lines (values kept verbatim, quotes included)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            values[line[2:-len(" is not set")]] = "n"
    return values


def compiler_of(config: dict[str, str]) -> tuple[str, str]:
    """(command, version text) the shipped kernel was built with, from its config."""
    text = config.get("CONFIG_CC_VERSION_TEXT", "").strip('"')
    if not text:
        raise BuildError(stage=STAGE, message="the kernel config has no CONFIG_CC_VERSION_TEXT",
                         hint="is this a real kernel config (boot/config-<release>)?")
    return text.split()[0], text


def check_compiler(config: dict[str, str]) -> str:
    """Refuse to build with any compiler but the one the kernel was built with."""
    cc, wanted = compiler_of(config)
    try:
        first = subprocess.run([cc, "--version"], capture_output=True, text=True,
                               check=True).stdout.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError, IndexError) as err:
        raise BuildError(stage=STAGE, message=f"the kernel was built with {wanted!r}, "
                         f"and {cc} is not installed here",
                         hint=f"install it: apt-get install {cc}") from err
    if first != wanted:
        raise BuildError(stage=STAGE, message=f"compiler mismatch: the kernel was built with "
                         f"{wanted!r}, {cc} here is {first!r}",
                         hint="build on a machine with exactly that compiler version; other "
                              "code generation would not match the shipped kernel")
    return cc


def objtool_at_link(config: dict[str, str]) -> bool:
    """IBT or clang LTO delay objtool to the linked module (kbuild's delay-objtool)."""
    return config.get("CONFIG_X86_KERNEL_IBT") == "y" or config.get("CONFIG_LTO_CLANG") == "y"


def extract_source(tarball: Path, dest_root: Path) -> Path:
    """Extract linux-source-X.tar.* once into dest_root (atomically); return the tree."""
    name = tarball.name.split(".tar")[0]
    tree = dest_root / name
    if (tree / "Makefile").is_file():
        return tree
    tmp = dest_root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _make_run(["tar", "-xf", str(tarball), "-C", str(tmp)], "extract the kernel source")
        inner = tmp / name
        if not (inner / "Makefile").is_file():
            raise BuildError(stage=STAGE, file=str(tarball),
                             message=f"the tarball has no {name}/Makefile",
                             hint="delete it from the cache so it is downloaded again")
        shutil.rmtree(tree, ignore_errors=True)
        inner.rename(tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tree


def _make_run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-1500:]
        raise BuildError(stage=STAGE, message=f"{what} failed: `{' '.join(cmd)}`\n{tail}",
                         hint="see the output above; deleting the build directory forces a "
                              "fresh prepare")
    return proc.stdout


def make_args(source: Path, build: Path, cc: str, release: str) -> list[str]:
    """Arguments every kbuild call of this tree needs (the lead reuses them)."""
    # kbuild would call this tree 6.1.192 (VERSION.PATCHLEVEL.SUBLEVEL); Debian calls
    # it 6.1.0-56-amd64. KERNELRELEASE on the command line fixes utsrelease.h and
    # vermagic; KERNELVERSION + an empty (but set) LOCALVERSION make kernel.release and
    # `make kernelrelease` agree, and keep setlocalversion from appending "+".
    return ["make", "-C", str(source), f"O={build}", f"CC={cc}", f"HOSTCC={cc}",
            f"KERNELRELEASE={release}", f"KERNELVERSION={release}", "LOCALVERSION=", JOBS]


def config_drift(shipped: dict[str, str], built: dict[str, str]) -> list[str]:
    """Kernel (not host tool) options olddefconfig changed: the tree would differ.

    Only options the shipped config mentions count: Debian strips a few build-host
    settings (BUILD_SALT, MODULE_SIG_KEY...) that olddefconfig then fills with defaults.
    """
    return sorted(k for k, v in shipped.items() if built.get(k, "n") != v
                  and not _TOOL_SYMBOLS.match(k))


def prepare(packages: KernelPackages, cache: Path | None = None) -> PreparedTree:
    """Configure and modules_prepare the tree once per kernel (stamped)."""
    from builder.providers import cache_dir
    from builder.stages.acquire import kernel_dir

    cache = cache or cache_dir()
    kernel = packages.kernel
    config = read_config(packages.config)
    cc = check_compiler(config)
    source = extract_source(packages.source_tarball,
                            cache / "src" / kernel.package_version)
    build = kernel_dir(cache, kernel) / "build"
    args = make_args(source, build, cc, kernel.release)
    tree = PreparedTree(kernel=kernel, source_dir=source, build_dir=build, make_args=args,
                        objtool_at_link=objtool_at_link(config))
    stamp = build / ".klp-prepared"
    wanted = {"recipe": RECIPE, "release": kernel.release, "version": kernel.package_version,
              "source": str(source)}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return tree
    t0 = time.monotonic()
    build.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    shutil.copy(packages.config, build / ".config")
    _make_run(args + ["olddefconfig"], "make olddefconfig")
    drift = config_drift(config, read_config(build / ".config"))
    if drift:
        raise BuildError(stage=STAGE, message="olddefconfig changed kernel options of the "
                         f"shipped config: {', '.join(drift[:12])}",
                         hint="the source package version does not match the kernel image; "
                              "pass the image's exact --package-version")
    _make_run(args + ["modules_prepare"], "make modules_prepare")
    shutil.copy(packages.module_symvers, build / "Module.symvers")
    check_release(tree)
    stamp.write_text(json.dumps(wanted))
    (build / ".klp-prepare-seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
    return tree


def check_release(tree: PreparedTree) -> None:
    """`make kernelrelease` and utsrelease.h must say exactly what the target runs."""
    printed = _make_run(tree.make_args + ["-s", "kernelrelease"], "make kernelrelease").strip()
    uts = (tree.build_dir / "include/generated/utsrelease.h").read_text()
    release = tree.kernel.release
    stored = (tree.build_dir / "include/config/kernel.release").read_text().strip()
    if printed != release or stored != release or f'"{release}"' not in uts:
        raise BuildError(stage=STAGE, message=f"the prepared tree's release is {printed!r}, "
                         f"not {release!r}", hint="report this: kbuild ignored KERNELRELEASE")


__all__ = ["prepare", "make_args", "read_config", "check_compiler", "objtool_at_link",
           "config_drift", "extract_source", "RECIPE"]
