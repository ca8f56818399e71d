#!/usr/bin/python
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: report
short_description: Write the fleet report of a livepatch rollout (JSON, JUnit XML, HTML)
version_added: 0.1.0
description:
  - Collects, on the controller, what the M(klp.livepatch.info) facts, the
    C(klp.livepatch.rollout) role and the C(klp.livepatch.verify) role recorded about
    each host. It writes one report in up to three formats to O(dest).
  - C(report.json) is for machines. C(report.xml) is JUnit XML for CI, with one
    testcase per host; a failed host's failure message names the health gate that
    stopped it and why. C(report.html) is a self-contained page for people, with no
    external assets.
  - Each host gets a status. V(ok) means patched (or removed) and verified. V(failed)
    means a health gate or the final verification failed. V(unreachable) means the
    host could not be reached. V(skipped) means preflight held the host back.
    V(not_attempted) means the rollout stopped before the host's batch.
  - O(query) is a JMESPath expression applied to the report, for example to list the
    failed hosts. It uses the Python library C(jmespath) directly, so no other
    collection is needed.
  - This is an action plugin; it always runs on the controller.
author:
  - klp.livepatch developers (@klp-livepatch)
options:
  dest:
    description:
      - Directory to write the report files to; created when missing.
      - With O(run), the files go to C(dest/RUN/) and C(dest/latest) points there.
    type: path
    required: true
  run:
    description:
      - Name of this run's own directory under O(dest) (a plain name such as
        C(20261201T043000Z-cve_fix-enabled)), so that a rollback does not overwrite the
        rollout's report. C(dest/latest) is a relative link to the newest one, replaced in
        one step. Writing again with the same O(run) (as a rollout does when it halts
        early and again at the end) rewrites that run's files.
      - Omit it to write into O(dest) itself.
    type: str
  name:
    description: Name of the patch the report is about.
    type: str
    required: true
  state:
    description: The state the rollout asked for (V(absent) for a rollback run).
    type: str
    choices: [enabled, absent]
    default: enabled
  hosts:
    description:
      - Hosts to report on. Their facts C(build_kernel), C(rollout_result) and
        C(verify_result) are read from C(hostvars).
      - Defaults to every host the play targets (C(ansible_play_hosts_all)), so hosts
        that failed or became unreachable are still in the report.
    type: list
    elements: str
  records:
    description:
      - "The facts of each host given directly, as C({host: {build_kernel, rollout_result,
        verify_result}}), instead of reading them from C(hostvars)."
    type: dict
  build:
    description: The result of M(klp.livepatch.build) (C(built), C(skipped)) to show in the report.
    type: dict
    default: {}
  formats:
    description: Which files to write.
    type: list
    elements: str
    choices: [json, junit, html]
    default: [json, junit, html]
  query:
    description: A JMESPath expression applied to the report; the answer is RV(query_result).
    type: str
extends_documentation_fragment:
  - klp.livepatch.attributes
  - klp.livepatch.attributes.action
  - klp.livepatch.attributes.controller
attributes:
  check_mode:
    support: full
    details: >-
      Builds the report and answers the query. Without O(run) no file is written; with
      O(run) the run's own directory is written all the same (it overwrites no other
      report), marked C(check_mode) - a dry run's report is its prediction.
  diff_mode:
    support: none
    details: A report has no before and after.
notes:
  - Writing the report is not a change to the fleet, so the task never reports C(changed).
seealso:
  - module: klp.livepatch.info
  - module: klp.livepatch.patch
"""

EXAMPLES = r"""
- name: Write the fleet report and list the failed hosts
  klp.livepatch.report:
    dest: "{{ playbook_dir }}/livepatch-report"
    name: cve_2026_1234
    query: "hosts[?status=='failed'].{host: host, gate: gate, reason: reason}"
  run_once: true
  delegate_to: localhost
  register: report

- name: Hosts still on the old kernel package
  klp.livepatch.report:
    dest: /tmp/report
    name: cve_2026_1234
    formats: [json]
    query: "hosts[?package_version=='6.1.192-1'].host"
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
report:
  description: The report, as written to C(report.json).
  returned: always
  type: dict
  contains:
    patch:
      description: Name of the patch.
      type: str
    state:
      description: The state asked for.
      type: str
    generated:
      description: UTC time the report was made (ISO 8601).
      type: str
    summary:
      description: Number of hosts in total and per status.
      type: dict
    success:
      description: True when no host failed and none was unreachable.
      type: bool
    build:
      description: The builder's C(built) and C(skipped) kernel releases.
      type: dict
    hosts:
      description: >-
        One entry per host, worst status first. Each has C(host), C(kernel_release),
        C(package_version), C(status), C(patch_state), C(transition_seconds), C(changed),
        C(gate), C(reason), C(rolled_back), C(verified) and C(taint).
      type: list
      elements: dict
  sample:
    patch: cve_2026_1234
    state: enabled
    generated: "2026-11-28T08:40:00Z"
    summary: {hosts: 2, failed: 0, unreachable: 0, skipped: 0, not_attempted: 0, ok: 2}
    success: true
    build: {built: ["6.1.0-56-amd64"], skipped: []}
    hosts:
      - host: web1
        kernel_release: 6.1.0-56-amd64
        package_version: 6.1.192-2
        status: ok
        patch_state: enabled
        transition_seconds: 1.2
        changed: true
        gate: null
        reason: null
        rolled_back: false
        verified: true
        taint: OEK
files:
  description: The files written, by format.
  returned: always
  type: dict
  sample:
    json: /srv/report/report.json
    junit: /srv/report/report.xml
    html: /srv/report/report.html
success:
  description: Same as RV(report.success).
  returned: always
  type: bool
  sample: true
query_result:
  description: The answer to O(query).
  returned: when O(query) is given
  type: raw
  sample: ["web3"]
"""
