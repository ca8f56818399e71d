#!/usr/bin/python
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: preflight
short_description: Predict which tasks would hold back a livepatch transition
version_added: 0.1.0
description:
  - Reads the kernel stack of every task (C(/proc/PID/task/TID/stack)) and reports the
    tasks that sit inside a function about to be patched. This is the check that
    kpatch makes, used here as a prediction.
  - Such a task cannot switch to the patched code until it leaves the function. A
    task that sleeps there, for example a kernel thread, makes the transition stall.
  - The result is a snapshot. A task may enter or leave a function right after it is
    taken.
author:
  - klp.livepatch developers (@klp-livepatch)
options:
  functions:
    description: Names of the functions to be patched.
    type: list
    elements: str
  manifest:
    description:
      - Path on the target of a builder manifest (C(NAME.json)); its C(objects) list the
        functions.
    type: path
  manifest_content:
    description:
      - Contents of a builder manifest, for example read with
        P(ansible.builtin.file#lookup) on the controller.
    type: dict
extends_documentation_fragment:
  - klp.livepatch.attributes
  - klp.livepatch.attributes.read_only
  - klp.livepatch.attributes.target
notes:
  - Run it with C(become=true); only root can read other tasks' kernel stacks.
seealso:
  - module: klp.livepatch.patch
"""

EXAMPLES = r"""
- name: Which tasks sit in the functions the fix replaces?
  klp.livepatch.preflight:
    manifest_content: "{{ lookup('ansible.builtin.file', manifest_file) | from_json }}"
  vars:
    manifest_file: "artifacts/{{ ansible_facts.kernel }}/cve-2026-1234.json"
  become: true
  register: preflight

- name: Hold this host back while something sleeps in a patched function
  ansible.builtin.fail:
    msg: "{{ preflight.blocking_tasks | map(attribute='comm') | list }} would block the transition"
  when: not preflight.safe

- name: A quick check by function name
  klp.livepatch.preflight:
    functions: [cmdline_proc_show, meminfo_proc_show]
  become: true
"""

RETURN = r"""
functions:
  description: The functions that were looked for.
  returned: always
  type: list
  elements: str
  sample: [cmdline_proc_show]
blocking_tasks:
  description: Tasks with one of the functions on their kernel stack.
  returned: always
  type: list
  elements: dict
  contains:
    pid:
      description: Process id.
      type: int
    tid:
      description: Thread id.
      type: int
    comm:
      description: Command name.
      type: str
    function:
      description: The patched function found on the stack.
      type: str
    stack:
      description: The task's kernel stack, innermost frame first.
      type: list
      elements: str
  sample:
    - pid: 412
      tid: 412
      comm: klp_sleeper
      function: klp_sleeper_wait
      stack: ["[<0>] klp_sleeper_wait+0x2a/0x50 [klp_test_sleeper]", "[<0>] kthread+0xe8/0x110"]
safe:
  description: True when no task sits in any of the functions.
  returned: always
  type: bool
  sample: true
tasks_scanned:
  description: Number of tasks whose stacks were read.
  returned: always
  type: int
  sample: 97
"""

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.klp.livepatch.plugins.module_utils.klp_kernel import Target
from ansible_collections.klp.livepatch.plugins.module_utils.klp_modfile import manifest_functions


def main():
    module = AnsibleModule(
        argument_spec={
            "functions": {"type": "list", "elements": "str"},
            "manifest": {"type": "path"},
            "manifest_content": {"type": "dict"},
        },
        required_one_of=[("functions", "manifest", "manifest_content")],
        mutually_exclusive=[("manifest", "manifest_content")],
        supports_check_mode=True,
    )
    functions = list(module.params["functions"] or [])
    manifest = module.params["manifest_content"]
    if module.params["manifest"]:
        try:
            with open(module.params["manifest"]) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as exc:
            module.fail_json(msg=f"cannot read manifest {module.params['manifest']}: {exc}")
    if manifest:
        functions += manifest_functions(manifest)
    functions = sorted(set(functions))
    if not functions:
        module.fail_json(msg="no functions to look for: the manifest lists none")
    target = Target()
    tasks = len(list(target.tasks()))
    blocking = target.tasks_in_functions(functions)
    module.exit_json(changed=False, functions=functions, blocking_tasks=blocking,
                     safe=not blocking, tasks_scanned=tasks)


if __name__ == "__main__":
    main()
