# SPDX-License-Identifier: GPL-3.0-or-later
"""Make the collection importable as ansible_collections.klp.livepatch for unit tests.

Ansible imports collection code by its full name; a checkout is not laid out that
way. A temporary directory with ansible_collections/klp/livepatch -> repository root
is put on sys.path for the test session.
"""

from __future__ import annotations

import atexit
import importlib.util
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _collection_path() -> str:
    base = Path(tempfile.mkdtemp(prefix="klp-collections-"))
    atexit.register(shutil.rmtree, base, True)
    (base / "ansible_collections" / "klp").mkdir(parents=True)
    (base / "ansible_collections" / "klp" / "livepatch").symlink_to(ROOT)
    return str(base)


if importlib.util.find_spec("ansible_collections") is None:
    sys.path.insert(0, _collection_path())
