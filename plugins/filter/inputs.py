# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that read livepatch.yml's inputs the way people pass them.

`-e livepatch_patches=fix.patch` is a string, an AWX survey sends strings, and
`-e livepatch_batches=1,25%` is one string with commas: these filters turn each into
what the playbook means, or fail with a message that names the input and the remedy.
"""

from __future__ import annotations

import difflib
import re

from ansible.errors import AnsibleFilterError


def as_list(value, split_commas=False):
    """A list as given; a string becomes a one-item list (or its comma-separated items)."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        if split_commas:
            return [item.strip() for item in value.split(",") if item.strip()]
        return [value]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


_PERCENT = re.compile(r"^(\d+(?:\.\d+)?)%$")


def batch_plan(value, name="livepatch_batches"):
    """A serial plan: host counts (>= 1) and percentages (0% < p <= 100%), checked now."""
    plan = []
    for item in as_list(value, split_commas=True):
        text = str(item).strip()
        if isinstance(item, bool):
            text = "?"
        if isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            plan.append(item)
        elif re.fullmatch(r"\d+", text) and int(text) >= 1:
            plan.append(int(text))
        elif _PERCENT.match(text) and 0 < float(_PERCENT.match(text).group(1)) <= 100:
            plan.append(text)
        else:
            raise AnsibleFilterError(
                f"{name}: {item!r} is neither a number of hosts (1, 2, ...) nor a "
                f"percentage of the fleet (25%); give a list such as [1, \"25%\", \"100%\"] "
                "or the string 1,25%,100%")
    if not plan:
        raise AnsibleFilterError(f"{name} is empty: give at least one batch, e.g. [\"100%\"]")
    return plan


def unknown_inputs(names, known):
    """Messages for each name that is not a known input, with the nearest known one."""
    known = sorted(known)
    messages = []
    for name in sorted(set(as_list(names, split_commas=True)) - set(known)):
        near = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        hint = f"; did you mean {near[0]}?" if near else f"; the inputs are: {', '.join(known)}"
        messages.append(f"{name} is not an input of livepatch.yml{hint}")
    return messages


class FilterModule:
    def filters(self):
        return {"as_list": as_list, "batch_plan": batch_plan, "unknown_inputs": unknown_inputs}
