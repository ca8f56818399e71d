#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Build benchmark: the corpus cmdline case, cold and warm, against a full kernel build.

Prints, for one kernel release:
  cold  — packages cached, kernel tree not prepared (the prepared tree is moved aside)
  warm  — everything prepared, only the patch's own work
  root  — for a kernel whose compiler the controller lacks (Debian 13's gcc-14 on a
          Debian 12 controller): one cold build that also makes the build root
          (builder/toolchain.py; the cached root is moved aside for it)
as the median of several runs, the peak memory of the builder, and side by side
a measured estimate of `make vmlinux` for the same kernel and configuration:
the mean compile time of a random sample of vmlinux translation units times
their number, divided by the cores. The ratio is the point of the product.

Usage: .venv/bin/python bench/build.py [--kernel RELEASE] [--runs N] [--sample N]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from builder.providers import cache_dir, provider_for  # noqa: E402

PATCH = REPO.parent / "shared" / "klp-corpus" / "debian-12" / "cmdline-suffix.patch"


def run_build(release: str, out: Path) -> tuple[float, int]:
    """One `python3 -m builder build`; returns (seconds, peak RSS of the builder in KiB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "builder", "build", "--kernel", release,
                           "--patch", str(PATCH), "--name", "bench-cmdline", "--output",
                           str(out)], cwd=REPO, capture_output=True, text=True)
    took = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"build failed:\n{proc.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return took, max(peak, before)


def prepared_tree(release: str) -> Path:
    kernel = provider_for(release).resolve(release)
    return cache_dir() / "kernels" / f"{kernel.release}_{kernel.package_version}" / "build"


def toolchain(release: str) -> tuple[list[str], str]:
    """The build's own toolchain prefix and compiler for the kernel (builder/toolchain.py)."""
    from builder.stages.prepare import read_config
    from builder.toolchain import toolchain_for

    kernel = provider_for(release).resolve(release)
    config = cache_dir() / "kernels" / f"{kernel.release}_{kernel.package_version}" / "pkgs" \
        / "boot" / f"config-{release}"
    return toolchain_for(read_config(config), release)


def full_build_estimate(release: str, build_dir: Path, sample: int, prefix: list[str], cc: str
                        ) -> tuple[float, int, float]:
    """(estimated seconds, translation units, mean seconds per unit) for make vmlinux."""
    from builder.stages.prepare import make_args

    source = Path(os.readlink(build_dir / "source")) if (build_dir / "source").is_symlink() \
        else None
    if source is None:
        sys.exit(f"{build_dir} is not an O= build directory of a prepared tree")
    make = make_args(source, build_dir, cc, release, prefix)  # the builder's own make command
    dry = subprocess.run([*make, "-n", "-s", "vmlinux"], capture_output=True, text=True)
    units = sorted(set(re.findall(r" -c -o (\S+\.o) \S+\.c", dry.stdout)))
    if not units:
        sys.exit(f"could not list the translation units of make vmlinux:\n{dry.stderr[-2000:]}")
    picked = random.Random(1).sample(units, min(sample, len(units)))
    times = []
    for obj in picked:
        target = os.path.relpath(obj, build_dir) if obj.startswith("/") else obj
        start = time.monotonic()
        subprocess.run([*make, "-s", target], capture_output=True)
        times.append(time.monotonic() - start)
        (build_dir / target).unlink(missing_ok=True)
    mean = statistics.mean(times)
    return mean * len(units) / (os.cpu_count() or 1), len(units), mean


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel", help="release (default: the newest 6.1 amd64)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sample", type=int, default=12, help="units compiled for the estimate")
    args = ap.parse_args()
    release = args.kernel or _newest_61()
    tree = prepared_tree(release)
    print(f"kernel {release}, patch {PATCH.name}, {args.runs} runs each, "
          f"{os.cpu_count()} cores", flush=True)
    with tempfile.TemporaryDirectory(prefix="klp-bench-") as tmp:
        out = Path(tmp)
        run_build(release, out)  # make sure packages are cached and the tree exists
        cold, warm, peaks = [], [], []
        for _ in range(args.runs):
            aside = tree.with_name(tree.name + ".bench-aside")
            shutil.rmtree(aside, ignore_errors=True)
            tree.rename(aside)
            try:
                took, peak = run_build(release, out)
            finally:
                shutil.rmtree(aside, ignore_errors=True)
            cold.append(took)
            peaks.append(peak)
        cold_m = statistics.median(cold)
        print(f"  cold build (packages cached, tree not prepared): median {cold_m:6.1f} s  "
              f"(goal <= 60 s)  runs: {', '.join(f'{t:.1f}' for t in cold)}", flush=True)
        for _ in range(args.runs):
            took, peak = run_build(release, out)
            warm.append(took)
            peaks.append(peak)
        warm_m = statistics.median(warm)
        print(f"  warm build (tree prepared):                      median {warm_m:6.1f} s  "
              f"(goal <= 10 s)  runs: {', '.join(f'{t:.1f}' for t in warm)}", flush=True)
        prefix, cc = toolchain(release)
        if prefix:
            with_root = cold_with_root(release, tree, out, prefix)
            print(f"  cold build that first makes the {Path(prefix[-1]).name} build root "
                  f"(gcc {cc}): {with_root:6.1f} s (one run)", flush=True)
        print(f"  peak memory of the builder: {max(peaks) / 1024:.0f} MiB (goal <= 1536 MiB)",
              flush=True)
        estimate, units, per_unit = full_build_estimate(release, tree, args.sample, prefix, cc)
    print(f"  make vmlinux, measured estimate: {estimate / 60:.0f} min "
          f"({units} units x {per_unit:.2f} s / {os.cpu_count()} cores, sample {args.sample})")
    print(f"  ratio full build / warm: {estimate / warm_m:.0f}x, "
          f"full build / cold: {estimate / cold_m:.0f}x")


def cold_with_root(release: str, tree: Path, out: Path, prefix: list[str]) -> float:
    """One cold build with the build root and the prepared tree moved aside."""
    root = Path(prefix[-1])
    moved = [(path, path.with_name(path.name + ".bench-aside")) for path in (root, tree)]
    for path, aside in moved:
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
    try:
        took, _peak = run_build(release, out)
    finally:
        for path, aside in moved:
            if path.exists():
                shutil.rmtree(aside, ignore_errors=True)
            else:
                aside.rename(path)
    return took


def _newest_61() -> str:
    sys.path.insert(0, str(REPO))
    from lab.kernels import resolve

    return resolve("newest-6.1-amd64")


if __name__ == "__main__":
    main()
