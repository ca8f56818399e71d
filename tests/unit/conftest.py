# SPDX-License-Identifier: GPL-3.0-or-later
"""Make the collection importable as ansible_collections.klp.livepatch for unit tests.

Ansible imports collection code by its full name; a checkout is not laid out that
way. A temporary directory with ansible_collections/klp/livepatch -> repository root
is put on sys.path for the test session.
"""

from __future__ import annotations

import atexit
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


try:
    import ansible_collections.klp.livepatch  # noqa: F401 - already importable
except ImportError:
    sys.path.insert(0, _collection_path())
