# SPDX-License-Identifier: GPL-3.0-or-later
"""klp.livepatch patch builder: a kernel source patch becomes a verified livepatch module."""

__version__ = "0.1.0"
