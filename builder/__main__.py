# SPDX-License-Identifier: GPL-3.0-or-later
"""Command line of the builder.

    python3 -m builder build  --kernel RELEASE --patch FILE --name NAME --output DIR
    python3 -m builder update --kernel RELEASE --to VERSION|latest --name NAME --output DIR
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from contextlib import nullcontext, suppress
from pathlib import Path

import psutil

from builder import __version__
from builder.cache import exclusive, sha256_file, work_dir
from builder.errors import BuildError
from builder.pipeline import build, manifest_matches, resolve_version
from builder.providers import cache_dir
from builder.request import BuildRequest, add_arguments
from builder.update import MAX_FILES as UPDATE_MAX_FILES


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python3 -m builder", description=__doc__)
    top.add_argument("--version", action="version", version=__version__)
    sub = top.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build a livepatch module for one kernel")
    add_arguments(b)  # builder/request.py describes them
    u = sub.add_parser("update", help="one live patch that brings a kernel to a newer "
                                      "Debian upload's code")
    u.add_argument("--kernel", required=True, metavar="RELEASE",
                   help="kernel release as `uname -r` prints it, e.g. 6.1.0-55-amd64")
    u.add_argument("--package-version", metavar="VERSION",
                   help="the package version the host runs (`dpkg-query -W "
                        "linux-image-$(uname -r)`; default: the archive's newest)")
    u.add_argument("--to", required=True, metavar="VERSION",
                   help="a package version of the same kernel line, or 'latest'")
    u.add_argument("--name", required=True, help="module name (NAME.ko, NAME.json)")
    u.add_argument("--output", required=True, type=Path, metavar="DIR")
    u.add_argument("--sign-key", type=Path, metavar="KEY")
    u.add_argument("--sign-cert", type=Path, metavar="CERT")
    u.add_argument("--consistency", choices=("default", "freeze"), default="default")
    u.add_argument("--work", type=Path, metavar="DIR",
                   help="work directory; unit results kept there make a rerun resume")
    u.add_argument("--jobs", type=int, default=os.cpu_count() or 1, metavar="N",
                   help="fix units built at once (default: the number of CPUs)")
    u.add_argument("--max-files", type=int, default=UPDATE_MAX_FILES, metavar="N",
                   help="a unit whose changed headers need more than N built files "
                        "compiled (each twice; up to 4N includers are preprocessed to "
                        f"find them) needs a reboot (default {UPDATE_MAX_FILES})")
    u.add_argument("--check", action="store_true",
                   help="only resolve the versions and say what would be done")
    c = sub.add_parser("cache", help="list the controller cache or prune it to a size")
    c.add_argument("action", choices=("list", "prune"))
    c.add_argument("--max-size", metavar="SIZE",
                   help="prune: remove least recently used entries until the cache is at "
                        "most SIZE (e.g. 20G)")
    c.add_argument("--dry-run", action="store_true", help="prune: only say what would go")
    return top


def run_cache(args) -> int:
    from builder import cache

    root = cache_dir()
    if args.action == "list":
        print(cache.render(cache.entries(root), root))
        return 0
    if not args.max_size:
        print("error: cache prune needs --max-size (e.g. 20G)", file=sys.stderr)
        return 2
    try:
        budget = cache.parse_size(args.max_size)
    except ValueError as err:
        print(f"error: --max-size: {err}", file=sys.stderr)
        return 2
    removed, left = cache.prune(root, budget, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in removed:
        print(f"{verb} {cache.human(entry.size):>8}  {entry.path.relative_to(root)}")
    print(f"{cache.human(left)} left in {root} (budget {cache.human(budget)})")
    return 0


def run_update(args) -> int:
    from builder.update import UpdateRequest, plan, update

    request = UpdateRequest(
        kernel=args.kernel, to=args.to, name=args.name, output=args.output,
        package_version=args.package_version, work=args.work, sign_key=args.sign_key,
        sign_cert=args.sign_cert, consistency=args.consistency, jobs=max(1, args.jobs),
        max_files=args.max_files)
    planned = plan(request)
    if args.check:
        built = args.output / f"{planned['name']}.ko"
        print(json.dumps({**planned, "module": str(built) if planned["state"] == "built"
                          else None, "changed": planned["state"] == "would-build"}))
        return 0
    before = _sha256_or_none(args.output / f"{planned['name']}.ko")
    manifest = update(request)
    info = manifest["update"]
    counts: dict[str, int] = {}
    for unit in info["units"]:
        counts[unit["status"]] = counts.get(unit["status"], 0) + 1
    module = args.output / f"{planned['name']}.ko"
    print(json.dumps({"module": str(module) if manifest.get("module_sha256") else None,
                      "name": planned["name"], "manifest": planned["manifest"],
                      "state": info["state"], "from": info["from"], "to": info["to"],
                      "changed": manifest.get("module_sha256") != before,
                      "units": counts, "cves_live": len(info.get("cves_live", [])),
                      "cves_not_live": len(info.get("cves_not_live", []))}))
    return 0


def _sha256_or_none(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def forget_outer_make(environ: dict[str, str]) -> None:
    """Drop what a make above us exports (`make demo`, `make -C DIR …`).

    kbuild would inherit its flags: -w puts "Entering directory" lines into output the
    builder parses (`make -s kernelrelease`), and its jobserver is not ours to use.
    """
    for name in ("MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        environ.pop(name, None)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    forget_outer_make(os.environ)
    if args.command == "cache":
        return run_cache(args)
    if not all(c.isalnum() or c in "-_" for c in args.name):
        print(f"error: --name {args.name!r}: use letters, digits, '-' and '_' only",
              file=sys.stderr)
        return 2
    signing = [f for f in (args.sign_key, args.sign_cert) if f is not None]
    if signing and (len(signing) != 2 or not all(Path(f).is_file() for f in signing)):
        print(f"error: --sign-key and --sign-cert go together and must be existing files "
              f"(got {args.sign_key}, {args.sign_cert})", file=sys.stderr)
        return 2
    if args.command == "update":
        try:
            return run_update(args)
        except BuildError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    request = BuildRequest.from_args(args)
    module = args.output / f"{args.name}.ko"
    work = args.work or work_dir(cache_dir(), args.name, args.kernel)
    try:
        with nullcontext() if args.check else exclusive(work):
            if args.if_changed or args.check:
                resolve_version(request)
                if manifest_matches(args.output / f"{args.name}.json", request):
                    print(json.dumps({"module": str(module), "built": False,
                                      "changed": False}))
                    return 0
                if args.check:
                    print(json.dumps({"module": str(module), "built": False,
                                      "changed": True}))
                    return 0
            manifest = build(request)
    except BuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    functions = sum(len(v) for v in manifest["objects"].values())
    print(json.dumps({"module": str(module), "built": True, "changed": True,
                      "functions": functions, "module_sha256": manifest["module_sha256"]}))
    return 0


def stop_on_signals() -> None:
    """On SIGTERM or SIGINT, stop every process the builder started, then exit at once.

    The compilers run under make in worker threads and in a forkserver's pool, which a
    signal to this process alone does not reach. make, sent SIGTERM, deletes the object
    it was writing. Exiting without unwinding records no half-built unit as a result;
    the next run restores a source tree left patched and resumes from what finished.
    """
    def stop(signum: int, _frame: object) -> None:
        stopped = 0
        for _round in range(5):  # a worker thread may start one more command meanwhile
            children = psutil.Process().children(recursive=True)
            if not children:
                break
            for child in children:
                with suppress(psutil.NoSuchProcess):
                    child.terminate()
            _gone, alive = psutil.wait_procs(children, timeout=5)
            for child in alive:
                with suppress(psutil.NoSuchProcess):
                    child.kill()
            stopped += len(children)
        print(f"error: stopped by {signal.Signals(signum).name} ({stopped} processes it "
              "started were stopped); a rerun resumes from what finished", file=sys.stderr)
        sys.stderr.flush()
        os._exit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


if __name__ == "__main__":
    stop_on_signals()
    sys.exit(main())
