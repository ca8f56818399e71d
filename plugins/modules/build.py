#!/usr/bin/python
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: build
short_description: Build livepatch modules from a kernel source patch, once per kernel
version_added: 0.1.0
description:
  - Runs the klp.livepatch builder on the controller for each kernel given, turning a
    unified diff against the distribution's kernel source into a livepatch module
    (C(NAME.ko)) and its manifest (C(NAME.json)).
  - Only the translation units the patch touches are compiled; the rebuilt original
    functions are proven byte-identical to the shipped kernel before anything is
    generated.
  - A kernel whose artifact with the same key (kernel release and package version,
    patch sha256, builder version, options) is already in O(output_dir) is skipped,
    so reruns and AWX job slices never build twice.
  - Kernels are built side by side (two at a time). A kernel whose build fails does not
    stop the others; the task then fails with every failing kernel's reason (unless
    O(fail_on_build_error=false)) and still returns the modules that were built (see
    RV(failed_kernels)).
  - This is an action plugin; it always runs on the controller.
author:
  - klp.livepatch developers (@klp-livepatch)
options:
  patches:
    description:
      - Unified diffs (C(-p1)) against the kernel source, applied in order.
      - One of O(patches) and O(update_to) is required.
    type: list
    elements: path
    default: []
  update_to:
    description:
      - Instead of O(patches), bring each kernel to the code of a newer Debian upload of
        its kernel line, V(latest) or a package version such as V(6.1.192-3).
      - The builder takes the difference of the two C(linux-source) packages, cuts it into
        fix units, builds each one it can live-patch into one cumulative module named
        C(NAME_<version>) (atomic replace, so a later update takes over from this one)
        and lists every unit with its status (V(live), V(needs-reboot), V(no-change),
        V(not-in-config)) and the changelog's CVE ids in the manifest's C(update) key.
      - A kernel already at that version gets no module (its C(updates) state is
        V(current)).
    type: str
  name:
    description: Name of the patch module (letters, digits, C(-) and C(_)).
    type: str
    required: true
  kernels:
    description:
      - Kernels to build for. Each item is a release as C(uname -r) prints it, or a
        dictionary with C(release) and optionally C(package_version) (the Debian
        package version, as C(/proc/version) shows it).
    type: list
    elements: raw
    required: true
  output_dir:
    description: Artifact directory; each kernel's module goes to C(output_dir/RELEASE/).
    type: path
    required: true
  fail_on_build_error:
    description:
      - V(false) reports kernels whose build failed in RV(failed_kernels) without failing
        the task, so that the caller fails only those kernels' hosts (the build role does
        this).
    type: bool
    default: true
  replace:
    description: Build an atomic-replace (cumulative) patch.
    type: bool
    default: true
  consistency:
    description:
      - V(freeze) adds process-freezer support to the module, used by
        M(klp.livepatch.patch) with O(klp.livepatch.patch#module:consistency=freeze).
    type: str
    choices: [default, freeze]
    default: default
  sign_key:
    description: Private key to sign the module with (requires O(sign_cert)).
    type: path
  sign_cert:
    description: X.509 certificate matching O(sign_key).
    type: path
extends_documentation_fragment:
  - klp.livepatch.attributes
  - klp.livepatch.attributes.action
  - klp.livepatch.attributes.controller
attributes:
  check_mode:
    support: full
    details: Reports which kernels would be built, without building.
  diff_mode:
    support: none
    details: Builds have no before/after state to show.
  platform:
    details: Runs on the controller; needs Debian's apt and the kernel build tools.
notes:
  - The first build for a kernel downloads its packages and prepares a source tree in
    C(~/.cache/klp-livepatch) (about a minute); later builds take seconds.
"""

EXAMPLES = r"""
- name: Build the fix for every kernel the fleet runs
  klp.livepatch.build:
    patches:
      - fixes/cve-2026-1234.patch
    name: cve_2026_1234
    kernels: "{{ groups['all'] | map('extract', hostvars, 'ansible_kernel') | unique }}"
    output_dir: "{{ playbook_dir }}/livepatch-artifacts"
  run_once: true

- name: Build one module per kernel that brings it to Debian's newest upload of its line
  klp.livepatch.build:
    update_to: latest
    name: debian_update
    kernels: "{{ groups['all'] | map('extract', hostvars, 'build_kernel') | unique }}"
    output_dir: /srv/livepatch
  run_once: true

- name: Build for one pinned kernel package, signed
  klp.livepatch.build:
    patches: [fixes/meminfo.patch]
    name: meminfo_fix
    kernels:
      - release: 6.1.0-56-amd64
        package_version: 6.1.192-2
    output_dir: /srv/livepatch
    sign_key: /etc/klp/signing_key.pem
    sign_cert: /etc/klp/signing_key.x509
"""

RETURN = r"""
modules:
  description:
    - Path of the module built (or reused) for each kernel release; empty for a kernel
      an update leaves without a module (current, or nothing live-patchable).
  returned: success
  type: dict
  sample: {"6.1.0-56-amd64": "/srv/livepatch/6.1.0-56-amd64/cve_2026_1234.ko"}
manifests:
  description: The manifest of each kernel's module (see docs/DESIGN.md for its keys).
  returned: success, not in check mode
  type: dict
  sample: {"6.1.0-56-amd64": {"kernel_release": "6.1.0-56-amd64", "objects": {}}}
names:
  description: Module name per kernel release (C(NAME), or C(NAME_<version>) for an update).
  returned: success
  type: dict
  sample: {"6.1.0-55-amd64": "debian_update_6_1_192_3"}
updates:
  description:
    - With O(update_to), per kernel release - package versions, state (V(update),
      V(current), V(nothing-live), V(would-build) in check mode), the fix units that are
      live, those that need a reboot (with the builder's reason), those whose built code
      does not change, how many are not in the configuration, and the CVE ids covered
      by live units and not.
  returned: with O(update_to)
  type: dict
  sample: {"6.1.0-55-amd64": {"from": "6.1.192-1", "to": "6.1.192-3", "state": "update",
           "live": ["fs/ext4", "fs/nfsd"], "needs_reboot": [], "no_change": [],
           "not_in_config": 0, "cves_live": ["CVE-2026-99362"], "cves_not_live": []}}
built:
  description: Releases built by this run.
  returned: always
  type: list
  elements: str
  sample: ["6.1.0-56-amd64"]
skipped:
  description: Releases whose artifact was already up to date.
  returned: always
  type: list
  elements: str
  sample: ["6.1.0-56-cloud-amd64"]
failed_kernels:
  description:
    - Releases whose build failed, each with the builder's error message (what to change
      is in it). The task fails when this is not empty (unless
      O(fail_on_build_error=false)); the other kernels' results are returned all the same.
  returned: always
  type: dict
  sample: {"6.1.0-56-cloud-amd64": "building fix for 6.1.0-56-cloud-amd64 failed: error: ..."}
log:
  description: The builder's progress lines, per release.
  returned: always
  type: dict
  sample: {"6.1.0-56-amd64": ["[   0.2s] acquire   6.1.0-56-amd64 (6.1.192-2) (0.2s)"]}
"""
