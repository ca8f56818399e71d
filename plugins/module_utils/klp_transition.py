# Copyright: klp.livepatch developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Changing a patch's state on a target: one change at a time (`ChangeLock`), the
transition run with its timeout, stall report and revert (`PatchRunner`)."""

import errno
import fcntl
import os
import time

from ansible_collections.klp.livepatch.plugins.module_utils.klp_errors import KlpError
from ansible_collections.klp.livepatch.plugins.module_utils.klp_kernel import (
    KLP_PATCHED,
    KLP_UNPATCHED,
    Target,
    format_state,
)
from ansible_collections.klp.livepatch.plugins.module_utils.klp_modfile import sha256_file

CHANGE_LOCK = "run/klp-livepatch.lock"


class ChangeLock:
    """One livepatch change at a time on a host (two playbook runs, or AWX slices that
    overlap): an exclusive flock on CHANGE_LOCK, waited for up to `timeout` seconds.
    The file holds the holder's pid and start time for the message of whoever waits."""

    def __init__(self, target, host, timeout):
        self.t = target
        self.host = host
        self.timeout = timeout
        self.fd = None

    def __enter__(self):
        path = self.t.path(CHANGE_LOCK)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = self.t.clock() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            if self.t.clock() >= deadline:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise KlpError(
                    f"{self.host}: another klp.livepatch change is running ({holder}) and "
                    f"still held {path} after {self.timeout} s; nothing was changed - wait "
                    "for it to finish, then run again")
            self.t.sleep(0.5)
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.pwrite(fd, f"pid {os.getpid()} since {since}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc_info):
        os.ftruncate(self.fd, 0)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        return False


class KlpFailure(KlpError):
    """A failed state change, with the partial result (stalled tasks, timings) to return."""

    def __init__(self, msg, result):
        super().__init__(msg)
        self.result = result


def describe(target, name):
    """A readable one-line state of patch NAME for diff output and messages."""
    status = target.status(name)
    stored = os.path.exists(target.stored_path(name))
    loaded = name in target.loaded_modules()
    if status == "enabled":
        text = "enabled (transition complete)"
    elif status == "transition":
        text = "enabled (transition in progress)"
    elif status == "unpatching":
        text = "disabling (unpatch transition in progress)"
    elif status == "disabled":
        text = "disabled ({})".format(", ".join(
            (["module still loaded"] if loaded else ["not loaded"])
            + (["stored copy kept"] if stored else [])))
    else:
        text = "absent"
    return format_state(name, text)


def stall_report(name, host, stalled, seconds, action):
    lines = [f"{host}: livepatch {name} did not finish its transition within {seconds:.1f} s; "
             f"{len(stalled)} task(s) have not switched:"]
    for task in stalled[:20]:
        lines.append("  pid {} (tid {}) {} in: {}".format(
            task["pid"], task["tid"], task["comm"],
            " <- ".join(task["stack"][:6]) or "<stack unavailable>"))
    if len(stalled) > 20:
        lines.append(f"  ... and {len(stalled) - 20} more")
    lines.append(action)
    return "\n".join(lines)


class PatchRunner:
    """Bring one patch to a wanted state (enabled | disabled | absent)."""

    def __init__(self, target, host, check_mode=False, transition_timeout=60.0,
                 on_stall="revert", stall_timeout=300.0, warn=None, preflight="warn", functions=()):
        self.t = target
        self.preflight = preflight
        self.functions = list(functions)
        self.host = host
        self.check_mode = check_mode
        self.transition_timeout = transition_timeout
        self.on_stall = on_stall
        self.stall_timeout = stall_timeout
        self.warn = warn or (lambda msg: None)

    def _result(self, name, changed, before, **extra):
        patch = self.t.patch(name)
        predicted = extra.pop("predicted", None)
        result = {
            "changed": changed,
            "name": name,
            "state": predicted if self.check_mode else self.t.status(name),
            "patched": Target.patched_summary(patch),
            "transition_seconds": extra.pop("transition_seconds", None),
            "stalled_tasks": extra.pop("stalled_tasks", []),
            "replaced": extra.pop("replaced", []),
            "held_until_reboot": extra.pop("held_until_reboot", []),
            "module_path": extra.pop("module_path", None),
            "diff": {"before": before,
                     "after": extra.pop("after", None) or describe(self.t, name)},
        }
        result.update(extra)
        return result

    def _other_transition(self, name):
        for p in self.t.patches():
            if p["name"] != name and p["transition"]:
                raise KlpError(
                    "{}: livepatch {} is still in transition; the kernel accepts one "
                    "transition at a time. Wait for it (or deal with its stalled tasks) "
                    "and retry.".format(self.host, p["name"]))

    def _store(self, path, name):
        """Keep a copy of PATH as the stored module of NAME; True if anything changed."""
        dest = self.t.stored_path(name)
        if os.path.abspath(path) == os.path.abspath(dest):
            return False
        if os.path.exists(dest) and sha256_file(dest) == sha256_file(path):
            return False
        if self.check_mode:
            return True
        store = os.path.dirname(dest)
        if not os.path.isdir(store):
            os.makedirs(store, 0o700)
            os.chmod(store, 0o700)  # makedirs' mode is filtered by the umask
        tmp = dest + ".tmp"
        with open(path, "rb") as src, open(tmp, "wb") as out:
            out.write(src.read())
        os.chmod(tmp, 0o600)
        os.rename(tmp, dest)
        return True

    # ---- enabled
    def enable(self, info, params=None):
        name = info["name"]
        before = describe(self.t, name)
        status = self.t.status(name)
        loaded = name in self.t.loaded_modules()
        loaded_id = self.t.module_build_id(name) if loaded else None
        same_build = (loaded_id is None or info["build_id"] is None
                      or loaded_id == info["build_id"])
        if status == "transition" and same_build:
            # Someone else's load of this very patch is still switching tasks.
            return self._finish_transition(name, before, info, params_changed=False)
        if status == "enabled" and same_build:
            stored = self._store(info["path"], name)
            return self._result(name, stored, before, predicted="enabled",
                                transition_seconds=0.0,
                                module_path=self._module_path(info, name))
        blocking = self._preflight()
        if blocking and self.preflight == "skip":
            return self._result(name, False, before, predicted=status, blocking_tasks=blocking,
                                preflight_skipped=True, module_path=info["path"])
        if self.check_mode:
            return self._result(name, True, before, predicted="enabled",
                                module_path=info["path"], blocking_tasks=blocking,
                                after=format_state(name, "enabled (transition complete)"))
        self._other_transition(name)
        if status in ("enabled", "transition", "unpatching"):
            # A different build under the same name: take the old one out first.
            self.warn("{}: replacing loaded build {} of {} by build {} (the patch is "
                      "briefly not applied; prefer a new name with atomic replace)".format(
                          self.host, loaded_id, name, info["build_id"]))
            finished, _s = self.t.disable(name, self.transition_timeout)
            if not finished:
                raise KlpError(f"{self.host}: could not disable the loaded build of {name} "
                               f"within {self.transition_timeout} s")
        if name in self.t.loaded_modules():
            if self.t.held_for_good(name):
                raise KlpError(
                    f"{self.host}: the module of the earlier build of {name} stays loaded "
                    "until reboot (its transition was forced), so a build under the same "
                    "name cannot load; load it under a new name with atomic replace")
            self.t.rmmod(name)
            self.t.wait_unloaded(name)
        active_before = set(self.t.patch_names())
        started = self.t.clock()
        self.t.insmod(info["path"], params)
        if self.t.patch(name) is None:
            log = self.t.kernel_log(name)
            if name in self.t.loaded_modules():
                self.t.rmmod(name)
            raise KlpError("{}: {} loaded but registered no livepatch named {}{}".format(
                self.host, info["path"], name, ("; kernel log: " + " | ".join(log))
                if log else ""))
        result = self._finish_transition(name, before, info, params_changed=True,
                                         started=started)
        result["replaced"], result["held_until_reboot"] = self.t.unload_replaced(
            active_before, keep=name)
        if result["held_until_reboot"]:
            self.warn(f"{self.host}: {', '.join(result['held_until_reboot'])} replaced, but "
                      "a forced transition holds the module(s) loaded until reboot")
        result["blocking_tasks"] = blocking
        return result

    def _preflight(self):
        """Tasks asleep in the functions the patch replaces: they may hold the transition."""
        if self.preflight == "off" or not self.functions:
            return []
        blocking = self.t.tasks_in_functions(self.functions)
        if blocking:
            self.warn("{}: {} asleep in {}; the transition may stall{}".format(
                self.host, ", ".join(sorted({t["comm"] for t in blocking})),
                ", ".join(sorted({t["function"] for t in blocking})),
                " (preflight=skip: not loading)" if self.preflight == "skip" else ""))
        return blocking

    def _finish_transition(self, name, before, info, params_changed, started=None):
        """Wait for NAME's transition; the time counts from STARTED (before insmod)."""
        if started is None:
            started = self.t.clock()
        finished, _s = self.t.wait_transition(name, self.transition_timeout)
        seconds = self.t.clock() - started
        stalled = []
        forced = False
        if not finished:
            stalled = self.t.stalled_tasks(KLP_PATCHED)
            finished = self.t.transition_over(name, enabled=True)  # during that read
        if not finished:
            if self.on_stall == "wait":
                self.warn(stall_report(name, self.host, stalled, seconds,
                                       f"waiting up to {self.stall_timeout} s more "
                                       "(on_stall=wait)"))
                finished, more = self.t.wait_transition(name, self.stall_timeout)
                seconds += more
                if not finished:
                    stalled = self.t.stalled_tasks(KLP_PATCHED)
            elif self.on_stall == "force":
                self.warn(stall_report(
                    name, self.host, stalled, seconds,
                    "forcing the transition (on_stall=force): the listed tasks switch "
                    "without a consistency check; the modules of the patches it replaces "
                    "stay loaded until reboot"))
                forced = self.t.force(name)
                finished, more = self.t.wait_transition(name, self.transition_timeout)
                seconds += more
                forced = forced and finished
        if not finished:
            start = self.t.clock()
            outcome = self.t.revert_transition(name, self.transition_timeout)
            finished = outcome == "completed"
        if not finished:
            revert_seconds = self.t.clock() - start
            reverted = outcome == "reverted"
            action = (f"reverted: the transition was reversed in {revert_seconds:.1f} s and "
                      f"{name} unloaded; the host is as before") if reverted else (
                f"the reverse transition did not finish within {self.transition_timeout} s "
                f"either; {name} is still loaded")
            result = self._result(name, True, before, transition_seconds=seconds,
                                  stalled_tasks=stalled, reverted=reverted,
                                  revert_seconds=revert_seconds, module_path=info["path"])
            raise KlpFailure(stall_report(name, self.host, stalled, seconds, action), result)
        stored = self._store(info["path"], name)
        return self._result(name, params_changed or stored, before,
                            transition_seconds=round(seconds, 3), stalled_tasks=stalled,
                            forced=forced, module_path=self._module_path(info, name))

    def _module_path(self, info, name):
        return info["path"] if self.check_mode else self.t.stored_path(name)

    # ---- disabled / absent
    def remove(self, name, keep_stored):
        before = describe(self.t, name)
        status = self.t.status(name)
        loaded = name in self.t.loaded_modules()
        # Off, but held by a forced transition: no run can unload it (not a change to make).
        held = [name] if loaded and self.t.held(name) else []
        stored = self.t.stored_path(name)
        drop_copy = not keep_stored and os.path.exists(stored)
        changed = status in ("enabled", "transition", "unpatching") or drop_copy \
            or (loaded and not held)
        predicted = "disabled" if keep_stored and os.path.exists(stored) or held else "absent"
        if not changed:
            return self._result(name, False, before, predicted=status,
                                held_until_reboot=held)
        if self.check_mode:
            return self._result(name, True, before, predicted=predicted,
                                after=format_state(name, predicted))
        seconds = 0.0
        if status in ("enabled", "transition", "unpatching"):
            patch = self.t.patch(name)
            if status == "transition":
                self.t.write("0", "sys/kernel/livepatch", name, "enabled")  # reverse
            elif patch and patch["enabled"]:
                self._other_transition(name)
                self.t.write("0", "sys/kernel/livepatch", name, "enabled")
            finished, seconds = self.t.wait_gone(name, self.transition_timeout)
            if not finished:
                stalled = self.t.stalled_tasks(KLP_UNPATCHED)
                finished = self.t.transition_over(name, enabled=False)  # during that read
            if not finished:
                finished = not self._reverse_unpatch(name)
            if not finished:
                back, _s = self.t.wait_transition(name, self.transition_timeout)
                result = self._result(name, True, before, transition_seconds=seconds,
                                      stalled_tasks=stalled, reverted=back)
                raise KlpFailure(stall_report(
                    name, self.host, stalled, seconds,
                    f"the unpatch transition was reversed; {name} stays enabled"
                    if back else "the reverse transition did not finish either"), result)
        if name in self.t.loaded_modules():
            if self.t.held_for_good(name):
                held = [name]
                self.warn(f"{self.host}: {name} is off, but a forced transition holds its "
                          "module loaded until reboot")
            else:
                held = []
                self.t.rmmod(name)
                self.t.wait_unloaded(name)
        if drop_copy:
            os.remove(stored)
        return self._result(name, True, before, transition_seconds=round(seconds, 3),
                            held_until_reboot=held)

    def _reverse_unpatch(self, name):
        """Turn a stalled unpatch back into patching; False when the unpatch ended first
        (the kernel refuses to enable a disabled patch again): then it is done."""
        try:
            self.t.write("1", "sys/kernel/livepatch", name, "enabled")
        except KlpError:
            if self.t.transition_over(name, enabled=False):
                return False
            raise
        return True
