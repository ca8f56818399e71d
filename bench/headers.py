#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Header-change benchmark: a static inline changed in a header, cold and warm.

A header change rebuilds every built file that includes it, original and patched, and
compares them all. Two cases by default, for the newest 6.1 amd64 kernel:
  fdtable  tests/corpus/debian-12/header-wide-inline.patch  (close_on_exec(), ~40 files)
  audit    bench/patches/audit-ptrace.patch                 (audit_ptrace(), ~670 files)
For each: cold — the compiled originals of the kernel tree are moved aside, so every
file is compiled twice — and warm — originals cached, as for a second patch to the same
header — as the median of --runs runs, with the number of files compiled and the
functions patched. Beside it, for scale: what kpatch and klp-build do instead, a full
kernel build (`bench/build.py` measures that estimate for this machine).

Usage: .venv/bin/python bench/headers.py [--kernel RELEASE] [--runs N] [--cold-runs N]
                                         [--case fdtable|audit ...]
"""

from __future__ import annotations

import argparse
import json
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
from lab.kernels import resolve  # noqa: E402

CASES = {
    "fdtable": REPO / "tests" / "corpus" / "debian-12" / "header-wide-inline.patch",
    "audit": REPO / "bench" / "patches" / "audit-ptrace.patch",
}
GOAL_WARM_50 = 120.0  # seconds, warm, for a header included by about 50 built files


def build(release: str, patch: Path, out: Path) -> tuple[float, dict]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "builder", "build", "--kernel", release,
                           "--patch", str(patch), "--name", f"bench_{patch.stem}".replace(
                               "-", "_"), "--output", str(out)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"build of {patch.name} failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads(next(out.glob("*.json")).read_text())
    return took, manifest


def originals_dir(release: str) -> Path:
    kernel = provider_for(release).resolve(release)
    return cache_dir() / "kernels" / f"{kernel.release}_{kernel.package_version}" / "build" / \
        ".klp-orig"


def _merge_back(aside: Path, originals: Path) -> None:
    """Put the moved-aside originals back, keeping the ones the cold run compiled."""
    if not aside.exists():
        return
    for entry in originals.iterdir() if originals.exists() else []:
        if not (aside / entry.name).exists():
            shutil.move(str(entry), aside / entry.name)
    shutil.rmtree(originals, ignore_errors=True)
    shutil.move(str(aside), originals)


def main() -> int:
    # an interrupted cold run must still put the kernel tree's originals back (finally)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", default=None, help="default: the newest 6.1 amd64")
    parser.add_argument("--runs", type=int, default=3, help="warm runs (median)")
    parser.add_argument("--cold-runs", type=int, default=1)
    parser.add_argument("--case", action="append", choices=sorted(CASES))
    args = parser.parse_args()
    release = args.kernel or resolve("newest-6.1-amd64")
    cases = args.case or list(CASES)
    originals = originals_dir(release)
    rows = []
    with tempfile.TemporaryDirectory(prefix="klp-bench-headers-") as tmp:
        aside = Path(tmp) / "originals-aside"
        for name in cases:
            patch = CASES[name]
            cold, warm = [], []
            manifest: dict = {}
            for run in range(args.cold_runs):
                if originals.exists():  # every original compiled again
                    shutil.move(str(originals), aside)
                try:
                    took, manifest = build(release, patch, Path(tmp) / f"{name}-c{run}")
                finally:
                    _merge_back(aside, originals)
                cold.append(took)
            for run in range(args.runs):
                took, manifest = build(release, patch, Path(tmp) / f"{name}-w{run}")
                warm.append(took)
            units = manifest.get("compiled_units", {})
            functions = [f"{f['name']}" for fns in manifest["objects"].values() for f in fns]
            rows.append((name, units, functions, cold, warm, manifest["stage_seconds"]))
            print(f"{name}: cold {[round(c, 1) for c in cold]} s, warm "
                  f"{[round(w, 1) for w in warm]} s", flush=True)
    print(f"\nHeader changes for {release} (2 cores; cold: every file compiled twice, "
          "warm: originals cached)")
    print(f"{'case':<8} {'files':>6} {'cold s':>8} {'warm s':>8} {'s/file warm':>11}  "
          "patched functions")
    for name, units, functions, cold, warm, _stages in rows:
        files = units.get("changed", 0) + units.get("through_headers", 0)
        cold_m, warm_m = statistics.median(cold), statistics.median(warm)
        print(f"{name:<8} {files:>6} {cold_m:>8.1f} {warm_m:>8.1f} {warm_m / max(files, 1):>11.2f}"
              f"  {', '.join(functions)}")
        if 20 <= files <= 100:
            verdict = "met" if warm_m <= GOAL_WARM_50 else "NOT met"
            print(f"         goal warm <= {GOAL_WARM_50:.0f} s for ~50 files: {verdict}")
    print("For scale: kpatch-build and klp-build rebuild the whole kernel for any patch "
          "(bench/build.py prints that estimate for this machine).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
