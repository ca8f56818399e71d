#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Update benchmark: `python3 -m builder update` for one host, cold and warm.

For a kernel some uploads behind the newest of its line (default: the amd64 kernel two
uploads behind, the lab's `older-2-6.1-amd64`), the update to `--to` (default latest):
  cold — a fresh work and output directory: every fix unit is built alone again and the
         module is linked; the kernel's prepared tree and compiled originals stay cached,
         as on any controller that built for this kernel before (`bench/headers.py`
         measures a cold originals cache)
  warm — the same directories again: unit results and the module are reused, what a
         rerun of the playbook costs
each as the median of --runs runs, with the units by status, the reasons of those that
need a reboot (judged right or gap as bench/realfixes.py judges them), the functions
patched and the CVE ids covered.

Usage: .venv/bin/python bench/update.py [--kernel RELEASE|ALIAS] [--to VERSION]
                                        [--runs N] [--cold-runs N]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.realfixes import NO_COMPILE, REASONS, judgement  # noqa: E402
from lab.kernels import package_version, resolve  # noqa: E402


def run(release: str, version: str, to: str, work: Path, out: Path) -> tuple[float, dict]:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "builder", "update", "--kernel", release,
                           "--package-version", version, "--to", to, "--name", "bench_update",
                           "--output", str(out), "--work", str(work)],
                          cwd=REPO, capture_output=True, text=True, check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"update for {release} failed:\n{proc.stderr[-3000:]}")
    return took, json.loads(proc.stdout.strip().splitlines()[-1])


def reboot_reasons(units: list[dict]) -> dict[str, int]:
    """needs-reboot units by reason key (as bench/realfixes.py names them)."""
    counts: dict[str, int] = {}
    for unit in units:
        if unit.get("status") != "needs-reboot":
            continue
        reason = unit.get("reason", "")
        key = "does not compile alone" if NO_COMPILE.search(reason) else next(
            (k for pattern, k, _judged, _why in REASONS if re.search(pattern, reason)),
            reason[:70])
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda item: -item[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", default="older-2-6.1-amd64")
    parser.add_argument("--to", default="latest")
    parser.add_argument("--runs", type=int, default=3, help="warm runs (median)")
    parser.add_argument("--cold-runs", type=int, default=1)
    args = parser.parse_args()
    release = resolve(args.kernel)
    version = package_version(release)
    cold: list[float] = []
    warm: list[float] = []
    outcome: dict = {}
    with tempfile.TemporaryDirectory(prefix="klp-bench-update-") as tmp:
        for index in range(args.cold_runs):
            work, out = Path(tmp) / f"work{index}", Path(tmp) / f"out{index}"
            took, outcome = run(release, version, args.to, work, out)
            cold.append(took)
        for _ in range(args.runs):
            took, _outcome = run(release, version, args.to, work, out)
            warm.append(took)
        manifest = json.loads(Path(outcome.get("manifest") or "/dev/null").read_text()) \
            if outcome.get("manifest") else {}
    functions = sum(len(v) for v in manifest.get("objects", {}).values())
    print(f"update {release} ({version}) -> {outcome['to']}: state {outcome['state']}")
    print(f"  units: {outcome['units']}; functions patched: {functions}; CVEs live: "
          f"{outcome['cves_live']}, not live: {outcome['cves_not_live']}")
    units = manifest.get("update", {}).get("units", [])
    joined = [u["name"] for u in units if u.get("status") == "live" and u.get("joined")]
    if joined:
        print(f"    live only together with another unit: {len(joined)} ({', '.join(joined)})")
    for key, count in reboot_reasons(units).items():
        verdict = "gap" if key == "does not compile alone" else judgement(key)[0]
        print(f"    needs-reboot {count:4d}  [{verdict}] {key}")
    print(f"  cold (fresh work dir, compile caches as they were): median "
          f"{statistics.median(cold):.1f} s "
          f"of {len(cold)} run(s) {[round(t, 1) for t in cold]}")
    print(f"  warm (same work dir, a rerun):           median {statistics.median(warm):.1f} s "
          f"of {len(warm)} run(s) {[round(t, 1) for t in warm]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
