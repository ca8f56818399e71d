# Copyright: klp.livepatch developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A target's kernel as klp.livepatch sees it: the livepatch sysfs state machine
(``/sys/kernel/livepatch/<patch>/{enabled,transition,force}`` with object and
function directories), per-task ``patch_state`` and stacks, taint, the module store,
and loading/unloading through ``insmod``/``rmmod``.

`Target` takes a ``root`` so that tests can point it at a fake ``/sys`` + ``/proc``
tree; commands run through a callable with the ``AnsibleModule.run_command``
signature.
"""

import errno
import os
import re
import shlex
import time

from ansible_collections.klp.livepatch.plugins.module_utils.klp_errors import KlpError
from ansible_collections.klp.livepatch.plugins.module_utils.klp_manifest import (
    check_module_file,
)
from ansible_collections.klp.livepatch.plugins.module_utils.klp_modfile import (
    gnu_build_id,
    inspect_module,
    module_name,
)

DEFAULT_STORE = "/var/lib/klp-livepatch/modules"
# UEFI's global variable: 4 bytes of attributes, then 1 when Secure Boot is on.
SECURE_BOOT_VARIABLE = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"

# /proc/sys/kernel/tainted bits (include/linux/panic.h, kernel/panic.c on 6.1).
TAINT_FLAGS = [
    (0, "P", "proprietary module was loaded"),
    (1, "F", "module was force loaded"),
    (2, "S", "kernel running on an out of specification system"),
    (3, "R", "module was force unloaded"),
    (4, "M", "processor reported a machine check exception"),
    (5, "B", "bad page referenced or unexpected page flags"),
    (6, "U", "taint requested by userspace application"),
    (7, "D", "kernel died recently (OOPS or BUG)"),
    (8, "A", "ACPI table overridden by user"),
    (9, "W", "kernel issued warning"),
    (10, "C", "staging driver was loaded"),
    (11, "I", "workaround for bug in platform firmware applied"),
    (12, "O", "externally-built (out-of-tree) module was loaded"),
    (13, "E", "unsigned module was loaded"),
    (14, "L", "soft lockup occurred"),
    (15, "K", "kernel has been live patched"),
    (16, "X", "auxiliary taint, defined for and used by distros"),
    (17, "T", "kernel was built with the struct randomization plugin"),
    (18, "N", "an in-kernel test has been run"),
]

# Per-CPU smpboot kernel threads that the patch-module hook (kmod/klp_hook.c) can
# park; it refuses anything else, and so do we, before loading.
PARKABLE_KTHREAD_PREFIXES = ("ksoftirqd/", "cpuhp/", "rcuc/")

# /proc/<pid>/patch_state values (include/linux/livepatch.h).
KLP_UNDEFINED = -1
KLP_UNPATCHED = 0
KLP_PATCHED = 1


# --------------------------------------------------------------------------- taint

def decode_taint(value):
    """Decode a /proc/sys/kernel/tainted value into letters and descriptions."""
    value = int(value)
    flags = []
    letters = ""
    for bit, letter, description in TAINT_FLAGS:
        if value & (1 << bit):
            letters += letter
            flags.append({"bit": bit, "letter": letter, "description": description})
    known = sum(1 << bit for bit, _letter, _desc in TAINT_FLAGS)
    for bit in range(64):
        if value & (1 << bit) and not known & (1 << bit):
            letters += "?"
            flags.append({"bit": bit, "letter": "?", "description": "unknown taint bit"})
    return {"value": value, "letters": letters, "flags": flags}


# --------------------------------------------------------------------------- helpers

def validate_park_kthreads(patterns):
    """Refuse patterns that could match anything but parkable per-CPU smpboot threads."""
    bad = [p for p in patterns
           if not any(p.startswith(prefix) and len(p) > len(prefix)
                      for prefix in PARKABLE_KTHREAD_PREFIXES)]
    if bad:
        raise KlpError(
            "park_kthreads: {} cannot be parked: only per-CPU smpboot threads park "
            "(patterns must start with {}, e.g. 'ksoftirqd/*'). Remove them; other "
            "kernel threads cannot be parked during a transition.".format(
                ", ".join(repr(p) for p in bad),
                ", ".join(repr(p) for p in PARKABLE_KTHREAD_PREFIXES)))
    return list(patterns)


def parse_proc_version(text):
    """Release and Debian package version from /proc/version."""
    release = None
    m = re.match(r"Linux version (\S+)", text)
    if m:
        release = m.group(1)
    # The package version follows "Debian" after the build number ("#1 SMP ... Debian
    # 6.1.192-2 (date)"); the compiler's own "(Debian 12.2.0-14)" comes earlier.
    versions = re.findall(r"#\d+ .*?Debian (\d[^\s)]*)", text)
    return {"release": release, "package_version": versions[-1] if versions else None}


def parse_os_release(text):
    """The distribution from /etc/os-release: {"id": "debian-13", "name": "Debian
    GNU/Linux 13 (trixie)"}; ids without a version stay bare, unknown is None."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    if "ID" not in values:
        return {"id": None, "name": None}
    major = values.get("VERSION_ID", "").split(".")[0]
    return {"id": values["ID"] + ("-" + major if major else ""),
            "name": values.get("PRETTY_NAME") or values["ID"]}


def format_state(name, state):
    """One readable line for diff output."""
    return f"patch {name}: {state}\n"


# --------------------------------------------------------------------------- target

class Target:
    """A target's kernel, seen through (root)/sys and (root)/proc."""

    def __init__(self, root="/", run_command=None, release=None, store=DEFAULT_STORE,
                 sleep=time.sleep, clock=time.monotonic, get_bin_path=None):
        self.root = root
        self.run_command = run_command
        self._release = release
        self.store_base = store
        self.sleep = sleep
        self.clock = clock
        self.get_bin_path = get_bin_path

    # ---- paths and small readers
    def path(self, *parts):
        return os.path.join(self.root, *[p.lstrip("/") for p in parts])

    @property
    def livepatch_dir(self):
        return self.path("sys/kernel/livepatch")

    def read(self, *parts):
        try:
            with open(self.path(*parts)) as f:
                return f.read()
        except OSError:
            return None

    def read_int(self, *parts):
        text = self.read(*parts)
        try:
            return int(text.strip()) if text is not None else None
        except ValueError:
            return None

    def write(self, value, *parts):
        path = self.path(*parts)
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            raise KlpError(f"writing {value!r} to {path} failed: {exc}") from exc

    @property
    def release(self):
        return self._release or os.uname()[2]

    def store_dir(self):
        return os.path.join(self.store_base, self.release)

    def stored_path(self, name):
        return os.path.join(self.store_dir(), name + ".ko")

    def stale_stores(self):
        """{release: [file names]} of stored copies for kernels no longer installed here
        (no /lib/modules/RELEASE): nothing can ever load them again."""
        try:
            releases = sorted(os.listdir(self.store_base))
        except OSError:
            return {}
        stale = {}
        for release in releases:
            directory = os.path.join(self.store_base, release)
            if (release == self.release or not os.path.isdir(directory)
                    or os.path.isdir(self.path("lib/modules", release))):
                continue
            stale[release] = sorted(os.listdir(directory))
        return stale

    # ---- kernel facts
    def kernel_build_id(self):
        """GNU build-id of the running kernel, from /sys/kernel/notes."""
        try:
            with open(self.path("sys/kernel/notes"), "rb") as f:
                return gnu_build_id(f.read())
        except OSError:
            return None

    def livepatch_supported(self):
        return os.path.isdir(self.livepatch_dir)

    def signatures_enforced(self):
        """True/False from module.sig_enforce; None when the kernel does not say."""
        value = (self.read("sys/module/module/parameters/sig_enforce") or "").strip()
        return {"Y": True, "N": False}.get(value)

    def lockdown(self):
        """Active lockdown mode (none, integrity, confidentiality), or None when unknown."""
        text = self.read("sys/kernel/security/lockdown")
        if text is None:
            return None
        m = re.search(r"\[(\w+)\]", text)
        return m.group(1) if m else text.strip()

    def secure_boot(self):
        """True/False from the SecureBoot EFI variable (its last byte), None without it."""
        try:
            with open(self.path(SECURE_BOOT_VARIABLE), "rb") as f:
                data = f.read()
        except OSError:
            return None
        return bool(data[-1]) if data else None

    def unsigned_refused_because(self):
        """Why this kernel will refuse an unsigned module, or None when it will load one."""
        if self.signatures_enforced():
            return "enforces module signatures (module.sig_enforce)"
        mode = self.lockdown()
        if mode in ("integrity", "confidentiality"):
            why = " (UEFI Secure Boot is on)" if self.secure_boot() else ""
            return f"is locked down ({mode}){why}, so only signed modules load"
        return None

    def taint(self):
        return decode_taint(self.read_int("proc/sys/kernel/tainted") or 0)

    def loaded_modules(self):
        """name -> {'state': Live|Loading|Unloading, 'taints': letters} from /proc/modules."""
        modules = {}
        for line in (self.read("proc/modules") or "").splitlines():
            fields = line.split()
            if len(fields) < 5:
                continue
            m = re.search(r"\(([A-Z]*)[+-]?\)", line)  # (OEK), or (OEK+) while loading
            modules[fields[0]] = {"state": fields[4], "taints": m.group(1) if m else ""}
        return modules

    def module_build_id(self, name):
        path = self.path("sys/module", name, "notes", ".note.gnu.build-id")
        try:
            with open(path, "rb") as f:
                return gnu_build_id(f.read())
        except OSError:
            return None

    def patch_names(self):
        try:
            return sorted(e for e in os.listdir(self.livepatch_dir)
                          if os.path.isdir(os.path.join(self.livepatch_dir, e)))
        except OSError:
            return []

    def patch(self, name):
        """Live view of one patch from sysfs, or None when it has no sysfs directory.

        The kernel frees a disabled patch's directory from a worker, so it can vanish
        while it is being read; that counts as gone, never as an error.
        """
        base = os.path.join(self.livepatch_dir, name)
        try:
            view = self._read_patch(name, base)
        except FileNotFoundError:
            return None
        return view if os.path.isdir(base) else None

    def _read_patch(self, name, base):
        objects = {}
        for obj in sorted(os.listdir(base)):
            obj_dir = os.path.join(base, obj)
            if not os.path.isdir(obj_dir):
                continue
            funcs = []
            for func in sorted(os.listdir(obj_dir)):
                if os.path.isdir(os.path.join(obj_dir, func)):
                    fname, _sep, sympos = func.partition(",")
                    funcs.append({"name": fname, "sympos": int(sympos or 0)})
            objects[obj] = {"patched": self.read_int("sys/kernel/livepatch", name, obj,
                                                     "patched") == 1,
                            "functions": funcs}
        replace = self.read_int("sys/kernel/livepatch", name, "replace")
        return {
            "name": name,
            "module": name,
            "enabled": self.read_int("sys/kernel/livepatch", name, "enabled") == 1,
            "transition": self.read_int("sys/kernel/livepatch", name, "transition") == 1,
            "replace": None if replace is None else replace == 1,
            "objects": objects,
        }

    def patches(self):
        return [p for p in (self.patch(n) for n in self.patch_names()) if p]

    @staticmethod
    def patched_summary(patch):
        """objects -> [function names] for return values."""
        if not patch:
            return {}
        return {obj: [f["name"] for f in o["functions"]]
                for obj, o in patch["objects"].items()}

    def livepatch_modules(self):
        """Loaded modules that carry the livepatch taint (K), whether active or not."""
        return sorted(n for n, m in self.loaded_modules().items() if "K" in m["taints"])

    def status(self, name):
        """Where patch NAME stands: absent | disabled | enabled | transition | unpatching.

        ``disabled`` covers both a stored copy that is not loaded and a module whose
        patch was disabled (the kernel frees it) but that is still loaded.
        """
        patch = self.patch(name)
        if patch:
            if patch["transition"]:
                return "transition" if patch["enabled"] else "unpatching"
            return "enabled" if patch["enabled"] else "unpatching"
        if name in self.loaded_modules() or os.path.exists(self.stored_path(name)):
            return "disabled"
        return "absent"

    # ---- tasks
    def tasks(self):
        """Yield (pid, tid) of every task."""
        proc = self.path("proc")
        try:
            pids = [e for e in os.listdir(proc) if e.isdigit()]
        except OSError:
            return
        for pid in pids:
            try:
                tids = [t for t in os.listdir(os.path.join(proc, pid, "task")) if t.isdigit()]
            except OSError:
                continue
            for tid in tids:
                yield int(pid), int(tid)

    def task_info(self, pid, tid):
        base = ("proc", str(pid), "task", str(tid))
        stack = [line.strip() for line in (self.read(*(base + ("stack",))) or "").splitlines()
                 if line.strip()]
        return {"pid": pid, "tid": tid,
                "comm": (self.read(*(base + ("comm",))) or "").strip(),
                "patch_state": self.read_int(*(base + ("patch_state",))),
                "stack": stack}

    def stalled_tasks(self, target_state):
        """Tasks still not switched to TARGET_STATE (KLP_PATCHED or KLP_UNPATCHED)."""
        stalled = []
        for pid, tid in self.tasks():
            state = self.read_int("proc", str(pid), "task", str(tid), "patch_state")
            if state is None or state in (KLP_UNDEFINED, target_state):
                continue
            stalled.append(self.task_info(pid, tid))
        return stalled

    def tasks_in_functions(self, functions):
        """Tasks whose kernel stack holds one of FUNCTIONS (preflight prediction)."""
        wanted = set(functions)
        found = []
        for pid, tid in self.tasks():
            stack = self.read("proc", str(pid), "task", str(tid), "stack") or ""
            for line in stack.splitlines():
                m = re.search(r"\]\s+([A-Za-z0-9_.$]+)\+0x", line) or \
                    re.search(r"^\s*([A-Za-z0-9_.$]+)\+0x", line)
                if not m:
                    continue
                sym = m.group(1).split(".")[0]
                if sym in wanted:
                    info = self.task_info(pid, tid)
                    info["function"] = sym
                    info.pop("patch_state", None)
                    found.append(info)
                    break
        return found

    # ---- waiting
    def wait_transition(self, name, timeout, poll=0.1):
        """Wait until NAME's transition ends. Returns (finished, seconds)."""
        start = self.clock()
        while True:
            patch = self.patch(name)
            if patch is None or not patch["transition"]:
                return True, self.clock() - start
            if self.clock() - start >= timeout:
                return False, self.clock() - start
            self.sleep(poll)

    def transition_over(self, name, enabled):
        """Whether NAME's transition towards ENABLED has ended: enabled and patched, or
        disabled (or already freed). The kernel retries a transition from a worker about
        once a second, so it can end while the caller was reading the stalled tasks."""
        patch = self.patch(name)
        if patch is None:
            return not enabled
        return patch["enabled"] == enabled and not patch["transition"]

    def wait_gone(self, name, timeout, poll=0.1):
        """Wait until NAME's sysfs directory disappears (unpatched and freed)."""
        start = self.clock()
        while self.patch(name) is not None:
            if self.clock() - start >= timeout:
                return False, self.clock() - start
            self.sleep(poll)
        return True, self.clock() - start

    # ---- commands
    def _run(self, tool, args):
        if self.run_command is None:
            raise KlpError("no command runner configured")
        binary = self.get_bin_path(tool) if self.get_bin_path else tool
        return self.run_command([binary] + list(args))

    def kernel_log(self, needle, lines=20):
        """Recent kernel log lines mentioning NEEDLE (best effort)."""
        try:
            rc, out, _err = self._run("dmesg", [])
        except Exception:
            return []
        if rc != 0:
            return []
        return [ln for ln in out.splitlines() if needle in ln][-lines:]

    def run_probes(self, commands):
        """Run each command (split like a shell would, no shell features); their results."""
        results = []
        for command in commands:
            try:
                rc, out, err = self.run_command(shlex.split(command))
            except (OSError, ValueError) as exc:  # not found, bad quoting
                rc, out, err = 127, "", str(exc)
            results.append({"command": command, "rc": rc, "stdout": out[-2000:],
                            "stderr": err[-2000:]})
        return results

    def kernel_log_mark(self):
        """An open /dev/kmsg positioned after the newest record, or None.

        Reading it later returns exactly the records logged since this call, so a
        health gate sees what the change itself made the kernel say.
        """
        try:
            fd = os.open(self.path("dev/kmsg"), os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            os.lseek(fd, 0, os.SEEK_END)
        except OSError:
            os.close(fd)
            return None
        return fd

    @staticmethod
    def kernel_log_since(mark, limit=200):
        """Messages of the records logged after MARK (closes it); [] without a mark."""
        if mark is None:
            return []
        lines = []
        try:
            while True:
                try:
                    record = os.read(mark, 8192)
                except BlockingIOError:
                    break  # no newer record
                except OSError as exc:
                    if exc.errno == errno.EPIPE:  # overwritten while reading: go on
                        continue
                    break
                if not record:
                    break
                # "prio,seq,usec,flags;message" lines, each maybe followed by " KEY=value"
                for line in record.decode("utf-8", "replace").splitlines():
                    header, sep, text = line.partition(";")
                    if sep and not line.startswith(" "):
                        lines.append(text)
        finally:
            os.close(mark)
        return lines[-limit:]

    def insmod(self, path, params=None):
        args = [path] + ["{}={}".format(*kv) for kv in sorted((params or {}).items())]
        rc, out, err = self._run("insmod", args)
        if rc != 0:
            name = module_name(path)
            log = self.kernel_log(name)
            raise KlpError("insmod {} failed (rc={}): {}{}".format(
                path, rc, (err or out).strip(),
                ("; kernel log: " + " | ".join(log)) if log else ""))

    def wait_released(self, name, timeout=10, poll=0.1):
        """Wait until nothing holds module NAME; False if something still does.

        Livepatch drops its reference to a patch module only after the patch's sysfs
        directory is gone, so an rmmod right after that could still find it in use.
        """
        start = self.clock()
        while (self.read_int("sys/module", name, "refcnt") or 0) > 0:
            if self.clock() - start >= timeout:
                return False
            self.sleep(poll)
        return True

    def held(self, name):
        """Whether module NAME is referenced although its patch is freed (see below)."""
        return self.patch(name) is None \
            and (self.read_int("sys/module", name, "refcnt") or 0) > 0

    def held_for_good(self, name, timeout=10):
        """Whether NAME's patch is freed but its module stays held: livepatch never puts
        the module of a patch whose transition was forced (klp_free_patch_finish), so it
        stays loaded until reboot."""
        return self.wait_gone(name, timeout)[0] and not self.wait_released(name, timeout)

    def rmmod(self, name, timeout=10):
        """rmmod NAME once nothing holds it."""
        self.wait_released(name, timeout)
        rc, out, err = self._run("rmmod", [name])
        if rc != 0:
            raise KlpError(f"rmmod {name} failed (rc={rc}): {(err or out).strip()}")

    def wait_unloaded(self, name, timeout=10, poll=0.1):
        start = self.clock()
        while name in self.loaded_modules():
            if self.clock() - start >= timeout:
                return False
            self.sleep(poll)
        return True

    # ---- checks before loading
    def reference_vermagic(self):
        """vermagic of a module shipped with the running kernel, if one can be found."""
        base = self.path("lib/modules", self.release, "kernel")
        for dirpath, _dirs, files in os.walk(base):
            for f in sorted(files):
                if f.endswith(".ko"):
                    try:
                        return inspect_module(os.path.join(dirpath, f))["vermagic"]
                    except KlpError:
                        continue
        return None

    def check_loadable(self, info, host="target"):
        """Refuse, with a clear message, a module this kernel must not load."""
        if not info["livepatch"]:
            raise KlpError(
                "{} is not a livepatch module (no 'livepatch=Y' in its .modinfo); "
                "refusing to load it on {}".format(info["path"], host))
        release = info["vermagic"].split(" ", 1)[0] if info["vermagic"] else ""
        if release != self.release:
            raise KlpError(
                "{} was built for kernel {} (vermagic {!r}) but {} runs {}: build the "
                "patch for {}".format(info["path"], release or "<unknown>",
                                      info["vermagic"], host, self.release, self.release))
        ref = self.reference_vermagic()
        if ref is not None and ref.split() != info["vermagic"].split():
            raise KlpError(
                "{} has vermagic {!r} but the modules of {}'s running kernel have {!r} "
                "(different build options or module versioning)".format(
                    info["path"], info["vermagic"], host, ref))
        if not self.livepatch_supported():
            raise KlpError(
                f"{host}: /sys/kernel/livepatch does not exist: kernel {self.release} has "
                "no livepatch support (CONFIG_LIVEPATCH)")
        refused = None if info.get("signed") else self.unsigned_refused_because()
        if refused:
            raise KlpError(
                "{} {} and {} is unsigned: build it with klp.livepatch.build "
                "sign_key/sign_cert (livepatch.yml: livepatch_sign_key, livepatch_sign_cert), "
                "using a key the kernel trusts - an enrolled MOK or the built-in keyring; "
                "see docs/SIGNING.md".format(host, refused, info["path"]))

    def check_manifest(self, info, manifest, host="target"):
        """Cross-check a builder manifest (NAME.json) with the file and this kernel."""
        if not manifest:
            return
        check_module_file(manifest, info)  # the same check the action plugin makes
        checks = [("kernel_release", self.release, f"{host}'s running kernel")]
        build_id = self.kernel_build_id()
        if build_id:
            checks.append(("kernel_build_id", build_id, f"{host}'s running kernel build-id"))
        for key, actual, what in checks:
            wanted = manifest.get(key)
            if wanted and actual and str(wanted).strip() != str(actual).strip():
                raise KlpError(
                    f"manifest of {info['name']} says {key}={wanted!r} but {what} is "
                    f"{actual!r}: the module, its manifest and the kernel do not belong "
                    "together; rebuild or fix the artifact")

    # ---- state changes
    def disable(self, name, timeout):
        """Write 0 to enabled and wait until the patch is unpatched and freed."""
        patch = self.patch(name)
        if patch is None:
            return True, 0.0
        if patch["enabled"]:
            self.write("0", "sys/kernel/livepatch", name, "enabled")
        return self.wait_gone(name, timeout)

    def revert_transition(self, name, timeout):
        """Reverse NAME's patching transition, wait for it and unload the module.

        Returns "reverted", "stuck" (the reverse did not finish within TIMEOUT) or
        "completed": the transition ended first. Writing 0 then would not reverse it but
        unpatch a finished patch, whose atomic replace has already freed the patches it
        replaced; so nothing is written.
        """
        patch = self.patch(name)
        if patch is not None and patch["enabled"]:
            if not patch["transition"]:
                return "completed"
            self.write("0", "sys/kernel/livepatch", name, "enabled")
        finished, _seconds = self.wait_gone(name, timeout)
        if not finished:
            return "stuck"
        if name in self.loaded_modules():
            self.rmmod(name)
            self.wait_unloaded(name)
        return "reverted"

    def force(self, name):
        """Force NAME's transition; False when it ended first (the kernel then refuses)."""
        try:
            self.write("1", "sys/kernel/livepatch", name, "force")
        except KlpError:
            patch = self.patch(name)
            if patch is None or not patch["transition"]:
                return False
            raise
        return True

    def unload_replaced(self, before, keep, timeout=10):
        """Unload the modules of the patches in BEFORE that an atomic replace replaced.

        A replaced patch is disabled when the transition ends, but a worker frees its
        sysfs directory later: one still listed as disabled is waited for, not kept.
        Returns (replaced, held): the replaced patches, and those of their modules that a
        forced transition holds until reboot.
        """
        loaded = set(self.livepatch_modules())
        replaced, held = [], []
        for name in sorted(before):
            if name == keep or name not in loaded:
                continue
            patch = self.patch(name)
            if patch is not None and (patch["enabled"]
                                      or not self.wait_gone(name, timeout)[0]):
                continue
            replaced.append(name)
            if self.held_for_good(name, timeout):
                held.append(name)
                continue
            self.rmmod(name)
        return replaced, held
