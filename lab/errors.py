# SPDX-License-Identifier: GPL-3.0-or-later
"""The one exception type of the lab, so the CLI can print it without a traceback."""


class LabError(Exception):
    """A lab failure with a message that says what went wrong and what to do."""
