# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The attributes every klp.livepatch module documents, written once.

A module extends ``klp.livepatch.attributes`` (what each attribute means) and the
sub-fragments that fit it (``klp.livepatch.attributes.read_only`` and so on). Anything
the module itself sets under ``attributes:`` wins over a fragment, key by key, so a
module adds or overrides ``details`` where its case differs.
"""

from __future__ import annotations


class ModuleDocFragment:

    # Every module: what the attributes mean. The module, or one of the fragments below,
    # says how far it supports check_mode and diff_mode.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    description: >-
      Can run in check mode and return a changed status prediction without modifying the
      target.
  diff_mode:
    description: >-
      Will return details on what has changed (or would change in check mode) when in diff
      mode.
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
"""

    # Modules with an action plugin of the same name; the module gives its support.
    ACTION = r"""
attributes:
  action:
    description: >-
      Indicates this has a corresponding action plugin so some parts of the options can be
      executed on the controller.
"""

    # Action plugins that do all their work on the controller (use with ACTION).
    CONTROLLER = r"""
attributes:
  action:
    support: full
    details: Runs on the controller through the action plugin of the same name.
  platform:
    platforms: posix
    details: Runs on the controller.
"""

    # Modules that run on the managed hosts.
    TARGET = r"""
attributes:
  platform:
    platforms: posix
    details: Linux targets; tested on Debian 12 kernels.
"""

    # Modules that only read the target and change nothing.
    READ_ONLY = r"""
attributes:
  check_mode:
    support: full
    details: The module never changes anything; it runs the same in check mode.
  diff_mode:
    support: none
    details: Nothing changes, so there is no difference to show.
"""
