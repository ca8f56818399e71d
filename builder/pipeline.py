# SPDX-License-Identifier: GPL-3.0-or-later
"""The build pipeline: runs the stages in order, times them, writes the manifest.

Each stage caches what it makes per kernel (extracted packages, the prepared tree,
compiled originals, the kernel's symbol table), so a rerun redoes only the patch's
own work.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from builder import __version__
from builder.cache import kernel_dir, mark_used, sha256_file, work_dir
from builder.elf import ElfObject
from builder.errors import BuildError
from builder.manifest import SCHEMA_VERSION
from builder.patchset import PatchSet
from builder.progress import Progress
from builder.providers import cache_dir, get_provider
from builder.request import BuildRequest


def resolve_version(request: BuildRequest):
    """Pin the Debian package version (the archive's newest when not given)."""
    kernel = get_provider(request.distribution).resolve(request.kernel, request.package_version)
    request.package_version = kernel.package_version
    return kernel


def build(request: BuildRequest, progress: Progress | None = None) -> dict:
    """Run every stage; return the manifest. Leaves no module behind on failure."""
    from builder.stages import compile as compile_stage
    from builder.stages import prepare as prepare_stage
    from builder.symbols import Exports

    progress = progress or Progress()
    for patch in request.patches:
        if not patch.is_file():
            raise BuildError(stage="build", file=str(patch), message="patch file not found",
                             hint="pass the path of a unified diff with --patch")
    request.output.mkdir(parents=True, exist_ok=True)
    ko_out = request.output / f"{request.name}.ko"
    manifest_out = request.output / f"{request.name}.json"
    for stale in (ko_out, manifest_out):
        stale.unlink(missing_ok=True)
    patches = PatchSet.read(request.patches)  # parsed once; every stage uses this value

    provider = get_provider(request.distribution)
    kernel = resolve_version(request)
    work = request.work or work_dir(cache_dir(), request.name, kernel.release)
    work.mkdir(parents=True, exist_ok=True)

    packages = progress.stage("acquire", f"{kernel.release} ({kernel.package_version})",
                              provider.acquire, kernel)
    tree = progress.stage("prepare", "kernel tree", prepare_stage.prepare, packages)
    mark_used(kernel_dir(cache_dir(), packages.kernel), tree.source_dir.parent, work)
    compiled = progress.stage("compile", ", ".join(patches.sources),
                              compile_stage.compile_units, tree, patches, work,
                              progress=progress.note, max_files=request.max_files)
    diffs = progress.stage("diff", f"{len(compiled.units)} unit(s)", _diff_all, compiled,
                           request.skip_init_changes)
    images, verified = progress.stage("verify", "originals against the shipped binaries",
                                      _verify_all, packages, compiled, diffs)
    exports = progress.stage("exports", "Module.symvers", Exports.load, packages.module_symvers)
    layout = progress.stage("layout", "special-section entry sizes", probe_layout, packages,
                            tree.toolchain)
    units = progress.stage("generate", "patch objects", _generate_all, compiled, diffs,
                           images, verified, exports, layout)
    linked = progress.stage("link", f"{request.name}.ko", _link, request, packages, units, work,
                            exports, tree.toolchain)
    progress.stage("check", "the module against what the kernel does at load", _check,
                   linked, layout, units, packages, images)
    if request.sign_key:
        progress.stage("sign", linked.path.name, _sign, request, packages, linked,
                       tree.toolchain)

    tmp_ko = request.output / f".{request.name}.ko.tmp"
    try:
        shutil.copy(linked.path, tmp_ko)
        manifest = _manifest(request, kernel, diffs, units, linked, tmp_ko, progress.seconds,
                             images, patches, compiled, tree)
        tmp_json = request.output / f".{request.name}.json.tmp"
        tmp_json.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        tmp_ko.replace(ko_out)
        tmp_json.replace(manifest_out)
    finally:
        tmp_ko.unlink(missing_ok=True)
    return manifest


def probe_layout(packages, toolchain: list[str]):
    from builder.layout import probe

    return probe(packages.headers_dir, kernel_dir(cache_dir(), packages.kernel) / "layout.json",
                 toolchain)


def _verify_all(packages, compiled, diffs):
    """Prove every replaced function's rebuilt original equals the shipped one.

    Returns the images and, per source, the verified functions (their sympos is found
    here, where the shipped copy is identified, and generate uses it as is). The
    originals are the objects the diff stage read, carried by each UnitDiff.
    """
    from builder.stages.verify import verify_units

    return verify_units(packages, compiled.units, diffs)


def _diff_all(compiled, skip_init: bool = False):
    """One UnitDiff per unit. Each object file is read here, once: the UnitDiff carries
    both parsed objects on to verify and generate."""
    from builder.layouts import refuse_layout_changes
    from builder.stages.diff import diff_unit, require_change

    # the patches as applied: line maps follow hunks that patch found at an offset
    patches = compiled.patches
    if not compiled.units:
        files = ", ".join(patches.sources)
        raise BuildError(stage="diff", file=files,
                         message=f"no functional change in {files}: no file this kernel "
                                 "builds reads them",
                         hint="check that the patch changes code compiled in this kernel's "
                              "configuration")
    # changed files compiled through others: headers, and .c files other files #include
    built = {unit.source for unit in compiled.units}
    headers = [patches.line_map(path) for path in patches.sources if path not in built]
    diffs = []
    for unit in compiled.units:
        refuse_layout_changes(unit)
        diffs.append(diff_unit(ElfObject.read(unit.original), ElfObject.read(unit.patched),
                               unit.source, unit.target_object, patches.line_map(unit.source),
                               headers, skip_init))
    require_change(diffs)
    return diffs


def _generate_all(compiled, diffs, images, verified, exports, layout):
    from builder.stages.generate import generate_unit

    provided = frozenset(name for diff in diffs for name in diff.provides)
    units = []
    for index, (unit, diff) in enumerate(zip(compiled.units, diffs, strict=True)):
        if not (diff.changed or diff.callbacks or diff.provides):
            continue  # nothing of this file is needed (e.g. a comment-only hunk)
        units.append(generate_unit(diff, images[unit.target_object],
                                   exports, prefix=f"u{index}", layout=layout,
                                   provided=provided,
                                   sympos={v.name: v.sympos for v in verified[unit.source]}))
    return units


def _link(request: BuildRequest, packages, units, work: Path, exports, toolchain):
    from builder.stages.link import link_module

    description = f"klp.livepatch {request.name} for {packages.kernel.release}"
    return link_module(work, request.name, packages.headers_dir, units, request.replace,
                       description, exports.exported_names(), request.consistency, toolchain)


def _check(linked, layout, units, packages, images):
    from builder.stages.check import check_module
    from builder.stages.verify import load_image

    def symbol_table(objname: str):
        if objname not in images:
            images[objname] = load_image(packages, objname)
        return images[objname]

    functions = [fn for unit in units for fn in unit.functions]
    return check_module(ElfObject.read(linked.path), layout, functions, symbol_table)


def _sign(request: BuildRequest, packages, linked, toolchain) -> None:
    from builder.stages.link import sign_module

    if not request.sign_cert:
        raise BuildError(stage="sign", message="--sign-key needs --sign-cert",
                         hint="pass the X.509 certificate that matches the key")
    sign_module(linked.path, packages.sign_file, request.sign_key, request.sign_cert,
                toolchain=toolchain)


def _manifest(request, kernel, diffs, units, linked, ko: Path, seconds, images,
              patches: PatchSet, compiled, tree=None) -> dict:
    objects: dict[str, list[dict]] = {}
    for unit in units:
        for fn in unit.functions:
            objects.setdefault(fn.object, []).append(
                {"name": fn.old_name, "sympos": fn.sympos, "source": fn.source,
                 "reason": fn.reason})
    return {
        "schema_version": SCHEMA_VERSION,  # builder/manifest.schema.json describes every key
        "name": request.name,
        "module_name": linked.module_name,
        "kernel_release": kernel.release,
        "package_version": kernel.package_version,
        "distribution": kernel.distribution,
        # the shipped kernel's compiler, which both builds used, and where it ran
        "compiler": tree.compiler if tree else None,
        "build_root": tree.build_root if tree else None,
        "vermagic": vermagic(ko),
        "kernel_build_id": images["vmlinux"].build_id if "vmlinux" in images else None,
        "patches": [{"file": p.basename, "sha256": p.sha256} for p in patches.patches],
        "patch_sha256": patches.sha256,  # == request.patch_sha256(), from the bytes built
        "builder_version": __version__,
        "key": request.key(),
        "objects": objects,
        "new_functions": sorted({f"{d.target_object}:{n}" for d in diffs
                                 for n in d.new_functions}),
        "new_data": sorted({f"{d.target_object}:{n}" for d in diffs for n in d.new_data}),
        "callbacks": {d.target_object: sorted(d.callbacks) for d in diffs if d.callbacks},
        "livepatch_symbols": sorted({s for u in units for s in u.klp_symbols}),
        "livepatch_relocation_sections": linked.klp_relocation_sections,
        "replace": request.replace,
        "signed": bool(request.sign_key),
        "module_sha256": sha256_file(ko),
        "stage_seconds": dict(seconds),
        "consistency": request.consistency,
        "skipped_init": sorted({f"{d.target_object}:{c}" for d in diffs for c in d.skipped_init}),
        "notes": [note for unit in units for note in unit.notes]
        + _reload_notes(linked.klp_relocation_sections, images.get("vmlinux")),
        # files compiled twice and compared: those the patch changes, and those that
        # include a changed header; includers the preprocessor showed unchanged were not
        "compiled_units": {"changed": sum(1 for u in compiled.units if not u.because),
                           "through_headers": sum(1 for u in compiled.units if u.because),
                           "same_after_preprocessing": compiled.same_after_preprocessing},
    }


def _reload_notes(klp_sections: list[str], vmlinux) -> list[str]:
    """Livepatch writes a module object's relocations into the patch when that module
    loads; a kernel without clear_relocate_add (6.1) never clears them when it unloads,
    so the module's next load finds them written and is refused while the patch stays."""
    objects = sorted({name.split(".")[3] for name in klp_sections} - {"vmlinux"})
    if not objects or vmlinux is None or vmlinux.addresses("clear_relocate_add"):
        return []
    return [f"{obj}: once unloaded, {obj} cannot be loaded again while this patch is "
            f"loaded (this kernel's livepatch leaves its relocations written); remove the "
            f"patch before reloading {obj}" for obj in objects]


def vermagic(ko: Path) -> str:
    """The vermagic= string of a module's .modinfo."""
    modinfo = ElfObject.read(ko).section(".modinfo")
    for entry in modinfo.data.split(b"\0") if modinfo else []:
        if entry.startswith(b"vermagic="):
            return entry.split(b"=", 1)[1].decode()
    return ""


def manifest_matches(manifest_path: Path, request: BuildRequest) -> bool:
    """True when an existing artifact was built from exactly this request."""
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    ko = manifest_path.with_suffix(".ko")
    return manifest.get("key") == request.key() and ko.is_file() and \
        sha256_file(ko) == manifest.get("module_sha256")


__all__ = ["BuildRequest", "Progress", "build", "manifest_matches"]
