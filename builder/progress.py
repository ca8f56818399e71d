# SPDX-License-Identifier: GPL-3.0-or-later
"""The builder's one clock, and what it times.

`Timer` is the only place that reads the clock (wall-clock seconds, monotonic). On it:
`timed` adds a `with` body's seconds into a dict (the compile stage's steps), and
`Progress` times the pipeline's stages, records their seconds (the manifest's
`stage_seconds`) and prints one line per stage and per note to stderr:

    [  12.3s] compile   fs/proc/meminfo.c (4.1s)
    [  14.0s]           unit 2/5: fs/ext4

the first figure counted from the start of the run, the last the stage's own.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


class Timer:
    """Seconds since it was made."""

    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


@contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[Timer]:
    """Add the wall-clock seconds of the `with` body to into[key] (even on failure)."""
    timer = Timer()
    try:
        yield timer
    finally:
        into[key] = round(into.get(key, 0.0) + timer.seconds, 3)


@dataclass
class Progress:
    """Times stages: their seconds (by stage name, the last run of a name counts) and a
    line per stage and per note on `stream`, stamped with the seconds since `clock`."""

    stream: object = sys.stderr
    clock: Timer = field(default_factory=Timer)
    seconds: dict[str, float] = field(default_factory=dict)
    label: str = ""  # names the run on each line when several share the stream

    def note(self, text: str) -> None:
        """A line of progress inside a long stage (e.g. hundreds of units to compile)."""
        print(f"[{self.clock.seconds:6.1f}s]           {self._labelled(text)}",
              file=self.stream, flush=True)

    def stage(self, name: str, detail: str, fn, *args, **kwargs):
        """fn(*args, **kwargs), timed as stage `name`; its result."""
        timer = Timer()
        result = fn(*args, **kwargs)
        took = timer.seconds
        self.seconds[name] = round(took, 3)
        print(f"[{self.clock.seconds:6.1f}s] {name:<9} {self._labelled(detail)} ({took:.1f}s)",
              file=self.stream, flush=True)
        return result

    def nested(self, label: str = "") -> Progress:
        """Progress of a run inside this one: the same stream and clock, its own seconds."""
        return Progress(stream=self.stream, clock=self.clock, label=label)

    def _labelled(self, text: str) -> str:
        return f"{self.label}: {text}" if self.label else text


__all__ = ["Progress", "Timer", "timed"]
