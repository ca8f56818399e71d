#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Header-change benchmark: a static inline changed in a header, cold and warm.

A header change rebuilds every built file that includes it, original and patched, and
compares them all. Two cases by default, for the newest 6.1 amd64 kernel:
  fdtable  tests/corpus/debian-12/header-wide-inline.patch  (close_on_exec(), ~40 files;
           bench/patches/fdtable-close-on-exec-6.12.patch on a 6.12 kernel)
  audit    bench/patches/audit-ptrace.patch                 (audit_ptrace(), ~670 files)
For each: cold — the kernel tree's cached objects (originals and patched) are moved
aside, so every file that needs it is compiled twice — and warm — all cached, a rerun —
as the median of --runs runs, with the number of files compiled and the
functions patched. Cold runs preprocess the includers first and compile only those
whose code can change; `--baseline` adds cold runs that compile every includer
(KLP_PREPROCESS_FROM set out of reach), side by side, and checks that both patch the same
functions. Beside it, for scale: what kpatch and klp-build do instead, a full kernel
build (`bench/build.py` measures that estimate for this machine).

Usage: .venv/bin/python bench/headers.py [--kernel RELEASE] [--runs N] [--cold-runs N]
                                         [--case fdtable|audit ...] [--baseline]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from builder.providers import cache_dir, provider_for  # noqa: E402
from lab.kernels import release_series, resolve  # noqa: E402

# case -> patch, or series -> patch where the header differs between kernel lines
CASES: dict[str, Path | dict[str, Path]] = {
    "fdtable": {"6.1": REPO / "tests" / "corpus" / "debian-12" / "header-wide-inline.patch",
                "6.12": REPO / "bench" / "patches" / "fdtable-close-on-exec-6.12.patch"},
    "audit": REPO / "bench" / "patches" / "audit-ptrace.patch",
}


def case_patch(name: str, release: str) -> Path:
    """The patch of a case for this kernel's line."""
    patch = CASES[name]
    if isinstance(patch, Path):
        return patch
    series = release_series(release)
    if series not in patch:
        sys.exit(f"case {name} has no patch for Linux {series}: {', '.join(patch)}")
    return patch[series]


GOAL_WARM_50 = 120.0  # seconds, warm, for a header included by about 50 built files


def build(release: str, patch: Path, out: Path, compile_all: bool = False
          ) -> tuple[float, dict]:
    env = {**os.environ, **({"KLP_PREPROCESS_FROM": str(10**9)} if compile_all else {})}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "builder", "build", "--kernel", release,
                           "--patch", str(patch),
                           "--name", "bench_" + re.sub(r"[^A-Za-z0-9]", "_", patch.stem),
                           "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, check=False, env=env)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"build of {patch.name} failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads(next(out.glob("*.json")).read_text())
    return took, manifest


def cold_build(release: str, patch: Path, out: Path, caches: list[Path], aside: list[Path],
               compile_all: bool = False) -> tuple[float, dict]:
    """A build with the kernel tree's object caches moved aside (put back after)."""
    for cache, kept in zip(caches, aside, strict=True):
        if cache.exists():
            shutil.move(str(cache), kept)
    try:
        return build(release, patch, out, compile_all)
    finally:
        for cache, kept in zip(caches, aside, strict=True):
            _merge_back(kept, cache)


def patched(manifest: dict) -> set[str]:
    """OBJECT:FUNCTION of every function a build's manifest patches."""
    return {f"{obj}:{fn['name']}" for obj, fns in manifest.get("objects", {}).items()
            for fn in fns}


def object_caches(release: str) -> list[Path]:
    """The kernel tree's caches of compiled originals and patched objects."""
    kernel = provider_for(release).resolve(release)
    build = cache_dir() / "kernels" / f"{kernel.release}_{kernel.package_version}" / "build"
    return [build / ".klp-orig", build / ".klp-patched"]


def _merge_back(aside: Path, cache: Path) -> None:
    """Put a moved-aside cache back, keeping the entries the cold run compiled."""
    if not aside.exists():
        return
    for entry in cache.iterdir() if cache.exists() else []:
        if not (aside / entry.name).exists():
            shutil.move(str(entry), aside / entry.name)
    shutil.rmtree(cache, ignore_errors=True)
    shutil.move(str(aside), cache)


def main() -> int:
    # an interrupted cold run must still put the kernel tree's caches back (finally)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", default=None, help="default: the newest 6.1 amd64")
    parser.add_argument("--runs", type=int, default=3, help="warm runs (median)")
    parser.add_argument("--cold-runs", type=int, default=1)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    parser.add_argument("--baseline", action="store_true",
                        help="also cold runs that compile every includer (no preprocessing)")
    args = parser.parse_args()
    release = args.kernel or resolve("newest-6.1-amd64")
    cases = args.case or list(CASES)
    caches = object_caches(release)
    rows = []
    with tempfile.TemporaryDirectory(prefix="klp-bench-headers-") as tmp:
        aside = [Path(tmp) / f"aside{cache.name}" for cache in caches]
        for name in cases:
            patch = case_patch(name, release)
            cold, warm, baseline = [], [], []
            manifest: dict = {}
            for run in range(args.cold_runs):
                took, manifest = cold_build(release, patch, Path(tmp) / f"{name}-c{run}",
                                            caches, aside)
                cold.append(took)
            # warm: a rerun (before the baseline, whose objects would all be cached)
            for run in range(args.runs):
                warm.append(build(release, patch, Path(tmp) / f"{name}-w{run}")[0])
            for run in range(args.cold_runs if args.baseline else 0):
                took, every = cold_build(release, patch, Path(tmp) / f"{name}-b{run}",
                                         caches, aside, compile_all=True)
                baseline.append(took)
                if patched(every) != patched(manifest):
                    sys.exit(f"{name}: compiling every includer patches "
                             f"{sorted(patched(every))}, preprocessing first "
                             f"{sorted(patched(manifest))}")
            rows.append((name, manifest.get("compiled_units", {}), sorted(patched(manifest)),
                         cold, warm, baseline))
            print(f"{name}: cold {[round(c, 1) for c in cold]} s, warm "
                  f"{[round(w, 1) for w in warm]} s"
                  + (f", cold compiling every includer {[round(b, 1) for b in baseline]} s"
                     if baseline else ""), flush=True)
    print(f"\nHeader changes for {release} (2 cores; cold: nothing cached, warm: a rerun)")
    print(f"{'case':<8} {'includers':>9} {'compiled':>8} {'cold s':>8} {'warm s':>8} "
          f"{'cold, all s':>11} {'ratio':>6}  patched functions")
    for name, units, functions, cold, warm, baseline in rows:
        compiled = units.get("changed", 0) + units.get("through_headers", 0)
        includers = compiled + units.get("same_after_preprocessing", 0)
        cold_m, warm_m = statistics.median(cold), statistics.median(warm)
        all_m = f"{'-':>11} {'-':>6}"
        if baseline:
            every = statistics.median(baseline)
            all_m = f"{every:>11.1f} {every / cold_m:>5.1f}x"
        print(f"{name:<8} {includers:>9} {compiled:>8} {cold_m:>8.1f} {warm_m:>8.1f} {all_m}  "
              f"{', '.join(functions)}")
        if 20 <= includers <= 100:
            verdict = "met" if warm_m <= GOAL_WARM_50 else "NOT met"
            print(f"         goal warm <= {GOAL_WARM_50:.0f} s for ~50 files: {verdict}")
    print("For scale: kpatch-build and klp-build rebuild the whole kernel for any patch "
          "(bench/build.py prints that estimate for this machine).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
