# SPDX-License-Identifier: GPL-3.0-or-later
"""Run `ansible-test sanity` on exactly what `ansible-galaxy collection build` would ship.

ansible-test insists on running from `.../ansible_collections/NAMESPACE/NAME/`, so
this script lays a scratch copy out at `.sanity/ansible_collections/klp/livepatch`:
the git-tracked files plus untracked files that are not git-ignored, minus what
galaxy.yml's `build_ignore` (and ansible-galaxy's built-in ignores) leave out.
galaxy.yml itself is kept: ansible-test reads the collection's metadata from it.

The copy gets its own (empty) git repository, so that ansible-test lists its files
with git instead of walking up to this repository, where `.sanity/` is ignored.

ansible-test bootstraps pip into each of its virtual environments with a get-pip.py
script that it downloads from a host outside the package registries, which this
project's machines cannot reach. ansible-test looks in its cache first, so this
script puts a stand-in there (see GET_PIP_STANDIN): it bootstraps pip from Python's
own ensurepip and then installs the exact pip version ansible-test asked for, from
PyPI. Everything else ansible-test installs comes from PyPI with its own pins.

Usage: python tests/run_sanity.py [extra ansible-test arguments, e.g. --test pylint]
Exit status: that of ansible-test (non-zero on any sanity failure).
"""

from __future__ import annotations

import fnmatch
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "3.11"

# ansible-galaxy's own ignores (ansible/galaxy/collection/__init__.py), galaxy.yml excepted.
BUILTIN_IGNORE_PATTERNS = [
    "MANIFEST.json", "FILES.json", ".git", "*.pyc", "*.retry", "tests/output",
]
BUILTIN_IGNORE_DIRS = {"CVS", ".bzr", ".hg", ".git", ".svn", "__pycache__", ".tox"}

# Sanity tests that cannot run on this controller, with the reason. Everything else
# runs. (pslint needs pwsh, which Debian 12 lacks, but passes while no .ps1 ships;
# shellcheck comes from `make deps`.)
SKIPPED_TESTS: dict[str, str] = {}


GET_PIP_MARKER = "# Stand-in for get-pip.py, written by klp.livepatch's tests/run_sanity.py."
GET_PIP_STANDIN = f"""\
{GET_PIP_MARKER}
# Bootstraps pip with ensurepip, then lets pip install what ansible-test asked for.
import subprocess
import sys

args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"],
                      stdout=subprocess.DEVNULL)
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", "-q", *args]))
"""


def provide_get_pip() -> None:
    """Put the get-pip.py stand-in where ansible-test looks before downloading.

    A real get-pip.py that someone saved there is left alone.
    """
    from ansible_test._internal.python_requirements import get_venv_packages

    version = get_venv_packages(SimpleNamespace(version=PYTHON))["pip"]
    cache = Path.home() / ".ansible/test/cache" / f"get_pip_{version.replace('.', '_')}.py"
    current = cache.read_text() if cache.exists() else None
    if current is None or (current.startswith(GET_PIP_MARKER) and current != GET_PIP_STANDIN):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(GET_PIP_STANDIN)
        print(f"run_sanity: wrote get-pip stand-in {cache}", flush=True)


def shipped_files(galaxy: dict) -> list[str]:
    """Relative paths of the files `ansible-galaxy collection build` would put in the tarball."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode()
    patterns = BUILTIN_IGNORE_PATTERNS + [
        f"{galaxy['namespace']}-{galaxy['name']}-*.tar.gz",
        *galaxy.get("build_ignore", []),
    ]
    files = []
    for rel in sorted(set(filter(None, listing.split("\0")))):
        parts = rel.split("/")
        # ansible-galaxy matches every directory on the way down, then the file.
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(part in BUILTIN_IGNORE_DIRS for part in parts[:-1]):
            continue
        if any(fnmatch.fnmatch(p, pat) for p in prefixes for pat in patterns):
            continue
        if (ROOT / rel).is_file():  # skips files deleted from the work tree
            files.append(rel)
    return files


def make_scratch_copy(galaxy: dict) -> Path:
    dest = ROOT / ".sanity" / "ansible_collections" / galaxy["namespace"] / galaxy["name"]
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel in [*shipped_files(galaxy), "galaxy.yml"]:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target, follow_symlinks=False)
    subprocess.run(["git", "init", "-q", str(dest)], check=True)
    return dest


def main(argv: list[str]) -> int:
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    dest = make_scratch_copy(galaxy)
    provide_get_pip()
    print(f"run_sanity: scratch copy at {dest.relative_to(ROOT)}", flush=True)

    cmd = [
        str(Path(sys.executable).parent / "ansible-test"), "sanity",
        "--venv", "--python", PYTHON, "--color", "no",
    ]
    for test, reason in SKIPPED_TESTS.items():
        print(f"run_sanity: skipping sanity test '{test}': {reason}", flush=True)
        cmd += ["--skip-test", test]
    cmd += argv
    print("run_sanity:", " ".join(cmd), flush=True)
    rc = subprocess.run(cmd, cwd=dest, check=False).returncode
    print(f"run_sanity: ansible-test sanity {'passed' if rc == 0 else f'FAILED (exit {rc})'}")
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
