# Copyright: klp.livepatch developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The error every klp.livepatch target-side failure raises: its message is for a user."""


class KlpError(Exception):
    """A target-side failure with a message fit for a user."""
