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
                                        [--runs N] [--cold-runs N] [--log FILE]
                                        [--keep DIR]
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

# A stage line of the builder's progress: "[ 980.2s] originals every unit's … (975.1s)".
STAGE_LINE = re.compile(r"^\[\s*[\d.]+s\] (\w+)\s.*\(([\d.]+)s\)$")


def run(release: str, version: str, to: str, work: Path, out: Path,
        log: Path) -> tuple[float, dict]:
    """One update; the builder's progress goes to `log` (appended), as it comes."""
    start = time.monotonic()
    with log.open("a") as progress:
        proc = subprocess.run([sys.executable, "-m", "builder", "update", "--kernel", release,
                               "--package-version", version, "--to", to, "--name",
                               "bench_update", "--output", str(out), "--work", str(work)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=progress, text=True,
                              check=False)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"update for {release} failed; its progress is in {log}")
    return took, json.loads(proc.stdout.strip().splitlines()[-1])


def stage_seconds(log: Path) -> dict[str, float]:
    """The update's own stages (not a unit's) and their seconds, from its progress."""
    found: dict[str, float] = {}
    for line in log.read_text(errors="replace").splitlines():
        match = STAGE_LINE.match(line)
        if match and match[1] in ("resolve", "prepare", "acquire", "units", "originals",
                                  "patched", "join"):
            found.setdefault(match[1], float(match[2]))  # units run stages too, later
    return found


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
    parser.add_argument("--log", type=Path, help="keep the builder's progress here")
    parser.add_argument("--keep", type=Path, help="copy the last run's manifest here")
    args = parser.parse_args()
    release = resolve(args.kernel)
    version = package_version(release)
    cold: list[float] = []
    warm: list[float] = []
    outcome: dict = {}
    with tempfile.TemporaryDirectory(prefix="klp-bench-update-") as tmp:
        log = args.log or Path(tmp) / "progress.log"
        for index in range(args.cold_runs):
            work, out = Path(tmp) / f"work{index}", Path(tmp) / f"out{index}"
            log.write_text("")
            took, outcome = run(release, version, args.to, work, out, log)
            cold.append(took)
        stages = stage_seconds(log)  # of the last cold run
        for _ in range(args.runs):
            took, _outcome = run(release, version, args.to, work, out, log)
            warm.append(took)
        manifest = json.loads(Path(outcome["manifest"]).read_text()) \
            if outcome.get("manifest") else {}
        if args.keep and manifest:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / Path(outcome["manifest"]).name).write_text(json.dumps(manifest))
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
    print("  stages of the last cold run: "
          + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in stages.items()))
    print(f"  cold (fresh work dir, compile caches as they were): median "
          f"{statistics.median(cold):.1f} s "
          f"of {len(cold)} run(s) {[round(t, 1) for t in cold]}")
    print(f"  warm (same work dir, a rerun):           median {statistics.median(warm):.1f} s "
          f"of {len(warm)} run(s) {[round(t, 1) for t in warm]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
