# SPDX-License-Identifier: GPL-3.0-or-later
"""Tiny timing helper: stages report where their seconds went (the lead prints them)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    """Add the wall-clock seconds of the `with` body to into[key] (even on failure)."""
    t0 = time.monotonic()
    try:
        yield
    finally:
        into[key] = round(into.get(key, 0.0) + time.monotonic() - t0, 3)
