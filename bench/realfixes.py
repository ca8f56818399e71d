#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Real fixes benchmark: Debian's own kernel updates, cut into patches, built and proven.

For each pair of package versions of one Debian kernel line (older → newer), the C and
header difference of the two `linux-source` trees is cut into fix units the way a user
would patch (builder/update/units.py: the changed .c files of one directory with the changed
headers they include most directly). Each unit becomes one `diff -u` patch, built with
`python3 -m builder build` for the kernel whose image package has the older version,
and timed. A fixed, seeded sample of the built units is then proven on one lab VM
running that kernel (tests/vm/files/run_cases.sh): the module loads, the transition
completes, every function of the manifest is listed in tracefs `enabled_functions`
while it is live and gone after the unload, the unload is clean and the kernel log has
no WARNING/BUG/Oops.

Prints per pair: units, not in this config, does not compile against the older tree,
refused (by reason, with the units), built, proven live on the VM, broken; build time
per unit (median, max) and wall times.

Usage: .venv/bin/python bench/realfixes.py [--from V --to V] [--flavour amd64]
           [--sample N] [--build-sample N] [--only DIR/] [--no-vm] [--units-only]
           [--max-files N] [--jobs N] [--json FILE] [--keep DIR]
Default pairs: 6.1.192-1 → 6.1.192-2, 6.1.192-2 → 6.1.192-3 and 6.1.190-1 → 6.1.192-1.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from builder.errors import BuildError  # noqa: E402
from builder.providers import provider_for  # noqa: E402
from builder.providers.archive import Archive  # noqa: E402
from builder.stages.compile import pristine  # noqa: E402
from builder.stages.prepare import prepare  # noqa: E402
from builder.update import source_tree  # noqa: E402
from builder.update.units import Unit, cut_units, header_reach, tree_diff, unit_patch  # noqa: E402

DEFAULT_PAIRS = [("6.1.192-1", "6.1.192-2"), ("6.1.192-2", "6.1.192-3"),
                 ("6.1.190-1", "6.1.192-1")]
SEED = 9
# Refusal messages of the builder -> (a short reason key, its judgement, why); the first
# pattern that matches wins. A reason is "right" when no live patch can do it safely
# without code written by hand (a callback, a shadow variable) or a reboot, a "gap" when
# the builder could do better; None where no run has judged it yet (printed as a gap).
RIGHT, GAP = "right", "gap"
REASONS = [
    (r"has no ftrace entry", "no ftrace entry (notrace, or kernel/trace/)", RIGHT,
     "livepatch redirects through ftrace; a function without an ftrace site cannot be"),
    (r"cannot be traced by", "function in a section ftrace cannot trace (noinstr)", RIGHT,
     "noinstr code runs where tracing is not allowed"),
    (r"changes __init code", "changes __init code", RIGHT,
     "init code already ran (a built-in) or is gone; --skip-init-changes builds the rest"),
    (r"initial value of existing data", "changes the initial value of existing data", RIGHT,
     "the running kernel's variable keeps its value; a callback must change it"),
    (r"changes read-only data .* holds? its address", "changes read-only data other data "
     "points to (a device ID table)", RIGHT, "the running kernel keeps the registered table; "
     "a new ID needs the driver reloaded"),
    (r"changes the layout of", "changes a struct/union layout", RIGHT,
     "objects the kernel holds keep the old layout; needs a shadow variable"),
    (r"no functional change", "no functional change in the built objects", RIGHT,
     "nothing to patch: the running code already is the fix"),
    (r"built files include the changed header", "header included by too many built files",
     GAP, "each file whose code may change is compiled twice, each includer preprocessed "
     "twice; --max-files keeps it bounded"),
    (r"differs from the shipped", "rebuilt original differs from the shipped kernel", None,
     None),
    (r"not in the symbol table of the shipped", "function not in the shipped symbol table",
     None, None),
    (r"is not a function of the rebuilt", "function not in the rebuilt object", None, None),
    (r"identical copies of", "identical copies: which one is this file's", None, None),
    (r"is a weak function", "weak function", GAP,
     "the shipped image could say which definition it linked"),
    (r"exists \d+ times in .* cannot tell", "duplicate symbol name, position unclear", GAP,
     "kallsyms order did not decide"),
    (r"needs new contents in", "new contents in a special section", GAP,
     "a new entry the builder does not make"),
    (r"needs a \S+ entry for", "jump-label entry for a static key of a patched module",
     RIGHT, "insmod reads __jump_table before livepatch can resolve a module's symbols (kpatch "
     "refuses the same); tracepoint and pr_debug sites are left off instead; the source "
     "remedy is static_key_enabled()"),
    (r"cannot resolve a reference", "reference the builder cannot resolve", GAP,
     "a symbol of another object kind"),
    (r"is not in the symbol table of", "symbol missing from the target's symbol table", None,
     None),
    (r"would not load safely: \.altinstr\S* .*resolves only when it patches",
     "alternative-instruction entry naming a symbol of a patched module", RIGHT,
     "the kernel applies a module's alternatives when it loads it, before livepatch can "
     "resolve another module's symbols (the same as the jump-label case)"),
    (r"would not load safely", "check stage: the module would not load safely", None, None),
    (r"neither exported nor", "link: symbols neither exported nor resolvable", None, None),
    (r"kbuild failed to link", "link: kbuild failed", None, None),
    (r"only C sources and headers", "patch changes a non-C file", RIGHT,
     "assembly, linker scripts or Kconfig need a reboot"),
    (r"patch (creates|deletes|renames|copies)", "patch creates/deletes/renames a file", GAP,
     "a new file's functions could join the patch"),
    (r"only with fuzz|does not apply", "patch does not apply to the older tree", None, None),
]
JUDGED = {key: (judged or GAP, why or "not judged yet") for _p, key, judged, why in REASONS}


def judgement(reason: str) -> tuple[str, str]:
    """(right or gap, why) of a reason key; a reason no run has judged counts as a gap."""
    return JUDGED.get(reason, (GAP, "not judged yet"))


NOT_IN_CONFIG = re.compile(r"not built in this configuration|kbuild built nothing for it")
NO_COMPILE = re.compile(r"compiling \S+\.o failed")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- kernels and trees
def older_release(version: str, flavour: str) -> str:
    """The 6.1 kernel release whose image package has `version`."""
    from lab.kernels import archive_releases, release_flavour, release_series

    series = ".".join(version.split(".")[:2])
    for release in archive_releases():
        if release_series(release) != series or release_flavour(release) != flavour:
            continue
        image = f"linux-image-{release}"
        offered = Archive.for_kernel(release).madison(image, f"{image}-unsigned")
        if any(version in versions for versions in offered.values()):
            return release
    raise SystemExit(f"the archive has no {flavour} kernel image of version {version}")


# ---------------------------------------------------------------- building
def classify(proc: subprocess.CompletedProcess) -> tuple[str, str, str, str]:
    """(status, stage, reason key, first line of the error) of one builder run."""
    err = proc.stderr
    if proc.returncode == 0:
        return "built", "", "", ""
    found = re.search(r"^error: ", err, re.M)  # the builder's, not a compiler's
    if "Traceback (most recent call last)" in err or proc.returncode != 1 or not found:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit {proc.returncode}"
        return "broken", "crash", "builder crashed", last
    text = err[found.end():]
    text = text.split("\n  hint:", 1)[0]
    head = text.splitlines()[0]
    stage = head.split(":", 1)[0]
    if NOT_IN_CONFIG.search(text):
        return "not-in-config", stage, "not built in this configuration", head
    if stage == "compile" and NO_COMPILE.search(head):
        first = next((line.strip() for line in text.splitlines()[1:] if "error" in line),
                     head)
        return "no-compile", stage, "does not compile against the older tree", first
    for pattern, key, _judged, _why in REASONS:
        if re.search(pattern, text):
            return "refused", stage, key, head
    return "refused", stage, re.sub(r"\S*/\S*", "…", head)[:80], head


INIT_REASON = "changes __init code"


def build_unit(rec: dict, release: str, version: str, root: Path, init_retry: bool,
               max_files: int | None = None) -> dict:
    """Run the builder on one unit's patch; fill in status, reason and timing.

    A unit refused only for changed __init code is built again the way the refusal's hint
    says, with --skip-init-changes (the runtime part alone); the first refusal is kept in
    `first_refusal` and `init_skipped` is set when the retry built.
    """
    out = root / "out" / rec["module"]
    argv = [sys.executable, "-m", "builder", "build", "--kernel", release,
            "--package-version", version, "--patch", rec["patch"], "--name", rec["module"],
            "--output", str(out), "--work", str(root / "work" / rec["module"])]
    if max_files:
        argv += ["--max-files", str(max_files)]
    start = time.monotonic()
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=7200,
                          check=False)
    rec["build_seconds"] = round(time.monotonic() - start, 1)
    rec["status"], rec["stage"], rec["reason"], rec["error"] = classify(proc)
    if init_retry and rec["reason"] == INIT_REASON:
        rec["first_refusal"] = rec["error"]
        start = time.monotonic()
        proc = subprocess.run(argv + ["--skip-init-changes"], cwd=REPO, capture_output=True,
                              text=True, timeout=7200, check=False)
        rec["retry_seconds"] = round(time.monotonic() - start, 1)
        rec["build_seconds"] = round(rec["build_seconds"] + rec["retry_seconds"], 1)
        rec["status"], rec["stage"], rec["reason"], rec["error"] = classify(proc)
        rec["init_skipped"] = rec["status"] == "built"
    if rec["status"] == "not-in-config":  # kbuild placement said it is built: a gap
        included = [h for h in rec["headers"] if h.endswith(".c") and h in rec["error"]]
        rec["status"] = "refused"
        rec["reason"] = ("a .c file #included by another .c is taken for an unbuilt object"
                         if included else "builder says not built, kbuild placement says built")
    if rec["status"] == "broken":
        rec["stderr_tail"] = proc.stderr[-3000:]
    if rec["status"] == "built":
        manifest = json.loads((out / f"{rec['module']}.json").read_text())
        rec["objects"] = {obj: sorted({f["name"] for f in fns})
                          for obj, fns in manifest["objects"].items()}
        rec["functions"] = sum(len(v) for v in manifest["objects"].values())
        rec["new_functions"] = len(manifest.get("new_functions", []))
        rec["stage_seconds"] = manifest.get("stage_seconds", {})
        rec["notes"] = manifest.get("notes", [])
        rec["ko"] = str(out / f"{rec['module']}.ko")
    shutil.rmtree(root / "work" / rec["module"], ignore_errors=True)
    return rec


# ---------------------------------------------------------------- the VM part
CHECK = """#!/bin/sh
# Passes iff every function of the manifest is live: listed in enabled_functions.
f=/sys/kernel/tracing/enabled_functions
[ -r "$f" ] || exit 1
{tests}
exit 0
"""
SETUP = """#!/bin/sh
set -e
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing
{modprobes}
"""


def check_script(objects: dict[str, list[str]]) -> str:
    tests = []
    for obj, names in sorted(objects.items()):
        for name in names:
            if obj == "vmlinux":  # "name (1) R I ..." ; a module's: "name [obj] (1) ..."
                test = f"awk '$1 == \"{name}\" && $2 ~ /^\\(/ {{ok=1}} END {{exit !ok}}' \"$f\""
            else:
                test = (f"awk '$1 == \"{name}\" && $2 == \"[{obj}]\" {{ok=1}} END {{exit !ok}}'"
                        " \"$f\"")
            tests.append(f"{test} || exit 1")
    return CHECK.format(tests="\n".join(tests))


def modules_that_load(vm, modules: list[str]) -> dict[str, str]:
    """modprobe each module on the VM; module -> "" when it loaded, else modprobe's error."""
    if not modules:
        return {}
    script = "; ".join(f"modprobe {m} >/tmp/mp 2>&1 && echo 'MP {m} OK' || "
                       f"echo \"MP {m} $(tr '\\n' ' ' </tmp/mp)\"" for m in modules)
    out = vm.ssh(script, timeout=900).stdout
    result = dict.fromkeys(modules, "modprobe printed nothing")
    for line in out.splitlines():
        if line.startswith("MP "):
            _mp, name, rest = (line + " ").split(" ", 2)
            result[name] = "" if rest.strip() == "OK" else rest.strip() or "failed"
    return result


def prove_on_vm(vm, inventory: Path, root: Path, recs: list[dict]) -> dict[str, str]:
    """Run the units' modules on the VM with run_cases.sh; module name -> result lines."""
    from tests.vm.corpus import play_cases

    staged = root / "stage"
    shutil.rmtree(staged, ignore_errors=True)
    for rec in recs:
        target = staged / rec["module"]
        target.mkdir(parents=True)
        shutil.copy(rec["ko"], target / "patch.ko")
        (target / "check").write_text(check_script(rec["objects"]))
        modprobes = "\n".join(f"modprobe {m}" for m in sorted(rec["objects"])
                              if m != "vmlinux")
        (target / "setup").write_text(SETUP.format(modprobes=modprobes))
    play, results = play_cases(vm, inventory, staged,
                               [f"{r['module']}:build" for r in recs], timeout=3600)
    if play.returncode != 0 or not results:  # e.g. the guest died: no case has a result
        tail = (play.stdout[-3000:] + play.stderr[-1000:]).strip()
        for rec in recs:
            results.setdefault(rec["module"], f"FAIL: no result, the play failed:\n{tail}\n")
    return results


def vm_part(release: str, recs: list[dict], sample: int, root: Path) -> dict:
    """Boot the older kernel, prove a seeded sample of the built units; returns a summary."""
    from lab import Lab

    built = [r for r in recs if r["status"] == "built"]
    order = sorted(built, key=lambda r: r["name"])
    random.Random(SEED).shuffle(order)
    t0 = time.monotonic()
    lab = Lab(state_dir=Path("/tmp/lab-realfixes"))
    summary: dict = {"release": release}
    try:
        vm = lab.up([release])[0]
        summary["boot_seconds"] = round(time.monotonic() - t0, 1)
        # Only modules of the units that could be in the sample are tried (in seeded order).
        loads: dict[str, str] = {}
        chosen: list[dict] = []
        for rec in order:
            if len(chosen) >= sample:
                break
            mods = [m for m in rec["objects"] if m != "vmlinux" and m not in loads]
            loads.update(modules_that_load(vm, mods))
            failed = {m: loads[m] for m in rec["objects"] if m != "vmlinux" and loads[m]}
            if failed:
                rec["vm"] = "not provable here"
                rec["vm_detail"] = "; ".join(f"modprobe {m}: {e}" for m, e in failed.items())
                continue
            chosen.append(rec)
        summary["modules_tried"] = len(loads)
        t1 = time.monotonic()
        results = prove_on_vm(vm, lab.inventory_path, root, chosen)
        summary["run_seconds"] = round(time.monotonic() - t1, 1)
        for rec in chosen:
            text = results.get(rec["module"], "no result\n")
            rec["vm_detail"] = text.strip()
            rec["vm"] = "live" if text.startswith("OK:") else "broken"
            if rec["vm"] == "live":
                rec["status"] = "live"
            else:
                rec["status"] = "broken"
    finally:
        lab.down()
    summary["wall_seconds"] = round(time.monotonic() - t0, 1)
    summary["sample"] = len([r for r in recs if r.get("vm") in ("live", "broken")])
    return summary


# ---------------------------------------------------------------- one pair
def run_pair(args, old_version: str, new_version: str, root: Path) -> dict:
    t0 = time.monotonic()
    release = older_release(old_version, args.flavour)
    head = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, check=False).stdout.strip()
    result: dict = {"from": old_version, "to": new_version, "release": release,
                    "builder_tree": head}
    say(f"== {old_version} -> {new_version}: older kernel {release}")
    provider = provider_for(release)
    try:
        kernel = provider.resolve(release, old_version)
        tree = prepare(provider.acquire(kernel))
    except BuildError as err:
        result["skipped"] = f"the builder cannot prepare {release} ({old_version}): " + \
            str(err).splitlines()[0]
        say(result["skipped"])
        return result
    new, _changelog = source_tree(new_version, ".".join(new_version.split(".")[:2]),
                                  provider.archive)
    with pristine(tree.source_dir, new):  # no build may have either patched now
        diff = tree_diff(tree.source_dir, new)
        units, left_out = cut_units(diff, tree.source_dir, new, tree.build_dir,
                                    tree.make_args)
        numbered = list(enumerate(units))  # module names do not depend on --only
        if args.only:
            numbered = [(i, u) for i, u in numbered
                        if any(f.startswith(tuple(args.only)) for f in u.files + u.unbuilt)]
        patches = {u.name: unit_patch(u, tree.source_dir, new) for _i, u in numbered}
    result.update(changed_files=len(diff.changed), added_files=len(diff.added),
                  deleted_files=len(diff.deleted), left_out=left_out)
    pair_dir = root / f"{old_version}_{new_version}"
    shutil.rmtree(pair_dir, ignore_errors=True)
    (pair_dir / "patches").mkdir(parents=True)
    recs = []
    for index, unit in numbered:
        recs.append(unit_record(unit, index, patches[unit.name], pair_dir, tree))
    result["units"] = recs
    if args.units_only:
        return result
    todo = [r for r in recs if r["status"] == "todo"]
    if args.build_sample is not None and len(todo) > args.build_sample:
        random.Random(SEED).shuffle(todo)
        for rec in todo[args.build_sample:]:
            rec["status"] = "not built (outside --build-sample)"
        todo = sorted(todo[:args.build_sample], key=lambda r: r["index"])
    say(f"{len(recs)} units, {len(todo)} to build")
    t_build = time.monotonic()
    done = 0

    def one(rec: dict) -> dict:
        nonlocal done
        build_unit(rec, release, old_version, pair_dir, not args.no_init_retry, args.max_files)
        done += 1
        say(f"[{done}/{len(todo)}] {rec['name']}: {rec['status']} {rec['reason']} "
            f"({rec['build_seconds']} s)")
        return rec
    # The first build alone fills the kernel's caches (symbol table, layout probe) that
    # concurrent builds would otherwise race to write; kbuild answers and the include
    # graph were filled above. The compile stage itself holds the tree's lock.
    for rec in todo[:1]:
        one(rec)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        list(pool.map(one, todo[1:]))
    result["build_wall_seconds"] = round(time.monotonic() - t_build, 1)
    if not args.no_vm and any(r["status"] == "built" for r in recs):
        try:
            result["vm"] = vm_part(release, recs, args.sample, pair_dir)
        except Exception as err:
            result["vm"] = {"error": f"{type(err).__name__}: {err}"}
            say(f"VM part failed: {err}")
    result["wall_seconds"] = round(time.monotonic() - t0, 1)
    return result


def unit_record(unit: Unit, index: int, patch: bytes, pair_dir: Path, tree) -> dict:
    slug = re.sub(r"[^a-z0-9]+", "_", unit.name.lower()).strip("_")[-36:].strip("_")
    module = f"klp_rf{index:03d}_{slug}"
    path = pair_dir / "patches" / f"{module}.patch"
    path.write_bytes(patch)
    rec = {"index": index, "name": unit.name, "module": module, "patch": str(path),
           "sources": unit.sources, "headers": unit.headers, "unbuilt": unit.unbuilt,
           "placements": unit.placements, "patch_lines": patch.count(b"\n"),
           "status": "todo", "stage": "", "reason": "", "error": ""}
    if not unit.in_config:
        rec.update(status="not-in-config", reason="not built in this configuration",
                   error=unit.reason)
    else:
        args = (unit, tree.source_dir, tree.build_dir, tree.make_args)
        rec["header_reach"] = header_reach(*args)
        if not unit.sources and not header_reach(*args, guessed=False):
            rec.update(status="not-in-config", reason="not built in this configuration",
                       error="no file built in this configuration includes "
                             + ", ".join(unit.headers))
    return rec


# ---------------------------------------------------------------- report
def report(result: dict, verbose: bool) -> None:
    head = f"{result['from']} -> {result['to']} (older kernel {result['release']})"
    if "skipped" in result:
        print(f"{head}: not run: {result['skipped']}")
        return
    recs = result["units"]
    print(f"{head}: {result['changed_files']} changed .c/.h files in scope, "
          f"{result['added_files']} added, {result['deleted_files']} deleted")
    left = result["left_out"]
    if left:
        print(f"  files in no unit: {len(left)} ("
              + "; ".join(f"{k}: {v}" for k, v in sorted(left.items())[:6])
              + (" …" if len(left) > 6 else "") + ")")
    by = {}
    for rec in recs:
        by.setdefault(rec["status"], []).append(rec)
    count = {k: len(v) for k, v in by.items()}
    vm_broken = [r for r in by.get("broken", []) if "vm" in r]  # built, failed on the VM
    crashed = [r for r in by.get("broken", []) if "vm" not in r]  # the builder crashed
    built = count.get("built", 0) + count.get("live", 0) + len(vm_broken)
    print(f"  {'units':<44}{len(recs):>6}")
    print(f"  {'not in this config':<44}{count.get('not-in-config', 0):>6}")
    skipped = count.get("not built (outside --build-sample)", 0)
    if skipped:
        print(f"  {'not built in this run (--build-sample)':<44}{skipped:>6}")
    print(f"  {'does not compile against the older tree':<44}{count.get('no-compile', 0):>6}")
    refused = by.get("refused", [])
    print(f"  {'refused':<44}{len(refused):>6}")
    reasons: dict[str, list[str]] = {}
    for rec in refused:
        reasons.setdefault(rec["reason"], []).append(rec["name"])
    for reason, names in sorted(reasons.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        shown = ", ".join(names[:8]) + (f", … (+{len(names) - 8})" if len(names) > 8 else "")
        judged, why = judgement(reason)
        print(f"    {len(names):>4}  [{judged}] {reason}: {shown}")
        print(f"          ({why})")
    print(f"  {'built':<44}{built:>6}")
    retried = [r for r in recs if r.get("init_skipped")]
    if retried:
        print(f"  {'  only with --skip-init-changes':<44}{len(retried):>6}   (first refused: "
              f"{INIT_REASON}: {', '.join(r['name'] for r in retried)})")
    vm = result.get("vm", {})
    if vm.get("error"):
        print(f"  VM part failed: {vm['error']}")
    elif vm:
        unprovable = [r for r in recs if r.get("vm") == "not provable here"]
        print(f"  {'VM sample (seed ' + str(SEED) + ')':<44}{vm['sample']:>6}"
              f"   on {vm['release']}, wall {vm['wall_seconds'] / 60:.1f} min "
              f"(boot {vm.get('boot_seconds', 0):.0f} s, cases {vm.get('run_seconds', 0):.0f} s)")
        print(f"  {'  proven live':<44}{count.get('live', 0):>6}")
        if unprovable:
            print(f"  {'  skipped: a module does not load on the VM':<44}{len(unprovable):>6}"
                  f"   ({', '.join(r['name'] for r in unprovable)})")
    broken = by.get("broken", [])
    print(f"  {'broken':<44}{len(broken):>6}")
    for rec in broken:
        print(f"    {rec['name']} ({rec['module']}): {rec.get('error') or ''}")
        for line in (rec.get("vm_detail") or rec.get("stderr_tail") or "").splitlines()[-20:]:
            print(f"      {line}")
    compiling = built + len(refused) + len(crashed)
    if compiling:
        good = built - len(vm_broken)
        print(f"  built and not broken / (in config and compiling): {good}/{compiling} = "
              f"{100 * good / compiling:.1f} %")
        empty = len(reasons.get("no functional change in the built objects", []))
        if empty and compiling > empty:
            print(f"    leaving out the {empty} with no functional change in the built objects:"
                  f" {good}/{compiling - empty} = {100 * good / (compiling - empty):.1f} %")
        rightly = sum(len(v) for k, v in reasons.items() if judgement(k)[0] == RIGHT)
        if rightly and compiling > rightly:
            print(f"    leaving out the {rightly} refused for a right reason (above): "
                  f"{good}/{compiling - rightly} = {100 * good / (compiling - rightly):.1f} %")
        if retried:
            print(f"    without the --skip-init-changes retries: {good - len(retried)}/"
                  f"{compiling} = {100 * (good - len(retried)) / compiling:.1f} %")
    times = [r["build_seconds"] for r in recs if "build_seconds" in r]
    if times:
        slowest = max((r for r in recs if "build_seconds" in r), key=lambda r: r["build_seconds"])
        print(f"  build time per unit: median {statistics.median(times):.1f} s, max "
              f"{max(times):.1f} s ({slowest['name']}), {len(times)} builds in "
              f"{result['build_wall_seconds'] / 60:.1f} min")
    if "wall_seconds" in result:
        print(f"  wall time: {result['wall_seconds'] / 60:.1f} min")
    if verbose:
        for rec in recs:
            if rec["status"] in ("refused", "no-compile"):
                print(f"    [{rec['status']}] {rec['name']}: {rec['error']}")


def list_units(result: dict) -> None:
    print(f"{result['from']} -> {result['to']} (older kernel {result['release']}): "
          f"{len(result.get('units', []))} units")
    for rec in result.get("units", []):
        where = "not in config" if rec["status"] == "not-in-config" else \
            f"{len(rec['sources'])} .c, {len(rec['headers'])} .h, " \
            f"headers reach {rec.get('header_reach', 0)} built files"
        print(f"  {rec['module']:<52} {where:<48} {rec['patch_lines']:>6} patch lines")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--from", dest="old", metavar="VERSION", help="older package version")
    ap.add_argument("--to", dest="new", metavar="VERSION", help="newer package version")
    ap.add_argument("--flavour", default="amd64")
    ap.add_argument("--sample", type=int, default=40, help="built units proven on the VM")
    ap.add_argument("--build-sample", type=int, metavar="N",
                    help="build only a seeded sample of N units (default: every unit)")
    ap.add_argument("--only", action="append", metavar="PREFIX",
                    help="only units with a file under PREFIX (e.g. fs/); repeatable")
    ap.add_argument("--no-vm", action="store_true", help="build only")
    ap.add_argument("--units-only", action="store_true", help="only list the units")
    ap.add_argument("--no-init-retry", action="store_true",
                    help="do not rebuild units refused for __init code with "
                         "--skip-init-changes")
    ap.add_argument("--max-files", type=int, metavar="N",
                    help="the builder's --max-files: built files a unit's headers may reach")
    ap.add_argument("--jobs", type=int, default=1,
                    help="builder runs at a time (their compile stages still take turns on "
                         "the tree's lock, and a unit's time then includes that wait)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="save the raw results")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep patches and modules in DIR (default: a temporary directory)")
    ap.add_argument("--verbose", action="store_true", help="list every refusal's message")
    args = ap.parse_args()
    if bool(args.old) != bool(args.new):
        ap.error("--from and --to go together")
    pairs = [(args.old, args.new)] if args.old else DEFAULT_PAIRS
    tmp = None
    if args.keep:
        root = args.keep
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="klp-realfixes-")
        root = Path(tmp.name)
    results = []
    try:
        for old, new in pairs:
            result = run_pair(args, old, new, root)
            results.append(result)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1) + "\n")
            if args.units_only:
                list_units(result)
            else:
                report(result, args.verbose)
            sys.stdout.flush()
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    main()
