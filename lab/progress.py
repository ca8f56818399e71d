# SPDX-License-Identifier: GPL-3.0-or-later
"""One progress line per step with elapsed seconds, so slow TCG steps stay visible."""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def step(message: str) -> None:
    """Print a progress line to stderr (stdout stays clean for `status` tables)."""
    print(f"[lab {time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def tail(path, lines: int = 25) -> str:
    """The last lines of a log file, for error messages."""
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
