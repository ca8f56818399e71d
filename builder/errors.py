# SPDX-License-Identifier: GPL-3.0-or-later
"""The one error type of the builder: what failed, where, and what to do about it."""

from __future__ import annotations


class BuildError(Exception):
    """A refusal or failure with a message a user can act on."""

    def __init__(self, stage: str, message: str, hint: str | None = None,
                 file: str | None = None, function: str | None = None) -> None:
        super().__init__(message)
        self.stage = stage
        self.message = message
        self.hint = hint
        self.file = file
        self.function = function

    def __str__(self) -> str:
        where = ": ".join(p for p in (self.stage, self.file, self.function) if p)
        text = f"{where}: {self.message}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text
