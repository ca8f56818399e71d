# SPDX-License-Identifier: GPL-3.0-or-later
"""Prepare: a source tree configured exactly like the shipped kernel.

The source is extracted once per source version ($KLP_CACHE/src/<version>/linux-source-X)
and shared by every flavour; each kernel gets its own out-of-tree build directory
(make O=...) holding the shipped .config, generated headers and Module.symvers.
A stamp records the recipe version, so a changed recipe re-prepares by itself.

`modules_prepare` also builds the host tools an external module build runs: fixdep,
modpost, genksyms, sign-file, objtool, resolve_btfids. They are what Debian's
linux-kbuild package ships, built from the same source — and that package is gone from
the archive for every upload but the newest. So the tools are always taken from here:
copied with the source's scripts/ (kbuild's makefiles and helpers) into
kernels/<release>_<version>/kbuild/, and the headers package's scripts/ and tools/
links (which pointed into linux-kbuild) point there instead. A module built against the
headers then comes out byte for byte as with the package (BTF aside: pahole's order
varies from run to run either way).

Everything that reads or writes the shared source tree holds its lock (the compile
stage's), so two flavours of one version prepare one after the other, never while the
other's compile has patched the tree.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from builder.artifacts import KernelPackages, PreparedTree
from builder.cache import cache_dir, kernel_dir, source_root, stamped, temporary_for
from builder.errors import BuildError
from builder.progress import Timer
from builder.toolchain import toolchain_for

STAGE = "prepare"
RECIPE = 1  # bump when the way a tree is prepared changes
TOOLS_RECIPE = 1  # bump when the way the kbuild tools are installed changes
JOBS = "-j2"
# Host programs of an external module build, by their place in the build (O=) tree, as
# (path, built when all these options are y, unless one of these is y). Missing one
# that the configuration builds is an error.
HOST_TOOLS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("scripts/basic/fixdep", (), ()),
    ("scripts/mod/modpost", ("CONFIG_MODULES",), ()),
    ("scripts/genksyms/genksyms", ("CONFIG_MODVERSIONS",), ("CONFIG_GENDWARFKSYMS",)),
    ("scripts/gendwarfksyms/gendwarfksyms", ("CONFIG_GENDWARFKSYMS",), ()),
    ("scripts/sign-file", ("CONFIG_MODULE_SIG_FORMAT",), ()),
    ("tools/objtool/objtool", ("CONFIG_OBJTOOL",), ()),
    ("tools/bpf/resolve_btfids/resolve_btfids", ("CONFIG_BPF", "CONFIG_DEBUG_INFO_BTF"), ()),
)
# Copied when the build made them (the kbuild package has them; a module build rarely
# runs them): recordmcount is used only by configurations without -mrecord-mcount.
OPTIONAL_TOOLS = ("scripts/recordmcount", "scripts/kconfig/conf", "scripts/kallsyms",
                  "scripts/unifdef", "scripts/bin2c", "certs/extract-cert")
TOOL_DIRS = ("scripts", "tools")  # the headers' links into the kbuild tree
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


def objtool_at_link(config: dict[str, str]) -> bool:
    """IBT or clang LTO delay objtool to the linked module (kbuild's delay-objtool)."""
    return config.get("CONFIG_X86_KERNEL_IBT") == "y" or config.get("CONFIG_LTO_CLANG") == "y"


def extract_source(tarball: Path, dest_root: Path) -> Path:
    """Extract linux-source-X.tar.* once into dest_root (atomically); return the tree."""
    name = tarball.name.split(".tar")[0]
    tree = dest_root / name
    if (tree / "Makefile").is_file():
        return tree
    dest_root.mkdir(parents=True, exist_ok=True)
    tmp = temporary_for(tree)
    tmp.mkdir()
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


def make_args(source: Path, build: Path, cc: str, release: str,
              toolchain: list[str] = ()) -> list[str]:
    """The command every kbuild call of this tree starts with (the lead reuses them)."""
    # kbuild would call this tree 6.1.192 (VERSION.PATCHLEVEL.SUBLEVEL); Debian calls
    # it 6.1.0-56-amd64. KERNELRELEASE on the command line fixes utsrelease.h and
    # vermagic; KERNELVERSION + an empty (but set) LOCALVERSION make kernel.release and
    # `make kernelrelease` agree, and keep setlocalversion from appending "+".
    return [*toolchain, "make", "-C", str(source), f"O={build}", f"CC={cc}", f"HOSTCC={cc}",
            f"KERNELRELEASE={release}", f"KERNELVERSION={release}", "LOCALVERSION=", JOBS]


def config_drift(shipped: dict[str, str], built: dict[str, str]) -> list[str]:
    """Kernel (not host tool) options olddefconfig changed: the tree would differ.

    Only options the shipped config mentions count: Debian strips a few build-host
    settings (BUILD_SALT, MODULE_SIG_KEY...) that olddefconfig then fills with defaults.
    """
    return sorted(k for k, v in shipped.items() if built.get(k, "n") != v
                  and not _TOOL_SYMBOLS.match(k))


def prepare(packages: KernelPackages, cache: Path | None = None) -> PreparedTree:
    """Configure and modules_prepare the tree once per kernel (stamped); wire the tools."""
    cache = cache or cache_dir()
    kernel = packages.kernel
    config = read_config(packages.config)
    toolchain, cc = toolchain_for(config, kernel.release)
    src_root = source_root(cache, kernel.package_version)
    source = src_root / packages.source_tarball.name.split(".tar")[0]
    build = kernel_dir(cache, kernel) / "build"
    tools = kernel_dir(cache, kernel) / "kbuild"
    args = make_args(source, build, cc, kernel.release, toolchain)
    tree = PreparedTree(kernel=kernel, source_dir=source, build_dir=build, make_args=args,
                        objtool_at_link=objtool_at_link(config), toolchain=toolchain,
                        compiler=config.get("CONFIG_CC_VERSION_TEXT", "").strip('"'),
                        build_root=Path(toolchain[-1]).name if toolchain else None)
    stamp = build / ".klp-prepared"
    wanted = {"recipe": RECIPE, "release": kernel.release, "version": kernel.package_version,
              "source": str(source),
              # prepared with a build root: its tools would not run on the controller
              **({"toolchain": toolchain[-1]} if toolchain else {})}
    tools_wanted = {"recipe": TOOLS_RECIPE, "tree": wanted, "build": str(build)}
    if (stamped(stamp, wanted) and stamped(tools / STAMP, tools_wanted)
            and headers_linked(packages.headers_dir, tools)):
        return tree  # warm: no lock, no make
    from builder.stages.compile import locked, restore_files

    src_root.mkdir(parents=True, exist_ok=True)
    with locked(tree):  # the source tree is shared by flavours (see compile.locked)
        extract_source(packages.source_tarball, src_root)
        restore_files(tree)  # an interrupted compile may have left the tree patched
        if not stamped(stamp, wanted):
            _prepare_tree(tree, packages, config, stamp, wanted)
            (tools / STAMP).unlink(missing_ok=True)  # the tools come from this tree
        if not stamped(tools / STAMP, tools_wanted):
            install_host_tools(source, build, config, tools, tools_wanted)
        link_headers(packages.headers_dir, tools)
    return tree


def _prepare_tree(tree: PreparedTree, packages: KernelPackages, config: dict[str, str],
                  stamp: Path, wanted: dict) -> None:
    """olddefconfig + modules_prepare with the shipped config; the stamp is written last."""
    timer = Timer()
    build, args = tree.build_dir, tree.make_args
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
    (build / ".klp-prepare-seconds").write_text(f"{timer.seconds:.1f}\n")


# ---------------------------------------------------------------- kbuild tools
STAMP = ".klp-kbuild"


def required_tools(config: dict[str, str]) -> list[str]:
    """The host programs this configuration's modules_prepare builds and a module build runs."""
    return [path for path, when, unless in HOST_TOOLS
            if all(config.get(k) == "y" for k in when)
            and not any(config.get(k) == "y" for k in unless)]


def install_host_tools(source: Path, build: Path, config: dict[str, str], dest: Path,
                       stamp: dict) -> Path:
    """What linux-kbuild ships, from the exact source: its scripts/ and the built tools.

    dest gets every file of the source's scripts/ (kbuild's makefiles, shell and perl
    helpers; not its subdirectories, which hold the tools' sources), then each host
    program from the build tree at the same relative place. Built in a temporary
    directory and renamed into place, with the stamp written last.
    """
    missing = [tool for tool in required_tools(config) if not (build / tool).is_file()]
    if missing:
        raise BuildError(stage=STAGE, file=str(build),
                         message="modules_prepare did not build " + ", ".join(missing),
                         hint=f"delete {build} so the tree is prepared again")
    tmp = temporary_for(dest)
    try:
        for name in TOOL_DIRS:
            (tmp / name).mkdir(parents=True)
        for item in sorted((source / "scripts").iterdir()):
            if item.is_file():
                shutil.copy2(item, tmp / "scripts" / item.name)
        for tool in required_tools(config) + [t for t in OPTIONAL_TOOLS
                                              if (build / t).is_file()]:
            (tmp / tool).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(build / tool, tmp / tool)
        (tmp / STAMP).write_text(json.dumps(stamp))
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        if dest.exists():
            dest.rename(old)  # replaced under the source lock: nobody else renames it
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _header_dirs(headers_dir: Path) -> list[Path]:
    """The flavour's headers and the common headers it includes (each has the links)."""
    return sorted(d for d in headers_dir.parent.glob("linux-headers-*")
                  if any((d / name).is_symlink() for name in TOOL_DIRS))


def headers_linked(headers_dir: Path, tools: Path) -> bool:
    """Do the headers' scripts/ and tools/ lead to these tools?"""
    dirs = _header_dirs(headers_dir)
    return headers_dir in dirs and all(
        (d / name).is_symlink() and (d / name).resolve() == (tools / name).resolve()
        for d in dirs for name in TOOL_DIRS)


def link_headers(headers_dir: Path, tools: Path) -> None:
    """Point the headers' scripts/ and tools/ links at the tools (relative, swapped atomically).

    The packages link them to ../../lib/linux-kbuild-<x>/..., which only the kbuild
    package of that exact version would fill.
    """
    dirs = _header_dirs(headers_dir)
    if headers_dir not in dirs:
        raise BuildError(stage=STAGE, file=str(headers_dir),
                         message="the headers have no scripts/ or tools/ link to kbuild",
                         hint=f"delete {headers_dir.parent.parent.parent} so the packages "
                              "are extracted again")
    for d in dirs:
        for name in TOOL_DIRS:
            link = d / name
            if link.exists() and not link.is_symlink():
                raise BuildError(stage=STAGE, file=str(link), message="is not a symlink",
                                 hint="delete the extracted packages so they are extracted "
                                      "again")
            target = os.path.relpath(tools / name, d)
            if link.is_symlink() and os.readlink(link) == target:
                continue
            tmp = d / f".{name}.klp-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target)
            os.replace(tmp, link)


def check_release(tree: PreparedTree) -> None:
    """`make kernelrelease` and utsrelease.h must say exactly what the target runs."""
    printed = _make_run(tree.make_args + ["-s", "kernelrelease"], "make kernelrelease").strip()
    uts = (tree.build_dir / "include/generated/utsrelease.h").read_text()
    release = tree.kernel.release
    stored = (tree.build_dir / "include/config/kernel.release").read_text().strip()
    if printed != release or stored != release or f'"{release}"' not in uts:
        raise BuildError(stage=STAGE, message=f"the prepared tree's release is {printed!r}, "
                         f"not {release!r}", hint="report this: kbuild ignored KERNELRELEASE")


__all__ = ["prepare", "make_args", "read_config", "objtool_at_link",
           "config_drift", "extract_source", "RECIPE", "install_host_tools", "link_headers",
           "headers_linked", "required_tools", "HOST_TOOLS"]
