#!/usr/bin/python
# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: patch
short_description: Load, enable, disable and remove kernel livepatch modules
version_added: 0.1.0
description:
  - Brings one kernel livepatch to the wanted state on the target and waits for the
    kernel's livepatch transition to finish.
  - With O(src), the action plugin computes the module's sha256 on the controller, reads
    the builder manifest C(NAME.json) beside it when there is one, and copies the module
    into the task's temporary directory on the target. The module replaces the stored
    copy in C(/var/lib/klp-livepatch/modules/RELEASE/) only when it is missing or
    different.
  - One run does everything a rollout needs from the host (one module call per host).
    It looks for tasks asleep in the functions to be patched (O(preflight)), changes
    the patch, returns the kernel log records written meanwhile (RV(kernel_log)) and
    the taint before and after, then runs the health probes (O(probes)).
  - Before loading, the module file is checked on the target. Its sha256 must match,
    it must be a livepatch module (C(livepatch=Y) in C(.modinfo)), its vermagic must
    match the running kernel (release and build options), and
    C(/sys/kernel/livepatch) must exist. A module that fails any check is refused and
    nothing is loaded.
  - V(disabled) turns the patch off and unloads its module but keeps the stored copy,
    so that V(enabled) can load it again by O(name) alone. The kernel frees a disabled
    patch, so it cannot be re-enabled through sysfs; enabling it again means loading
    the module again. V(absent) also deletes the stored copy.
  - When a patch built with atomic replace takes over, the modules of the patches it
    replaced are unloaded.
  - The options O(consistency) and O(park_kthreads) drive the patch-module hook that
    the klp.livepatch builder compiles into its modules. Modules built without that
    hook are refused when these options ask for it.
author:
  - klp.livepatch developers (@klp-livepatch)
options:
  src:
    description:
      - Path of the livepatch module (C(.ko)) on the controller. Relative paths are
        searched for like C(files/) of a role or playbook.
      - An optional builder manifest C(NAME.json) next to it is used to cross-check the
        module (C(module_sha256), C(module_name), C(vermagic), C(kernel_release),
        C(kernel_build_id)).
      - One of O(src) and O(name) is required.
    type: path
  name:
    description:
      - Name of the patch, the kernel module name (C(foo-bar.ko) loads as C(foo_bar),
        which is also its directory in C(/sys/kernel/livepatch)).
      - Without O(src), O(state=enabled) loads the copy stored by an earlier run.
    type: str
  state:
    description:
      - V(enabled) loads the module and waits for the patch transition to complete.
      - V(disabled) disables the patch, waits for the unpatch transition and unloads
        the module, keeping the stored copy.
      - V(absent) does the same and deletes the stored copy.
      - V(present) is V(enabled), the Ansible convention.
    type: str
    choices: [enabled, present, disabled, absent]
    default: enabled
  sha256:
    description:
      - Expected sha256 of the module file. Filled in by the action plugin from O(src);
        a file with another checksum is refused.
    type: str
  manifest:
    description:
      - Contents of the builder manifest. Filled in by the action plugin from the
        C(NAME.json) beside O(src).
    type: dict
  transition_timeout:
    description:
      - Seconds to wait for the livepatch transition (every task switched) before
        applying O(on_stall).
    type: int
    default: 60
  on_stall:
    description:
      - What to do when the transition has not finished after O(transition_timeout).
        In every case the stalled tasks (pid, command, kernel stack) are reported.
      - V(revert) reverses the transition (writes C(0) to C(enabled)), waits for it,
        unloads the module and fails the task; the host is as it was before.
      - V(wait) waits up to O(stall_timeout) more seconds, then reverts like V(revert).
        The host is never left in the middle of a transition.
      - V(force) writes C(1) to the patch's C(force) file. This is B(unsafe), because
        the stalled tasks switch without the consistency check. The kernel then never
        releases the modules of the patches an atomic replace replaced, as tasks may
        still run their code, so they stay loaded until reboot (RV(held_until_reboot)).
    type: str
    choices: [revert, wait, force]
    default: revert
  stall_timeout:
    description: Extra seconds to wait with O(on_stall=wait).
    type: int
    default: 300
  lock_timeout:
    description:
      - Seconds to wait for another klp.livepatch change on the same host to finish
        (two playbook runs at once, overlapping AWX slices). Changes take an exclusive
        lock on C(/run/klp-livepatch.lock). When it is still held after this time, the
        task fails naming the holder's pid and start time, and nothing is changed.
    type: int
    default: 600
  consistency:
    description:
      - V(freeze) asks the module's hook to freeze user space during the transition.
        The module must have been built with C(consistency=freeze) (its manifest says
        so). Otherwise the task fails before loading anything.
    type: str
    choices: [default, freeze]
    default: default
  freeze_timeout:
    description: Upper bound, in milliseconds, of the frozen window with O(consistency=freeze).
    type: int
    default: 2000
  park_kthreads:
    description:
      - Shell patterns of per-CPU smpboot kernel threads for the module's hook to park
        during the transition, for example C(ksoftirqd/*).
      - Only C(ksoftirqd/), C(cpuhp/) and C(rcuc/) threads can be parked. Other
        patterns are refused before loading.
    type: list
    elements: str
    default: []
  preflight:
    description:
      - Before loading, look for tasks whose kernel stack holds one of the functions the
        patch replaces (from the builder manifest). Such tasks can hold the transition
        back. See RV(blocking_tasks).
      - V(warn) reports them and loads anyway. V(skip) reports them and does not load;
        the result then has RV(preflight_skipped). V(off) does not look.
      - Only used with O(state=enabled) when the module is not loaded yet and a manifest
        lists the functions.
    type: str
    choices: ['off', warn, skip]
    default: warn
  probes:
    description:
      - Commands to run on the target after the change, for example a check that the fix
        is live. Each is split like a shell would split it but runs without a shell, like
        M(ansible.builtin.command). Not run in check mode.
      - A failing probe does not fail the task. Its exit status and output are in
        RV(probes), and the caller decides (the rollout role fails the host and may
        roll it back).
    type: list
    elements: str
    default: []
  persist:
    description:
      - V(true) makes the patch load again at every boot of the same kernel release.
        The stored copy is marked persistent, and a systemd unit
        (C(klp-livepatch.service)) loads early in boot the marked patches stored for
        the running kernel release. Patches built for other kernels are never loaded.
      - A crash-loop guard comes with it. Each boot that loads patches writes a
        C(pending) mark under C(/var/lib/klp-livepatch/boot/). The mark is cleared
        120 s after boot by C(klp-livepatch-ok.timer). If a boot finds the mark of the
        previous boot still there, it loads nothing and records the patches as
        C(skipped). They stay skipped until this module persists a patch again (see
        M(klp.livepatch.info)).
      - V(false) removes the mark. When this option is not set, persistence is left
        as it is. O(state=disabled) and O(state=absent) always remove the mark.
      - Patches replaced by an atomic-replace patch lose their mark.
      - The unit runs before C(sysinit.target), while devices are still being set
        up, so a persistent patch must be safe to apply that early. A patch that
        changes C(/proc/cmdline) would, for example, hide C(net.ifnames=0) from udev.
    type: bool
extends_documentation_fragment:
  - klp.livepatch.attributes
  - klp.livepatch.attributes.action
  - klp.livepatch.attributes.target
attributes:
  action:
    support: full
    details: The action plugin of the same name copies the module from the controller.
  async:
    description: Supports being used with the C(async) keyword.
    support: none
    details: Transitions are waited for within the task.
  check_mode:
    support: full
    details: >-
      Predicts the change from the module file and the kernel's sysfs without loading,
      unloading or storing anything.
  diff_mode:
    support: full
    details: Shows the patch's state before and after as one line each.
  platform:
    details: Linux targets with C(CONFIG_LIVEPATCH); tested on Debian 12 kernels.
notes:
  - Needs root on the target (C(become=true)).
  - Loading an unsigned module taints the kernel (C(E)); livepatching always taints it
    (C(K)). See RV(taint_after).
seealso:
  - module: klp.livepatch.info
  - module: klp.livepatch.preflight
  - module: klp.livepatch.build
"""

EXAMPLES = r"""
- name: Apply the CVE fix built for this host's kernel
  klp.livepatch.patch:
    src: "artifacts/{{ ansible_facts.kernel }}/cve-2026-1234.ko"
  become: true

- name: Apply it, giving busy hosts longer before reverting
  klp.livepatch.patch:
    src: "artifacts/{{ ansible_facts.kernel }}/cve-2026-1234.ko"
    transition_timeout: 180
    on_stall: revert
  become: true
  register: klp

- name: Show which tasks held a transition back
  ansible.builtin.debug:
    var: klp.stalled_tasks
  when: klp.stalled_tasks | length > 0

- name: Turn the patch off, keeping the module on the host
  klp.livepatch.patch:
    name: cve_2026_1234
    state: disabled
  become: true

- name: Turn it back on from the stored copy
  klp.livepatch.patch:
    name: cve_2026_1234
  become: true

- name: Remove the patch and its stored copy
  klp.livepatch.patch:
    name: cve_2026_1234
    state: absent
  become: true
"""

RETURN = r"""
name:
  description: Name of the patch (kernel module name).
  returned: always
  type: str
  sample: cve_2026_1234
state:
  description: >-
    State after the run: V(enabled), V(disabled) (module not loaded or freed patch, stored
    copy kept), V(absent), V(transition) or V(unpatching). In check mode, the predicted
    state.
  returned: always
  type: str
  sample: enabled
transition_seconds:
  description: Seconds the livepatch transition took (V(0.0) when nothing was loaded).
  returned: when a transition was waited for
  type: float
  sample: 1.21
stalled_tasks:
  description: Tasks that had not switched when O(transition_timeout) expired.
  returned: always
  type: list
  elements: dict
  sample:
    - pid: 412
      tid: 412
      comm: klp_sleeper
      patch_state: 0
      stack: ["[<0>] klp_sleeper_wait+0x2a/0x50 [klp_test_sleeper]"]
patched:
  description: Patched objects (C(vmlinux) or a module name) and their functions, from sysfs.
  returned: always
  type: dict
  sample: {"vmlinux": ["cmdline_proc_show"]}
replaced:
  description: >-
    Patches replaced by this atomic-replace patch. Their modules are unloaded, except those
    listed in RV(held_until_reboot), and they lose their boot mark.
  returned: always
  type: list
  elements: str
  sample: [cve_2026_1000]
held_until_reboot:
  description: >-
    Modules that are off but stay loaded until reboot: when a transition is forced
    (O(on_stall=force)), the kernel never releases the modules of the patches an atomic
    replace replaced, nor that of a patch whose unpatching was forced. A warning says so.
  returned: always
  type: list
  elements: str
  sample: []
module_path:
  description: Path of the module file that was checked or loaded on the target.
  returned: with O(state=enabled)
  type: str
  sample: /var/lib/klp-livepatch/modules/6.1.0-56-amd64/cve_2026_1234.ko
forced:
  description: Whether the transition was completed with O(on_stall=force).
  returned: with O(state=enabled) when the module was loaded
  type: bool
  sample: false
reverted:
  description: Whether a stalled transition was reversed.
  returned: on a stall
  type: bool
  sample: true
revert_seconds:
  description: Seconds the reverse transition and unload took.
  returned: on a stall while enabling
  type: float
  sample: 0.6
taint_before:
  description: Kernel taint before the run, from C(/proc/sys/kernel/tainted), decoded.
  returned: always
  type: dict
  sample: {"value": 0, "letters": "", "flags": []}
taint_after:
  description: Kernel taint after the run, decoded like RV(taint_before).
  returned: always
  type: dict
  sample:
    value: 45056
    letters: OEK
    flags:
      - {bit: 12, letter: O, description: externally-built (out-of-tree) module was loaded}
      - {bit: 13, letter: E, description: unsigned module was loaded}
      - {bit: 15, letter: K, description: kernel has been live patched}
missing_module:
  description: >-
    True when O(name) was given without O(src) and the target has no stored copy
    with the expected sha256. Pass O(src) to copy the module.
  returned: on that failure
  type: bool
  sample: true
blocking_tasks:
  description: Tasks found asleep in a function to be patched (see O(preflight)).
  returned: with O(state=enabled)
  type: list
  elements: dict
  sample:
    - {pid: 812, tid: 812, comm: cat, function: pipe_read, stack: ["[<0>] pipe_read+0x31e/0x440"]}
preflight_skipped:
  description: True when O(preflight=skip) found blocking tasks and nothing was loaded.
  returned: when that happened
  type: bool
  sample: true
kernel_log:
  description: >-
    Kernel log messages (from C(/dev/kmsg)) recorded while this task ran, at most the
    last 200. Not returned in check mode.
  returned: always
  type: list
  elements: str
  sample:
    - "livepatch: enabling patch 'cve_2026_1234'"
    - "livepatch: 'cve_2026_1234': patching complete"
probes:
  description: Result of each of O(probes), in order.
  returned: when O(probes) is given and the change succeeded
  type: list
  elements: dict
  sample:
    - {command: "grep -q klp.example=1 /proc/cmdline", rc: 0, stdout: "", stderr: ""}
persisted:
  description: Whether the patch is marked to load at boot (see O(persist)).
  returned: on success
  type: bool
  sample: false
release:
  description: Kernel release running on the target.
  returned: always
  type: str
  sample: 6.1.0-56-amd64
"""

import os
import platform
from contextlib import nullcontext

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.klp.livepatch.plugins.module_utils.klp_errors import KlpError
from ansible_collections.klp.livepatch.plugins.module_utils.klp_kernel import (
    Target,
    validate_park_kthreads,
)
from ansible_collections.klp.livepatch.plugins.module_utils.klp_modfile import (
    inspect_module,
    manifest_functions,
    module_name,
)
from ansible_collections.klp.livepatch.plugins.module_utils.klp_persist import Persistence
from ansible_collections.klp.livepatch.plugins.module_utils.klp_transition import (
    ChangeLock,
    KlpFailure,
    PatchRunner,
)

ARGUMENT_SPEC = {
    "src": {"type": "path"},
    "name": {"type": "str"},
    "state": {"type": "str", "choices": ["enabled", "present", "disabled", "absent"],
              "default": "enabled"},
    "sha256": {"type": "str"},
    "manifest": {"type": "dict"},
    "transition_timeout": {"type": "int", "default": 60},
    "on_stall": {"type": "str", "choices": ["revert", "wait", "force"], "default": "revert"},
    "stall_timeout": {"type": "int", "default": 300},
    "consistency": {"type": "str", "choices": ["default", "freeze"], "default": "default"},
    "freeze_timeout": {"type": "int", "default": 2000},
    "park_kthreads": {"type": "list", "elements": "str", "default": []},
    "persist": {"type": "bool"},
    "preflight": {"type": "str", "choices": ["off", "warn", "skip"], "default": "warn"},
    "probes": {"type": "list", "elements": "str", "default": []},
    "lock_timeout": {"type": "int", "default": 600},
}


def hook_parameters(module, info, manifest, host):
    """insmod parameters for the builder's patch-module hook, or a clear refusal."""
    p = module.params
    params = {}
    if p["consistency"] == "freeze":
        if (manifest or {}).get("consistency") != "freeze":
            raise KlpError(
                f"{host}: consistency=freeze is not supported by this module build of "
                f"{info['name']}: its manifest does not declare consistency: freeze. "
                "Rebuild with klp.livepatch.build consistency=freeze, or use "
                "consistency=default.")
        params["freeze_timeout_ms"] = str(p["freeze_timeout"])
    if p["park_kthreads"]:
        patterns = validate_park_kthreads(p["park_kthreads"])
        if "park_kthreads" not in info["parameters"]:
            raise KlpError(
                f"{host}: {info['name']} was built without the klp.livepatch hook "
                "(no park_kthreads module parameter); remove park_kthreads or rebuild "
                "the module with the klp.livepatch builder")
        params["park_kthreads"] = ",".join(patterns)
    return params


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        required_one_of=[("name", "src")],
        supports_check_mode=True,
    )
    p = module.params
    if p["state"] == "present":
        p["state"] = "enabled"  # the Ansible convention's word for it
    host = platform.node() or "target"
    target = Target(run_command=module.run_command,
                    get_bin_path=lambda tool: module.get_bin_path(tool, required=True))
    runner = PatchRunner(target, host, check_mode=module.check_mode,
                         transition_timeout=p["transition_timeout"], on_stall=p["on_stall"],
                         stall_timeout=p["stall_timeout"], warn=module.warn,
                         preflight=p["preflight"],
                         functions=manifest_functions(p["manifest"]))
    common = {"release": target.release}
    taint_before = target.taint()
    log_mark = None if module.check_mode else target.kernel_log_mark()
    try:
        # One change at a time per host; a dry run only reads.
        lock = nullcontext() if module.check_mode else ChangeLock(target, host,
                                                                  p["lock_timeout"])
        with lock:
            validate_park_kthreads(p["park_kthreads"])
            if p["state"] == "enabled":
                path = p["src"]
                if not path:
                    name = module_name(p["name"])
                    path = target.stored_path(name)
                    if not os.path.exists(path):
                        module.fail_json(
                            msg=f"{host}: no stored copy of livepatch {name} at {path}; pass "
                                "src (the .ko on the controller) to load it",
                            missing_module=True, **common)
                info = inspect_module(path)
                if p["sha256"] and info["sha256"] != p["sha256"].lower():
                    if not p["src"]:
                        module.fail_json(
                            msg=f"{host}: stored copy {path} has sha256 {info['sha256']}, not "
                                f"{p['sha256']}; pass src to replace it",
                            missing_module=True, **common)
                    module.fail_json(
                        msg=f"{host}: {path} has sha256 {info['sha256']} but {p['sha256']} was "
                            "expected: the copy is corrupt or not the module you meant; "
                            "nothing was loaded", **common)
                if p["name"] and module_name(p["name"]) != info["name"]:
                    module.fail_json(
                        msg=f"{host}: {path} is module {info['name']!r}, not {p['name']!r}",
                        **common)
                target.check_loadable(info, host)
                target.check_manifest(info, p["manifest"], host)
                result = runner.enable(info, hook_parameters(module, info, p["manifest"], host))
                persist = p["persist"]
            else:
                name = module_name(p["name"]) if p["name"] else inspect_module(p["src"])["name"]
                result = runner.remove(name, keep_stored=p["state"] == "disabled")
                persist = False
            boot = Persistence(target)
            if persist is not None or result.get("replaced"):
                if module.check_mode:
                    changed = persist is not None and boot.plan(result["name"], persist)
                else:
                    changed = boot.apply(result["name"], persist if persist is not None else
                                         result["name"] in boot.persisted(),
                                         drop=result.get("replaced", []))
                result["changed"] = result["changed"] or changed
            result["persisted"] = result["name"] in boot.persisted() if not module.check_mode \
                else bool(persist) if persist is not None else result["name"] in boot.persisted()
            if result["changed"] and not module.check_mode:
                os.sync()  # the stored copy and boot marks are on disk before we say so
    except KlpFailure as exc:
        result = exc.result
        result.pop("diff", None)
        result.pop("changed", None)
        module.fail_json(msg=str(exc), changed=not module.check_mode,
                         taint_before=taint_before, taint_after=target.taint(),
                         kernel_log=target.kernel_log_since(log_mark),
                         **dict(result, **common))
    except KlpError as exc:
        module.fail_json(msg=str(exc), taint_before=taint_before,
                         kernel_log=target.kernel_log_since(log_mark), **common)
    result.update(common)
    result["taint_before"] = taint_before
    result["taint_after"] = target.taint()
    result["kernel_log"] = target.kernel_log_since(log_mark)
    if p["probes"] and not module.check_mode and not result.get("preflight_skipped"):
        result["probes"] = target.run_probes(p["probes"])
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
