# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Lookup klp.livepatch.manifest: the builder manifest of a module, read on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
name: manifest
version_added: 0.1.0
author: klp.livepatch developers (@klp-livepatch)
short_description: The builder manifest of a livepatch module
description:
  - Reads the manifest C(NAME.json) the builder wrote beside C(NAME.ko), on the
    controller, and validates it against the collection's manifest schema
    (C(builder/manifest.schema.json)) - the same reader M(klp.livepatch.build) and
    M(klp.livepatch.patch) use.
  - A manifest written before C(schema_version) existed is read as version 1; one of a
    newer C(schema_version) than the collection knows is refused (upgrade the
    collection).
  - Fails when the module has no manifest, or the manifest does not follow the schema
    (the message names the file and the offending key).
options:
  _terms:
    description:
      - Paths of C(.ko) files, looked up like O(klp.livepatch.patch#module:src) (the
        role's or playbook's C(files) directories for a relative path).
    type: list
    elements: path
    required: true
"""

EXAMPLES = r"""
- name: Read the manifest of the module built for this host's kernel
  ansible.builtin.set_fact:
    module_manifest: "{{ lookup('klp.livepatch.manifest', build_module) }}"
"""

RETURN = r"""
_raw:
  description: One manifest (a dictionary) per path.
  type: list
  elements: dict
"""


from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

from ansible_collections.klp.livepatch.plugins.plugin_utils.manifest import (
    ManifestError,
    manifest_path,
    read_manifest,
)


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        manifests = []
        for term in terms:
            ko = self.find_file_in_search_path(variables, "files", term, ignore_missing=True)
            if ko is None:
                raise AnsibleLookupError(f"livepatch module {term} not found on the controller")
            try:
                manifest = read_manifest(ko)
            except ManifestError as exc:
                raise AnsibleLookupError(str(exc)) from exc
            if manifest is None:
                raise AnsibleLookupError(f"no builder manifest {manifest_path(ko)} beside {ko}")
            manifests.append(manifest)
        return manifests
