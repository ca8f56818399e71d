# Copyright: klp.livepatch developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one target-side core of klp.livepatch.

Everything that talks to a target's kernel about livepatches lives here: reading
kernel modules (ELF ``.modinfo`` and notes, pure Python), the livepatch sysfs state
machine (``/sys/kernel/livepatch/<patch>/{enabled,transition,force}`` with object
and function directories), per-task ``patch_state`` and stacks, taint decoding,
and loading/unloading through ``insmod``/``rmmod``. Modules (patch, info,
preflight) are thin front doors onto `Target`.

`Target` takes a ``root`` so that tests can point it at a fake ``/sys`` + ``/proc``
tree; commands run through a callable with the ``AnsibleModule.run_command``
signature.
"""

import errno
import fcntl
import hashlib
import os
import re
import shlex
import struct
import time

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


class KlpError(Exception):
    """A target-side failure with a message fit for a user."""


# --------------------------------------------------------------------------- names

def module_name(path_or_name):
    """Kernel module name of a file or name: ``/x/foo-bar.ko`` -> ``foo_bar``."""
    base = os.path.basename(str(path_or_name))
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


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


# --------------------------------------------------------------------------- ELF

_ELF_MAGIC = b"\x7fELF"


def elf_sections(data):
    """Map section name -> (offset, size) of an ELF file's section headers."""
    if len(data) < 64 or data[:4] != _ELF_MAGIC:
        raise KlpError("not an ELF file (bad magic)")
    elfclass, endian = data[4], data[5]
    if elfclass not in (1, 2) or endian not in (1, 2):
        raise KlpError("not an ELF file (bad class or byte order)")
    e = "<" if endian == 1 else ">"
    try:
        if elfclass == 2:
            shoff, = struct.unpack_from(e + "Q", data, 0x28)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x3A)
            shfmt = e + "IIQQQQIIQQ"
        else:
            shoff, = struct.unpack_from(e + "I", data, 0x20)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x2E)
            shfmt = e + "IIIIIIIIII"
        if shentsize < struct.calcsize(shfmt) or shoff + shnum * shentsize > len(data):
            raise KlpError("truncated ELF file (section headers past the end)")
        headers = []
        for i in range(shnum):
            fields = struct.unpack_from(shfmt, data, shoff + i * shentsize)
            headers.append((fields[0], fields[1], fields[4], fields[5]))  # name, type, off, size
        if shstrndx >= shnum:
            raise KlpError("corrupt ELF file (bad section name table index)")
        str_off, str_size = headers[shstrndx][2], headers[shstrndx][3]
        if str_off + str_size > len(data):
            raise KlpError("truncated ELF file (section names past the end)")
        sections = {}
        for name_off, sh_type, off, size in headers:
            end = data.find(b"\0", str_off + name_off, str_off + str_size)
            if end < 0:
                raise KlpError("corrupt ELF file (unterminated section name)")
            name = data[str_off + name_off:end].decode("ascii", "replace")
            if sh_type != 8 and off + size > len(data):  # 8 = SHT_NOBITS
                raise KlpError(f"truncated ELF file (section {name} past the end)")
            sections[name] = (off, size)
        return sections
    except struct.error:
        raise KlpError("truncated ELF file") from None


def parse_modinfo(blob):
    """Parse a ``.modinfo`` section: NUL-separated ``key=value``. Repeated keys -> list."""
    info = {}
    for entry in blob.split(b"\0"):
        if b"=" not in entry:
            continue
        key, value = entry.split(b"=", 1)
        key, value = key.decode("ascii", "replace"), value.decode("utf-8", "replace")
        if key in info:
            if not isinstance(info[key], list):
                info[key] = [info[key]]
            info[key].append(value)
        else:
            info[key] = value
    return info


def parse_notes(blob, endian="<"):
    """Parse an ELF note blob into a list of (owner, type, desc bytes)."""
    notes = []
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from(endian + "III", blob, pos)
        pos += 12
        name = blob[pos:pos + namesz].rstrip(b"\0").decode("ascii", "replace")
        pos += (namesz + 3) & ~3
        desc = blob[pos:pos + descsz]
        pos += (descsz + 3) & ~3
        if len(desc) != descsz:
            break
        notes.append((name, ntype, desc))
    return notes


def gnu_build_id(notes_blob):
    """The GNU build-id (hex) in an ELF note blob, or None."""
    for owner, ntype, desc in parse_notes(notes_blob):
        if owner == "GNU" and ntype == 3:  # NT_GNU_BUILD_ID
            return desc.hex()
    return None


# The trailer scripts/sign-file appends to a signed module.
MODULE_SIGNATURE_MARKER = b"~Module signature appended~\n"


def inspect_module(path):
    """Read a kernel module file: sha256, name, vermagic, livepatch flag, build-id, modinfo."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KlpError(f"cannot read kernel module {path}: {exc}") from exc
    sha = hashlib.sha256(data).hexdigest()
    try:
        sections = elf_sections(data)
    except KlpError as exc:
        raise KlpError(f"{path} is not a usable kernel module: {exc} (sha256 {sha})") from exc
    if ".modinfo" not in sections or ".gnu.linkonce.this_module" not in sections:
        raise KlpError(f"{path} is an ELF file but not a kernel module (no .modinfo or "
                       ".gnu.linkonce.this_module section)")
    off, size = sections[".modinfo"]
    modinfo = parse_modinfo(data[off:off + size])
    build_id = None
    if ".note.gnu.build-id" in sections:
        off, size = sections[".note.gnu.build-id"]
        build_id = gnu_build_id(data[off:off + size])
    name = modinfo.get("name") or module_name(path)
    vermagic = modinfo.get("vermagic", "")
    return {
        "path": path,
        "sha256": sha,
        "size": len(data),
        "name": name if isinstance(name, str) else name[0],
        "vermagic": vermagic if isinstance(vermagic, str) else vermagic[0],
        "livepatch": modinfo.get("livepatch") == "Y",
        "build_id": build_id,
        "signed": data.endswith(MODULE_SIGNATURE_MARKER),
        "modinfo": modinfo,
        "parameters": sorted(_as_list(modinfo.get("parmtype"), lambda p: p.split(":", 1)[0])),
    }


def _as_list(value, fn=None):
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [fn(v) for v in values] if fn else values


def manifest_functions(manifest):
    """Sorted function names from a builder manifest's objects (or patched) mapping."""
    objects = (manifest or {}).get("objects") or (manifest or {}).get("patched") or {}
    names = set()
    for funcs in objects.values():
        for func in funcs if isinstance(funcs, list) else funcs.get("functions", []):
            names.add(func["name"] if isinstance(func, dict) else str(func))
    return sorted(names)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
            m = re.search(r"\(([A-Z]+)\)", line)
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
        """Live view of one patch from sysfs, or None when it has no sysfs directory."""
        base = os.path.join(self.livepatch_dir, name)
        if not os.path.isdir(base):
            return None
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

    def rmmod(self, name):
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
        checks = [
            ("module_sha256", info["sha256"], "the module file's sha256"),
            ("module_name", info["name"], "the module's name"),
            ("vermagic", info["vermagic"], "the module's vermagic"),
            ("kernel_release", self.release, f"{host}'s running kernel"),
        ]
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
        """Reverse an in-progress patching transition, wait for it, unload the module."""
        patch = self.patch(name)
        if patch is not None and patch["enabled"]:
            self.write("0", "sys/kernel/livepatch", name, "enabled")
        finished, seconds = self.wait_gone(name, timeout)
        if finished and name in self.loaded_modules():
            self.rmmod(name)
            self.wait_unloaded(name)
        return finished, seconds

    def force(self, name):
        self.write("1", "sys/kernel/livepatch", name, "force")

    def unload_replaced(self, before, keep):
        """rmmod livepatch modules whose patches were replaced (gone from sysfs)."""
        active = set(self.patch_names())
        loaded = set(self.livepatch_modules())
        unloaded = []
        for name in sorted(before):
            if name == keep or name in active or name not in loaded:
                continue
            self.rmmod(name)
            unloaded.append(name)
        return unloaded


# --------------------------------------------------------------------------- orchestration

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
        result["replaced"] = self.t.unload_replaced(active_before, keep=name)
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
                    "without a consistency check and the module can never be unloaded"))
                self.t.force(name)
                finished, more = self.t.wait_transition(name, self.transition_timeout)
                seconds += more
                forced = finished
        if not finished:
            start = self.t.clock()
            reverted, _rs = self.t.revert_transition(name, self.transition_timeout)
            revert_seconds = self.t.clock() - start
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
        stored = self.t.stored_path(name)
        drop_copy = not keep_stored and os.path.exists(stored)
        changed = status in ("enabled", "transition", "unpatching") or loaded or drop_copy
        predicted = "disabled" if keep_stored and os.path.exists(stored) else "absent"
        if not changed:
            return self._result(name, False, before, predicted=status)
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
                self.t.write("1", "sys/kernel/livepatch", name, "enabled")  # reverse back
                back, _s = self.t.wait_transition(name, self.transition_timeout)
                result = self._result(name, True, before, transition_seconds=seconds,
                                      stalled_tasks=stalled, reverted=back)
                raise KlpFailure(stall_report(
                    name, self.host, stalled, seconds,
                    f"the unpatch transition was reversed; {name} stays enabled"
                    if back else "the reverse transition did not finish either"), result)
        if name in self.t.loaded_modules():
            self.t.rmmod(name)
            self.t.wait_unloaded(name)
        if drop_copy:
            os.remove(stored)
        return self._result(name, True, before, transition_seconds=round(seconds, 3))


# --------------------------------------------------------------------------- persistence

BOOT_SCRIPT = "/usr/local/lib/klp-livepatch/klp-livepatch-boot"
BOOT_UNIT = "/etc/systemd/system/klp-livepatch.service"
BOOT_OK_UNIT = "/etc/systemd/system/klp-livepatch-ok.service"
BOOT_OK_TIMER = "/etc/systemd/system/klp-livepatch-ok.timer"
BOOT_STATE = "/var/lib/klp-livepatch/boot"
BOOT_OK_SECONDS = 120

BOOT_SCRIPT_TEXT = """#!/bin/sh
# Installed by klp.livepatch.patch (persist=true). Loads, early at boot, the livepatch
# modules marked persistent for the running kernel; "ok" marks the boot as healthy.
# Crash-loop guard: if the previous boot loaded patches and never reached "ok" (the
# klp-livepatch-ok.timer, %(ok)d s after boot), nothing is loaded and the names are
# recorded in %(state)s/skipped until klp.livepatch.patch persists a patch again.
set -u
state=%(state)s
dir=%(store)s/$(uname -r)
mkdir -p "$state"
case "${1:-load}" in
load)
    if [ -e "$state/pending" ]; then
        cat "$state/pending" >> "$state/skipped"
        rm -f "$state/pending"
        echo "klp-livepatch: previous boot loaded patches but did not reach boot-ok; skipping" >&2
        exit 0
    fi
    if [ -s "$state/skipped" ]; then
        echo "klp-livepatch: patches skipped by the crash-loop guard; not loading" >&2
        exit 0
    fi
    for marker in "$dir"/*.persist; do
        [ -e "$marker" ] || continue
        name=$(basename "$marker" .persist)
        echo "$name" >> "$state/pending"
        sync
        if insmod "$dir/$name.ko"; then
            echo "klp-livepatch: loaded $name" >&2
        else
            echo "$name" >> "$state/failed"
        fi
    done
    ;;
ok)
    rm -f "$state/pending"
    date +%%s > "$state/last-ok"
    ;;
esac
exit 0
"""

BOOT_UNIT_TEXT = """# Installed by klp.livepatch.patch (persist=true)
[Unit]
Description=Load persistent kernel livepatches (klp.livepatch)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target shutdown.target
Conflicts=shutdown.target
ConditionPathExists=%(script)s

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%(script)s load

[Install]
WantedBy=sysinit.target
"""

BOOT_OK_UNIT_TEXT = """# Installed by klp.livepatch.patch (persist=true)
[Unit]
Description=Mark this boot healthy for the klp.livepatch crash-loop guard

[Service]
Type=oneshot
ExecStart=%(script)s ok
"""

BOOT_OK_TIMER_TEXT = """# Installed by klp.livepatch.patch (persist=true)
[Unit]
Description=Mark this boot healthy for the klp.livepatch crash-loop guard

[Timer]
OnBootSec=%(ok)ds

[Install]
WantedBy=timers.target
"""


class Persistence:
    """Boot-time loading of stored patches for the running kernel, with a crash-loop guard."""

    def __init__(self, target):
        self.t = target

    def files(self):
        values = {"state": BOOT_STATE, "store": self.t.store_base, "ok": BOOT_OK_SECONDS,
                  "script": BOOT_SCRIPT}
        return [
            (BOOT_SCRIPT, BOOT_SCRIPT_TEXT % values, 0o755),
            (BOOT_UNIT, BOOT_UNIT_TEXT % values, 0o644),
            (BOOT_OK_UNIT, BOOT_OK_UNIT_TEXT % values, 0o644),
            (BOOT_OK_TIMER, BOOT_OK_TIMER_TEXT % values, 0o644),
        ]

    def marker(self, name):
        return os.path.join(self.t.store_dir(), name + ".persist")

    def persisted(self):
        try:
            return sorted(n[: -len(".persist")] for n in os.listdir(self.t.store_dir())
                          if n.endswith(".persist"))
        except OSError:
            return []

    def installed(self):
        return all(self.t.read(path) == text for path, text, _mode in self.files())

    def guard(self):
        def lines(name):
            return [ln for ln in (self.t.read(BOOT_STATE, name) or "").split() if ln]
        last_ok = (self.t.read(BOOT_STATE, "last-ok") or "").strip()
        return {"pending": lines("pending"), "skipped": lines("skipped"),
                "failed": lines("failed"), "last_ok": int(last_ok) if last_ok.isdigit() else None,
                "unit_enabled": os.path.lexists(self.t.path(
                    "etc/systemd/system/sysinit.target.wants/klp-livepatch.service"))}

    def plan(self, name, persist):
        """Whether persisting (or not) NAME would change anything."""
        has_marker = os.path.exists(self.marker(name))
        if persist:
            return (not has_marker or not self.installed() or bool(self.guard()["skipped"])
                    or not self.guard()["unit_enabled"])
        return has_marker

    def apply(self, name, persist, drop=()):
        """Make NAME persistent (installing the boot units) or not. True if changed."""
        changed = False
        for other in drop:
            if os.path.exists(self.marker(other)):
                os.remove(self.marker(other))
                changed = True
        if not persist:
            if os.path.exists(self.marker(name)):
                os.remove(self.marker(name))
                changed = True
            return changed
        for path, text, mode in self.files():
            if self.t.read(path) != text:
                full = self.t.path(path)
                if not os.path.isdir(os.path.dirname(full)):
                    os.makedirs(os.path.dirname(full), 0o755)
                with open(full + ".tmp", "w") as f:
                    f.write(text)
                os.chmod(full + ".tmp", mode)
                os.rename(full + ".tmp", full)
                changed = True
        if not os.path.exists(self.marker(name)):
            with open(self.marker(name), "w") as f:
                f.write(self.t.release + "\n")
            changed = True
        skipped = self.t.path(BOOT_STATE, "skipped")
        if os.path.exists(skipped):
            os.remove(skipped)  # a new decision by the operator re-arms the guard
            changed = True
        if not self.guard()["unit_enabled"]:
            self.t._run("systemctl", ["daemon-reload"])
            rc, out, err = self.t._run("systemctl", [
                "enable", "klp-livepatch.service", "klp-livepatch-ok.timer"])
            if rc != 0:
                raise KlpError(f"systemctl enable klp-livepatch.service failed: {err or out}")
            changed = True
        return changed
