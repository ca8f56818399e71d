# SPDX-License-Identifier: GPL-3.0-or-later
"""Update: a running Debian kernel brought to a newer upload's code, as one live patch.

    python3 -m builder update --kernel 6.1.0-55-amd64 --to latest --name NAME --output DIR

The module is NAME_<target version> (NAME_6_1_192_3): a later update is another module
that takes over by atomic replace, so one update is loaded at a time and never a gap.

1. **Versions.** The kernel's package version (what it runs) and the target: `latest`
   is the newest `linux-source-<series>` the archive offers. At or past the target, the
   host is current: a manifest says so and no module is made.
2. **Difference.** Both `linux-source` trees (cached), compared file by file; only C
   sources and headers that could be built for x86 count (units.py).
3. **Fix units.** The difference cut the way a user would patch: the changed `.c` files
   of one directory with the headers they include most directly. A unit none of whose
   files this configuration builds is `not-in-config`.
4. **Each unit alone.** Built with the builder's full pipeline (verify, check…); a unit
   the builder refuses `needs-reboot`, with the builder's reason; a unit whose built
   code does not change is `no-change`. Results are cached per unit (resumable). The
   compiles come first, in batches on all cores: every unit's original `.c` files, then
   the patched ones of the units that change no header. A unit whose header change
   needs more than `max_files` built files compiled (300 by default; the includers that
   preprocess to the same code are not, and up to four times as many are preprocessed)
   needs a reboot: each such file is compiled twice, and one subsystem header would
   cost hours on a small controller.
   A unit that does not compile alone is built again with the units that add, in
   headers its files read, the names its compiler errors quote (a new helper, member
   or flag): the cut is ours, so their fix is one fix (`joined` in its record).
5. **One cumulative module** from every unit that built, with atomic replace, so a
   later update replaces this one on the host instead of stacking.
6. **What it fixes.** The changelog items of the uploads in between, with their CVE
   ids, tied to units where their subsystem names the unit's files (changelog.py).

The manifest of the module gains an `update` section: versions, every unit (files,
placements, status, reason, functions, tied changelog items) and the CVEs covered by
live units and those left for a reboot.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from builder import __version__, code_digest
from builder.cache import exclusive, sha256_file, source_root, temporary_for
from builder.errors import BuildError
from builder.includes import IncludeGraph
from builder.manifest import SCHEMA_VERSION
from builder.patchset import PatchSet
from builder.pipeline import BuildRequest, build, manifest_matches
from builder.progress import Progress, Timer
from builder.providers import cache_dir, provider_for
from builder.providers.archive import Archive, version_newer
from builder.providers.debian import madison_versions, parse_release
from builder.stages import compile as compiling
from builder.stages.acquire import extract_packages
from builder.stages.compile import original_objects, pristine
from builder.stages.prepare import extract_source, prepare
from builder.update.changelog import items_between, read_changelog, tie
from builder.update.units import HeaderReach, Unit, cut_units, tree_diff, unit_patch

STAGE = "update"
WARM_BATCH = 32  # objects compiled per kbuild run before the units: progress between
MAX_FILES = 300  # a unit's header may reach this many built files (see 4. above)
NO_CHANGE = "no functional change"
MAX_JOINED = 3  # other units a unit that does not compile alone may be built with
NOT_COMPILED = re.compile(r"^compile: [^:]+: compiling \S+\.o failed")  # a reason's start
QUOTED = re.compile(r"['\u2018]([^'\u2019]+)['\u2019]")  # gcc quotes as C or UTF-8
TAG = re.compile(r"^(?:struct|union|enum) ([A-Za-z_]\w*)$")
WORD = re.compile(r"[A-Za-z_]\w*")
ERROR_AT = re.compile(r"^([^:\s]+\.[ch]):\d+(?::\d+)?: (?:fatal )?error:")  # gcc's file:line:col


@dataclass
class UpdateRequest:
    kernel: str
    to: str  # a package version of the kernel's line, or "latest"
    name: str
    output: Path
    package_version: str | None = None  # what the host runs (default: the archive's newest)
    work: Path | None = None
    sign_key: Path | None = None
    sign_cert: Path | None = None
    consistency: str = "default"
    jobs: int = 1  # units built at once; their compile stages take turns on the tree
    max_files: int = MAX_FILES  # built files a unit's headers may reach


def source_tree(version: str, series: str, archive: Archive) -> tuple[Path, Path]:
    """(tree, changelog.Debian.gz) of linux-source-SERIES at `version`, cached."""
    cache = cache_dir()
    root = source_root(cache, version) / "deb"
    if not root.is_dir():
        extract_packages(cache / "debs", [(f"linux-source-{series}", version)], root, archive)
    tarball = sorted((root / "usr" / "src").glob(f"linux-source-{series}.tar.*"))[0]
    changelog = root / "usr" / "share" / "doc" / f"linux-source-{series}" / "changelog.Debian.gz"
    return extract_source(tarball, source_root(cache, version)), changelog


def target_version(series: str, to: str, running: str, archive: Archive) -> str:
    """The package version `to` names in the kernel's line."""
    offered = madison_versions(f"linux-source-{series}", archive)
    if to == "latest":
        if not offered:
            raise BuildError(stage=STAGE, message=f"Debian's {archive.suite} archive offers no "
                                                  f"linux-source-{series}",
                             hint=archive.update_hint())
        return offered[0]
    if to not in offered and to != running:
        raise BuildError(stage=STAGE, message=f"linux-source-{series} has no version {to}",
                         hint="versions the archive offers: " + ", ".join(offered[:8]))
    return to


def short_reason(text: str, items: int = 3) -> str:
    """A builder error's first line; when that line introduces a list (it ends with ':'),
    with the list's first `items` entries, so the reason says what was found."""
    lines = text.splitlines()
    reason = lines[0] if lines else ""
    if reason.endswith(":"):
        listed = []
        for line in lines[1:]:
            if line.strip().startswith("hint:") or len(listed) == items:
                break
            listed.append(line.strip().removeprefix("- "))
        reason += " " + "; ".join(item for item in listed if item)
    return reason


SLUG_LENGTH = 40


def _plain(text: str) -> str:
    """Lower-case letters and digits, every other run of characters one '_'."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _slug(name: str) -> str:
    """A file-name form of a unit name (its patch, work and module names), at most
    SLUG_LENGTH characters and never another unit's: units build side by side. A name
    the plain form could share with another (`a/b_c` and `a_b/c`, `xt_DSCP.h` and
    `xt_dscp.h`) or a longer one keeps its tail (the most specific part) and gets a
    digest of the whole."""
    slug = _plain(name)
    one_to_one = re.fullmatch(r"[a-z0-9]+(/[a-z0-9]+)*", name) is not None
    if one_to_one and len(slug) <= SLUG_LENGTH:
        return slug
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return slug[-(SLUG_LENGTH - len(digest) - 1):].strip("_") + "_" + digest


def _unit_result(request: UpdateRequest, kernel, unit: Unit, patch: Path, work: Path,
                 unit_work: Path, progress: Progress, max_files: int) -> dict:
    """Build one unit alone, in `unit_work` (no other build uses it meanwhile); cached
    by its patch, kernel and the builder's version and code."""
    key = {"builder_version": __version__, "builder_code": code_digest(),
           "kernel": kernel.release,
           "package_version": kernel.package_version,
           "patch_sha256": sha256_file(patch), "max_files": max_files}
    cached = patch.with_suffix(".result.json")
    if cached.is_file():
        result = json.loads(cached.read_text())
        if result.get("key") == key:
            return result
    sub = BuildRequest(kernel=kernel.release, package_version=kernel.package_version,
                       patches=[patch], name=f"u_{_slug(unit.name)}"[:50],
                       output=work / "units" / _slug(unit.name), work=unit_work,
                       max_files=max_files)
    result = {"key": key}
    timer = Timer()
    try:
        manifest = build(sub, progress)
    except BuildError as err:
        text = str(err)
        result.update(status="no-change" if NO_CHANGE in text else "needs-reboot",
                      reason=short_reason(text))
        if NOT_COMPILED.match(result["reason"]):
            result["compile_errors"] = [line for line in err.message.splitlines()
                                        if "error:" in line][:20]
    else:
        result.update(status="live", reason="",
                      functions={obj: sorted(f["name"] for f in fns)
                                 for obj, fns in manifest["objects"].items()},
                      notes=manifest.get("notes", []))
    result["build_seconds"] = round(timer.seconds, 1)
    tmp = temporary_for(cached)  # a killed run leaves no half result behind
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(cached)
    return result


def update(request: UpdateRequest, progress: Progress | None = None) -> dict:
    """Build the update module (or say the host is current); returns the manifest."""
    progress = progress or Progress()
    provider = provider_for(request.kernel)
    kernel = provider.resolve(request.kernel, request.package_version)
    series = parse_release(kernel.release).series
    newer = progress.stage("resolve", f"{kernel.release} runs {kernel.package_version}, "
                           f"update to {request.to}", target_version, series, request.to,
                           kernel.package_version, provider.archive)
    request.output.mkdir(parents=True, exist_ok=True)
    name = module_name(request.name, newer)
    manifest_path = request.output / f"{name}.json"
    info = {"from": kernel.package_version, "to": newer, "units": [], "changelog": []}
    if not version_newer(newer, kernel.package_version):
        (request.output / f"{name}.ko").unlink(missing_ok=True)
        return _write(manifest_path, _current(name, kernel, info))

    work = request.work or cache_dir() / "work" / f"update-{kernel.release}-{newer}"
    with exclusive(work):  # two updates of one kernel (two playbooks) take turns
        return _update_behind(request, progress, provider, kernel, newer, work, info,
                              manifest_path)


def _update_behind(request: UpdateRequest, progress: Progress, provider, kernel, newer: str,
                   work: Path, info: dict, manifest_path: Path) -> dict:
    """The update of a kernel behind `newer`, built in `work`; returns the manifest."""
    name = manifest_path.stem
    series = parse_release(kernel.release).series
    (work / "patches").mkdir(parents=True, exist_ok=True)
    tree = progress.stage("prepare", "kernel tree", lambda: prepare(provider.acquire(kernel)))
    new_tree, changelog = progress.stage("acquire", f"linux-source-{series} {newer}",
                                         source_tree, newer, series, provider.archive)
    units, left_out, patches = progress.stage(
        "units", "difference cut into fix units", _cut, tree, new_tree, work)
    progress.stage("originals", "every unit's own .c files, compiled as shipped",
                   _warm_originals, tree, units, progress)
    progress.stage("patched", "the patched .c files of the units that change no header",
                   _warm_patched, tree, units, patches, progress)
    records = _unit_records(request, kernel, units, patches, work, progress)
    progress.stage("join", "units that do not compile alone, with the units they need",
                   _join_units, request, kernel, tree, new_tree, units, records, patches,
                   work, progress)
    info["left_out"] = left_out
    items = items_between(read_changelog(changelog), kernel.package_version, newer) \
        if changelog.is_file() else []
    tied = tie(items, {r["name"]: r["files"] for r in records})
    for record in records:
        record["changelog"] = [item.as_dict() for item in tied[record["name"]]]
    info["changelog"] = [item.as_dict() for item in items]
    info["units"] = records
    info.update(_cves(records, items))

    live = [r for r in records if r["status"] == "live"]
    if not live:
        (request.output / f"{name}.ko").unlink(missing_ok=True)
        return _write(manifest_path, _current(name, kernel, info, state="nothing-live"))
    # One patch of every live unit's files: units that include a new header each create it.
    module_patch = work / "patches" / "module.patch"
    by_name = {unit.name: unit for unit in units}
    with pristine(tree.source_dir, new_tree):
        module_patch.write_bytes(unit_patch(
            _together(name, [by_name[n] for n in _module_units(live)]), tree.source_dir,
            new_tree))
    cumulative = BuildRequest(
        kernel=kernel.release, package_version=kernel.package_version,
        patches=[module_patch], name=name, output=request.output,
        replace=True, sign_key=request.sign_key, sign_cert=request.sign_cert,
        work=work / "module", consistency=request.consistency,
        # Each unit kept within max_files alone; together they may reach more.
        max_files=request.max_files * len(live))
    if not manifest_matches(manifest_path, cumulative):
        try:
            build(cumulative, progress)
        except BuildError as err:
            raise BuildError(stage=err.stage, file=err.file, function=err.function,
                             message=f"{len(live)} fix units each built alone, but not "
                                     f"together: {err.message}",
                             hint="report this update pair to the developers; each unit's "
                                  f"manifest is under {work / 'units'}") from err
    manifest = json.loads(manifest_path.read_text())
    # A module reused from before schema_version existed is version 1 all the same.
    manifest.setdefault("schema_version", SCHEMA_VERSION)
    manifest["update"] = {**info, "state": "update"}
    return _write(manifest_path, manifest)


def _unit_records(request: UpdateRequest, kernel, units: list[Unit], patches: dict[str, Path],
                  work: Path, progress: Progress) -> list[dict]:
    """Every unit's record, in the units' order."""
    records = [{"name": unit.name, "files": unit.files, "unbuilt": unit.unbuilt,
                "placements": unit.placements} for unit in units]
    todo = []
    for unit, record in zip(units, records, strict=True):
        if unit.in_config:
            todo.append((unit, patches[unit.name], request.max_files, record))
        else:
            record.update(status="not-in-config", reason=unit.reason
                          or "no file of it is built in this configuration")
    for (*_built, record), result in zip(
            todo, _build_units(request, kernel, [t[:3] for t in todo], work, progress),
            strict=True):
        record.update({k: v for k, v in result.items() if k != "key"})
    return records


def _build_units(request: UpdateRequest, kernel, todo: list[tuple[Unit, Path, int]],
                 work: Path, progress: Progress) -> list[dict]:
    """Each (unit, patch, max_files) built alone, up to `request.jobs` at once, each in a
    work directory of its own slot; the results in `todo`'s order."""
    slots: queue.Queue[Path] = queue.Queue()
    for slot in range(request.jobs):
        slots.put(work / ("unit-work" if slot == 0 else f"unit-work-{slot + 1}"))

    crashed = threading.Event()  # a unit raised: start no other (its result is not read)

    def built(index: int, unit: Unit, patch: Path, max_files: int) -> dict | None:
        if crashed.is_set():
            return None
        unit_work = slots.get()
        try:
            progress.note(f"unit {index}/{len(todo)}: {unit.name}")
            return _unit_result(request, kernel, unit, patch, work, unit_work,
                                progress.nested(label=unit.name), max_files)
        except BaseException:
            crashed.set()
            raise
        finally:
            slots.put(unit_work)

    with ThreadPoolExecutor(max_workers=request.jobs) as pool:
        futures = [pool.submit(built, index, *item) for index, item in enumerate(todo, 1)]
        try:
            return [future.result() for future in futures]
        except BaseException:
            # The error (or Ctrl-C) now, not after every unit still queued was built.
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _did_not_compile(record: dict) -> bool:
    """Did the unit fail to compile alone (against the older tree)? Its error lines stay
    in the record while _join_units rewrites the reason."""
    return record.get("status") == "needs-reboot" and (
        "compile_errors" in record or NOT_COMPILED.match(record.get("reason", "")) is not None)


def _needs_others(record: dict) -> bool:
    """A unit that did not compile alone, with error lines that may name what it needs."""
    return _did_not_compile(record) and bool(record.get("compile_errors"))


def _missing_names(errors: list[str]) -> tuple[set[str], set[str]]:
    """The identifiers a compiler's errors quote: the member, function or macro the file
    wanted (`'struct sock' has no member named 'sk_use_task_frag'`), and apart the tags
    of the types they name (`incomplete type 'struct foo'`): looked for only when no
    unit adds one of the first, as every patch to a struct's users names its tag."""
    quoted = [text for line in errors for text in QUOTED.findall(line.split("did you mean")[0])]
    names = {text for text in quoted if WORD.fullmatch(text)}
    tags = {m[1] for text in quoted if (m := TAG.match(text))}
    return names, tags


def _adds(patch: Path) -> set[str]:
    """Every identifier on the lines a patch adds."""
    return {word for line in patch.read_text(errors="replace").splitlines()
            if line.startswith("+") and not line.startswith("+++")
            for word in WORD.findall(line)}


def _join_units(request: UpdateRequest, kernel, tree, new_tree: Path, units: list[Unit],
                records: list[dict], patches: dict[str, Path], work: Path,
                progress: Progress) -> None:
    """Build each unit that does not compile alone again, with the units that add what
    its compile errors name in headers its files read, and those that change a file its
    errors are in (and, for those that do not compile alone either, theirs): the cut
    into units is ours, and a fix that needs another unit's new declaration or member,
    or whose header the old code of another unit's file no longer compiles with, is
    that unit's fix too.

    A unit whose partner needs a reboot for its own reason (most often the struct member
    the unit uses is new: a layout change) needs one too, and says so without a build;
    so does one that would join more than MAX_JOINED others. A joined build that is live
    makes the unit live (`joined` names the others); a unit joined to it that alone
    changed no code (a new helper nothing else called) is live through it. Otherwise the
    unit's reason says what the joined build found.
    """
    record_of = {record["name"]: record for record in records}
    failing = [u for u in units if _needs_others(record_of[u.name])]
    if not failing:
        return
    with pristine(tree.source_dir):
        reach = HeaderReach(IncludeGraph.load(tree.source_dir, tree.build_dir))
        readers = {unit.name: {f for header in unit.headers for f in reach.distances(header)}
                   for unit in units if unit.in_config and unit.headers}
    adds = {name: _adds(patches[name]) for name in readers}
    by_name = {unit.name: unit for unit in units}

    def providers(unit: Unit) -> list[str]:
        errors = record_of[unit.name]["compile_errors"]
        # A file another unit changes that this unit's header breaks (the old code of a
        # caller whose fix goes with the header's): that unit's change is this one's too.
        broken = {m[1] for line in errors if (m := ERROR_AT.match(line))}
        owners = sorted(name for name, other in by_name.items()
                        if name != unit.name and broken & set(other.sources + other.headers))
        reading = [name for name, files in readers.items()
                   if name != unit.name and files & set(unit.sources)]
        for wanted in _missing_names(errors):
            found = sorted(name for name in reading if adds[name] & wanted)
            if found:
                return list(dict.fromkeys(owners + found))
        return owners

    todo, joined_with, files_of = [], {}, {}
    for unit in failing:
        partners: list[str] = []
        queue_ = [unit]
        while queue_:  # a partner that does not compile alone brings its own
            for name in providers(queue_.pop()):
                if name not in partners and name != unit.name:
                    partners.append(name)
                    if _needs_others(record_of[name]):
                        queue_.append(by_name[name])
        record = record_of[unit.name]
        # A partner that does not compile alone is not blocked: its own partners are in.
        blocked = [name for name in partners if record_of[name]["status"] == "needs-reboot"
                   and not _did_not_compile(record_of[name])]
        if blocked:
            record["reason"] = (f"does not compile without unit {blocked[0]}'s change, which "
                                f"needs a reboot: {record_of[blocked[0]]['reason']}")
            continue
        if len(partners) > MAX_JOINED:
            record["reason"] = (f"does not compile without {len(partners)} other units' "
                                f"changes ({', '.join(partners)}): more than {MAX_JOINED} "
                                "joined is no longer one fix")
            continue
        if not partners:
            continue
        joined = _together(unit.name, [unit] + [by_name[name] for name in partners])
        joined_with[unit.name] = partners
        files_of[unit.name] = tuple(joined.files)
        if any(tuple(other.files) == files_of[unit.name] for other, _p, _m in todo):
            continue  # two units that each need the other: one build of both
        path = work / "patches" / f"{_slug(unit.name)}.joined.patch"
        with pristine(tree.source_dir, new_tree):
            path.write_bytes(unit_patch(joined, tree.source_dir, new_tree))
        todo.append((joined, path, request.max_files))
    progress.note(f"{len(joined_with)} of {len(failing)} units that do not compile alone "
                  f"are built again with the units they need ({len(todo)} builds)")
    built = dict(zip((tuple(joined.files) for joined, _p, _m in todo),
                     _build_units(request, kernel, todo, work, progress), strict=True))
    for name, partners in joined_with.items():
        record, result = record_of[name], built[files_of[name]]
        if record["status"] == "live":
            continue  # live already, through a unit it was joined to
        if result["status"] != "live":
            record["reason"] = (f"does not compile alone; with unit(s) {', '.join(partners)} "
                                f"it {result['status']}: {result['reason']}")
            continue
        record.update({k: v for k, v in result.items() if k != "key"}, joined=partners)
        record.pop("compile_errors", None)
        for partner in partners:
            if record_of[partner]["status"] != "live":  # its change is in the module now
                record_of[partner].update(status="live", reason="", joined=[name])
                record_of[partner].pop("compile_errors", None)


def _module_units(live: list[dict]) -> list[str]:
    """The units whose changes make the module: the live ones, and those a live unit
    was built with (each once)."""
    return list(dict.fromkeys(n for r in live for n in [r["name"], *r.get("joined", [])]))


def _together(name: str, units: list[Unit]) -> Unit:
    """One unit of several units' files: a new header two of them include is in both."""
    return Unit(name, sources=list(dict.fromkeys(f for u in units for f in u.sources)),
                headers=list(dict.fromkeys(f for u in units for f in u.headers)),
                placements={k: v for u in units for k, v in u.placements.items()})


def _warm_originals(tree, units: list[Unit], progress: Progress) -> None:
    """Compile the shipped version of every unit's .c files in batches on all cores.

    Each unit's build then finds its originals cached and holds the kernel tree only for
    its patched compile: units take turns there, one file at a time for most of them.
    A batch with a file that fails is not cached: its units compile their originals
    themselves, and the one whose file fails reports it.
    """
    sources = sorted({source for unit in units if unit.in_config for source in unit.sources})
    with pristine(tree.source_dir):
        for start in range(0, len(sources), WARM_BATCH):
            try:
                original_objects(tree, sources[start:start + WARM_BATCH])
            except BuildError as err:
                progress.note(f"originals: {err.message.splitlines()[0]}; its unit builds it")
            progress.note(f"originals: {min(start + WARM_BATCH, len(sources))}/"
                          f"{len(sources)} compiled")


def _warm_patched(tree, units: list[Unit], patches: dict[str, Path],
                  progress: Progress) -> None:
    """Compile the patched .c files of every unit that changes no header, with all their
    patches applied at once, in batches on all cores.

    The patched-object cache (compile.patched_objects) keeps each object under what it
    read of the changed files: one that read only its own unit's is the object of that
    unit built alone, and the unit finds it; one that read another unit's change serves
    no unit, and its unit compiles it alone. A patch that does not apply or a file that
    does not compile is left to its unit, which reports it.
    """
    compat = compiling.COMPAT_INCLUDE
    sets = {u.name: PatchSet.read([patches[u.name]])
            for u in units if u.in_config and u.sources and not u.headers}
    sets = {name: patchset for name, patchset in sets.items()
            if not any(fp.created for fp in patchset.files)}
    with pristine(tree.source_dir):
        compiling.save_files(tree, [path for patchset in sets.values()
                                    for path in patchset.sources])
        todo: list[str] = []
        try:
            tried = []  # a patch that failed half-way may have written: its files count
            for patchset in sets.values():
                tried.append(patchset)
                try:
                    for patch in patchset.patches:
                        compiling.apply_patch(tree, patch, dry_run=True)
                        compiling.apply_patch(tree, patch, dry_run=False)
                except BuildError:
                    continue  # its unit reports it
                own = compiling.changed_content(tree, patchset)
                todo += [source for source in patchset.sources if source.endswith(".c")
                         and not compiling.find_patched(tree, source, compat, own)]
            together = compiling.changed_content(
                tree, PatchSet(tuple(p for patchset in tried for p in patchset.patches)))
            flags = compiling.compat_flags(compat)
            for start in range(0, len(todo), WARM_BATCH):
                batch = todo[start:start + WARM_BATCH]
                built = compiling.build_objects(tree, batch, flags, missing_ok=True)
                for source, made in built.items():
                    compiling.store_patched(tree, source, made, compat, together)
                progress.note(f"patched: {start + len(batch)}/{len(todo)} compiled")
        finally:
            compiling.restore_files(tree)
            for source in todo:  # the tree's .o must not outlive the patched source
                (tree.build_dir / compiling.object_of(source)).unlink(missing_ok=True)


def _cut(tree, new_tree: Path, work: Path):
    with pristine(tree.source_dir, new_tree):  # no build may have either patched now
        diff = tree_diff(tree.source_dir, new_tree)
        units, left_out = cut_units(diff, tree.source_dir, new_tree, tree.build_dir,
                                    tree.make_args)
        patches = {}
        for unit in units:
            if unit.in_config:
                path = work / "patches" / f"{_slug(unit.name)}.patch"
                path.write_bytes(unit_patch(unit, tree.source_dir, new_tree))
                patches[unit.name] = path
    return units, left_out, patches


def _cves(records: list[dict], items) -> dict:
    """CVE ids the live units fix, and those of every other tied or untied item."""
    fixed = sorted({c for r in records if r["status"] == "live"
                    for item in r["changelog"] for c in item["cves"]})
    every = sorted({c for item in items for c in item.cves})
    return {"cves_live": fixed, "cves_not_live": sorted(set(every) - set(fixed))}


def module_name(name: str, version: str) -> str:
    """NAME_6_1_192_3: each update its own module, so the next one takes over by atomic
    replace (one loaded at a time) instead of replacing a same-named module in place."""
    return f"{name}_{_plain(version)}"[:55]


def _current(name: str, kernel, info: dict, state: str = "current") -> dict:
    """A manifest without a module: the host is current, or nothing could be made live."""
    return {"schema_version": SCHEMA_VERSION, "name": name, "kernel_release": kernel.release,
            "package_version": kernel.package_version, "distribution": kernel.distribution,
            "builder_version": __version__, "module_sha256": None,
            "update": {**info, "state": state}}


def _write(path: Path, manifest: dict) -> dict:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return manifest


def plan(request: UpdateRequest) -> dict:
    """What `update` would do, without fetching sources or building (check mode)."""
    provider = provider_for(request.kernel)
    kernel = provider.resolve(request.kernel, request.package_version)
    newer = target_version(parse_release(kernel.release).series, request.to,
                           kernel.package_version, provider.archive)
    name = module_name(request.name, newer)
    current = not version_newer(newer, kernel.package_version)
    manifest_path = request.output / f"{name}.json"
    built = manifest_path.is_file() and (request.output / f"{name}.ko").is_file()
    return {"name": name, "from": kernel.package_version, "to": newer,
            "state": "current" if current else ("built" if built else "would-build"),
            "manifest": str(manifest_path)}


__all__ = ["UpdateRequest", "update", "plan", "module_name", "source_tree", "target_version"]
