#!/usr/bin/python
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: info
short_description: Report a host's kernel and its livepatches
version_added: 0.1.0
description:
  - Reads, without changing anything, what a livepatch rollout needs to know about a
    target. This covers the kernel release, the Debian package version, the kernel's
    GNU build-id and whether the kernel supports livepatching.
  - It also reports the live patches with their objects and functions from
    C(/sys/kernel/livepatch), the decoded taint flags, the lockdown mode, module
    signature enforcement and the patch modules stored by M(klp.livepatch.patch).
author:
  - klp.livepatch developers (@klp-livepatch)
options: {}
extends_documentation_fragment:
  - klp.livepatch.attributes
  - klp.livepatch.attributes.read_only
  - klp.livepatch.attributes.target
notes:
  - Run it with C(become=true) for complete answers; some files are root-only.
seealso:
  - module: klp.livepatch.patch
"""

EXAMPLES = r"""
- name: Read the kernel and livepatch state
  klp.livepatch.info:
  become: true
  register: klp

- name: Stop on hosts that cannot be live-patched
  ansible.builtin.assert:
    that: klp.livepatch_supported
    fail_msg: "{{ inventory_hostname }} runs {{ klp.kernel_release }} without livepatch support"

- name: List the live patches
  ansible.builtin.debug:
    msg: "{{ klp.patches | map(attribute='name') | list }}"
"""

RETURN = r"""
kernel_release:
  description: Running kernel release (C(uname -r)).
  returned: always
  type: str
  sample: 6.1.0-56-amd64
package_version:
  description: Debian package version of the running kernel, from C(/proc/version).
  returned: always
  type: str
  sample: 6.1.192-2
distribution:
  description: The host's distribution, from C(/etc/os-release).
  returned: always
  type: dict
  contains:
    id:
      description: C(ID) and the major C(VERSION_ID), as the builder names distributions.
      type: str
      sample: debian-13
    name:
      description: C(PRETTY_NAME).
      type: str
      sample: Debian GNU/Linux 13 (trixie)
build_id:
  description: GNU build-id of the running kernel, from C(/sys/kernel/notes).
  returned: always
  type: str
  sample: 2f3c0d5a9a9b5d9f6c4b7e1e6a3f0c2b1d4e5f60
livepatch_supported:
  description: Whether C(/sys/kernel/livepatch) exists.
  returned: always
  type: bool
  sample: true
config_livepatch:
  description: >-
    Value of C(CONFIG_LIVEPATCH) in C(/boot/config-RELEASE), or null when that file
    is missing.
  returned: always
  type: str
  sample: "y"
patches:
  description: Livepatches the kernel knows about, from C(/sys/kernel/livepatch).
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Patch name (its kernel module's name).
      type: str
    module:
      description: Kernel module that carries the patch.
      type: str
    enabled:
      description: Content of C(enabled).
      type: bool
    transition:
      description: Whether the patch is still switching tasks.
      type: bool
    replace:
      description: Atomic-replace flag if the kernel shows it (6.1 does not), else null.
      type: bool
    objects:
      description: >-
        Patched objects (C(vmlinux) or a module name), each with C(patched) and
        C(functions) (C(name), C(sympos)).
      type: dict
  sample:
    - name: cve_2026_1234
      module: cve_2026_1234
      enabled: true
      transition: false
      replace: null
      objects:
        vmlinux:
          patched: true
          functions: [{name: cmdline_proc_show, sympos: 1}]
livepatch_modules:
  description: >-
    Loaded modules carrying the livepatch taint, including ones whose patch was
    disabled or replaced but which were never unloaded.
  returned: always
  type: list
  elements: str
  sample: [cve_2026_1234]
taint:
  description: Decoded C(/proc/sys/kernel/tainted).
  returned: always
  type: dict
  sample:
    value: 45056
    letters: OEK
    flags:
      - {bit: 12, letter: O, description: externally-built (out-of-tree) module was loaded}
      - {bit: 13, letter: E, description: unsigned module was loaded}
      - {bit: 15, letter: K, description: kernel has been live patched}
lockdown:
  description: Active lockdown mode from C(/sys/kernel/security/lockdown), or null.
  returned: always
  type: str
  sample: none
secure_boot:
  description:
    - Whether UEFI Secure Boot is on (the C(SecureBoot) EFI variable), or null when the
      host did not boot with UEFI or does not say. Debian's kernels then lock down to
      V(integrity), so only signed modules load.
  returned: always
  type: bool
  sample: false
sig_enforce:
  description: Whether the kernel only loads signed modules, or null if unknown.
  returned: always
  type: bool
  sample: false
stored_patches:
  description: Patch modules stored by M(klp.livepatch.patch) for the running kernel.
  returned: always
  type: list
  elements: dict
  sample:
    - name: cve_2026_1234
      persist: true
      path: /var/lib/klp-livepatch/modules/6.1.0-56-amd64/cve_2026_1234.ko
      sha256: 556812e28f13cd720d99a0e87abaee797a82b7c8b951bfca95ec7ac348bccbfe
boot:
  description: >-
    Boot-time loading set up by O(klp.livepatch.patch#module:persist=true). It shows the
    boot units and the crash-loop guard. C(pending) lists the patches loaded by this
    boot, cleared 120 s after boot. C(skipped) lists the patches the guard kept from
    loading. C(failed) lists the patches whose load failed at boot. C(last_ok) is the
    epoch time of the last boot marked healthy.
  returned: always
  type: dict
  sample:
    installed: true
    unit_enabled: true
    pending: []
    skipped: []
    failed: []
    last_ok: 1795852461
"""

import os
import re

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.klp.livepatch.plugins.module_utils.klp_kernel import (
    Target,
    parse_os_release,
    parse_proc_version,
)
from ansible_collections.klp.livepatch.plugins.module_utils.klp_modfile import sha256_file
from ansible_collections.klp.livepatch.plugins.module_utils.klp_persist import Persistence


def config_value(target, option):
    text = target.read("boot", f"config-{target.release}")
    if text is None:
        return None
    m = re.search(rf"^{option}=(.*)$", text, re.MULTILINE)
    return m.group(1).strip('"') if m else "n"


def stored(target):
    store = target.store_dir()
    persisted = Persistence(target).persisted()
    try:
        names = sorted(n for n in os.listdir(store) if n.endswith(".ko"))
    except OSError:
        return []
    copies = []
    for n in names:
        path = os.path.join(store, n)
        try:
            digest = sha256_file(path)
        except FileNotFoundError:  # a run with state=absent removed it meanwhile
            continue
        copies.append({"name": n[:-3], "path": path, "persist": n[:-3] in persisted,
                       "sha256": digest})
    return copies


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    target = Target()
    version = parse_proc_version(target.read("proc/version") or "")
    module.exit_json(
        changed=False,
        kernel_release=target.release,
        package_version=version["package_version"],
        distribution=parse_os_release(target.read("etc/os-release") or ""),
        build_id=target.kernel_build_id(),
        livepatch_supported=target.livepatch_supported(),
        config_livepatch=config_value(target, "CONFIG_LIVEPATCH"),
        patches=target.patches(),
        livepatch_modules=target.livepatch_modules(),
        taint=target.taint(),
        lockdown=target.lockdown(),
        secure_boot=target.secure_boot(),
        sig_enforce=target.signatures_enforced(),
        stored_patches=stored(target),
        boot=dict(Persistence(target).guard(), installed=Persistence(target).installed()),
    )


if __name__ == "__main__":
    main()
