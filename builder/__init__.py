# SPDX-License-Identifier: GPL-3.0-or-later
"""klp.livepatch patch builder: a kernel source patch becomes a verified livepatch module."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__version__ = "0.1.0"


@functools.cache
def code_digest() -> str:
    """The builder's code and the module sources it compiles in, hashed.

    Part of every build key: a module or unit result made by other code is not reused,
    even while the version number stays the same (a checkout between releases).
    """
    package = Path(__file__).resolve().parent
    files = sorted([*package.rglob("*.py"), *package.rglob("*.json"),
                    *(package.parent / "kmod").rglob("*.[ch]")])
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(package.parent)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]
