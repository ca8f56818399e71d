#!/usr/bin/python
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: prune
short_description: Delete stored livepatches of kernels no longer installed
version_added: 0.1.0
description:
  - M(klp.livepatch.patch) keeps a copy of each patch it loads, per kernel release,
    under C(/var/lib/klp-livepatch/modules/RELEASE/), with the marks that load it again
    at boot. Once a kernel package is removed (no C(/lib/modules/RELEASE)), those copies
    can never be loaded again; this module deletes them.
  - The running kernel's copies and those of every installed kernel are kept.
author:
  - klp.livepatch developers (@klp-livepatch)
options:
  store:
    description: Where the patches are stored (as M(klp.livepatch.patch) stores them).
    type: path
    default: /var/lib/klp-livepatch/modules
extends_documentation_fragment:
  - klp.livepatch.attributes
  - klp.livepatch.attributes.target
attributes:
  check_mode:
    support: full
    details: Lists what would be deleted and deletes nothing.
  diff_mode:
    support: full
    details: Shows the kernel releases whose copies go.
notes:
  - Needs root on the target (C(become=true)).
seealso:
  - module: klp.livepatch.patch
  - module: klp.livepatch.info
"""

EXAMPLES = r"""
- name: Delete stored livepatches of removed kernels
  klp.livepatch.prune:
  become: true
  register: pruned

- name: Show what went
  ansible.builtin.debug:
    var: pruned.removed
"""

RETURN = r"""
removed:
  description: Per kernel release no longer installed, the stored files deleted (or that would be).
  returned: always
  type: dict
  sample: {"6.1.0-50-amd64": ["cve_fix.ko", "cve_fix.persist"]}
kept:
  description: Kernel releases whose stored copies stay (the running one and those installed).
  returned: always
  type: list
  elements: str
  sample: ["6.1.0-57-amd64"]
"""

import os
import shutil

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.klp.livepatch.plugins.module_utils.klp_kernel import Target


def main():
    module = AnsibleModule(argument_spec={"store": {"type": "path",
                                                    "default": "/var/lib/klp-livepatch/modules"}},
                           supports_check_mode=True)
    target = Target(store=module.params["store"], run_command=module.run_command)
    stale = target.stale_stores()
    try:
        kept = sorted(r for r in os.listdir(target.store_base) if r not in stale)
    except OSError:
        kept = []
    if not module.check_mode:
        for release in stale:
            shutil.rmtree(os.path.join(target.store_base, release))
    result = {"changed": bool(stale), "removed": stale, "kept": kept}
    if module._diff:
        result["diff"] = {"before": "".join(f"{r}\n" for r in sorted(stale) + kept),
                          "after": "".join(f"{r}\n" for r in kept)}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
