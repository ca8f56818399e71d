# SPDX-License-Identifier: GPL-3.0-or-later
"""The target-side core: names, taint, ELF/modinfo parsing, and the livepatch sysfs
state machine against a fake /sys + /proc tree driven by a fake kernel."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ansible_collections.klp.livepatch.plugins.module_utils import (
    klp_errors,
    klp_kernel,
    klp_modfile,
    klp_persist,
    klp_transition,
)

RELEASE = "6.1.0-56-amd64"
VERMAGIC = f"{RELEASE} SMP preempt mod_unload modversions "


# --------------------------------------------------------------------------- tables

@pytest.mark.parametrize(("given", "expected"), [
    ("foo-bar.ko", "foo_bar"),
    ("/var/lib/x/klp-cve-2026-1.ko", "klp_cve_2026_1"),
    ("already_normal", "already_normal"),
    ("with-dash", "with_dash"),
    ("mod.ko.xz", "mod"),
    ("mod.ko.zst", "mod"),
])
def test_module_name(given, expected):
    assert klp_modfile.module_name(given) == expected


@pytest.mark.parametrize(("value", "letters"), [
    (0, ""),
    (1 << 15, "K"),
    ((1 << 12) | (1 << 13) | (1 << 15), "OEK"),
    (1 << 0, "P"),
    ((1 << 9) | (1 << 7), "DW"),
    (1 << 18, "N"),
    (1 << 30, "?"),
])
def test_decode_taint(value, letters):
    decoded = klp_kernel.decode_taint(value)
    assert decoded["value"] == value
    assert decoded["letters"] == letters
    assert len(decoded["flags"]) == len(letters)


@pytest.mark.parametrize(("patterns", "ok"), [
    ([], True),
    (["ksoftirqd/*"], True),
    (["ksoftirqd/0", "cpuhp/1", "rcuc/*"], True),
    (["kworker/*"], False),
    (["*"], False),
    (["ksoftirqd/"], False),
    (["ksoftirqd/*", "migration/*"], False),
])
def test_park_kthreads_validation(patterns, ok):
    if ok:
        assert klp_kernel.validate_park_kthreads(patterns) == patterns
    else:
        with pytest.raises(klp_errors.KlpError, match="cannot be parked"):
            klp_kernel.validate_park_kthreads(patterns)


@pytest.mark.parametrize(("text", "release", "version"), [
    ("Linux version 6.1.0-56-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian "
     "12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP "
     "PREEMPT_DYNAMIC Debian 6.1.192-2 (2026-11-16)\n", RELEASE, "6.1.192-2"),
    ("Linux version 6.12.117+deb12-amd64 (x) #1 SMP Debian 6.12.117-1~deb12u1 (2026)",
     "6.12.117+deb12-amd64", "6.12.117-1~deb12u1"),
    ("Linux version 6.8.0 (me@host) #1 SMP", "6.8.0", None),
])
def test_parse_proc_version(text, release, version):
    assert klp_kernel.parse_proc_version(text) == {"release": release, "package_version": version}


# --------------------------------------------------------------------------- ELF

def note(owner: bytes, ntype: int, desc: bytes) -> bytes:
    def pad(b):
        return b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(owner) + 1, len(desc), ntype) + pad(owner + b"\0") + pad(desc)


def make_elf(sections: dict[str, bytes]) -> bytes:
    """A minimal ELF64 little-endian relocatable file with the given sections."""
    names = [""] + list(sections) + [".shstrtab"]
    shstrtab = b"\0"
    offsets = {"": 0}
    for n in names[1:]:
        offsets[n] = len(shstrtab)
        shstrtab += n.encode() + b"\0"
    body = b""
    placed = []
    data_start = 64
    for n in names[1:]:
        blob = shstrtab if n == ".shstrtab" else sections[n]
        placed.append((n, data_start + len(body), len(blob)))
        body += blob
    shoff = data_start + len(body)
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64,
                          len(names), len(names) - 1)
    shdrs = struct.pack("<IIQQQQIIQQ", *([0] * 10))
    for n, off, size in placed:
        shtype = 3 if n == ".shstrtab" else (7 if n.startswith(".note") else 1)
        shdrs += struct.pack("<IIQQQQIIQQ", offsets[n], shtype, 0, 0, off, size, 0, 0, 1, 0)
    return header + body + shdrs


def modinfo(**fields) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in fields.items())


def livepatch_ko(name="klp_demo", vermagic=VERMAGIC, livepatch=True, build_id=b"\x01" * 20,
                 extra=b""):
    fields = {"license": "GPL", "name": name, "vermagic": vermagic}
    if livepatch:
        fields["livepatch"] = "Y"
    return make_elf({
        ".modinfo": modinfo(**fields) + extra,
        ".gnu.linkonce.this_module": b"\0" * 64,
        ".note.gnu.build-id": note(b"GNU", 3, build_id),
    })


def test_inspect_synthetic_module(tmp_path):
    data = livepatch_ko(extra=b"parmtype=park_kthreads:charp\0")
    path = tmp_path / "klp-demo.ko"
    path.write_bytes(data)
    info = klp_modfile.inspect_module(str(path))
    assert info["name"] == "klp_demo"
    assert info["livepatch"] is True
    assert info["vermagic"] == VERMAGIC
    assert info["build_id"] == "01" * 20
    assert info["sha256"] == hashlib.sha256(data).hexdigest()
    assert info["parameters"] == ["park_kthreads"]


CORRUPTIONS = [
    ("empty", lambda d: b"", "bad magic"),
    ("not ELF", lambda d: b"MZ" + d[2:], "bad magic"),
    ("truncated", lambda d: d[: len(d) // 2], "truncated"),
    ("bad class", lambda d: d[:4] + b"\x07" + d[5:], "bad class"),
    ("text file", lambda d: b"#!/bin/sh\necho not a module\n" * 4, "bad magic"),
]


@pytest.mark.parametrize(("label", "corrupt", "message"), CORRUPTIONS,
                         ids=[c[0] for c in CORRUPTIONS])
def test_inspect_refuses_corrupt_files(tmp_path, label, corrupt, message):
    path = tmp_path / "bad.ko"
    path.write_bytes(corrupt(livepatch_ko()))
    with pytest.raises(klp_errors.KlpError, match=message):
        klp_modfile.inspect_module(str(path))


def test_inspect_refuses_elf_without_modinfo(tmp_path):
    path = tmp_path / "plain.o"
    path.write_bytes(make_elf({".text": b"\xc3"}))
    with pytest.raises(klp_errors.KlpError, match="not a kernel module"):
        klp_modfile.inspect_module(str(path))


def test_notes_and_build_id():
    blob = note(b"Linux", 6, b"6.1\0") + note(b"GNU", 3, bytes(range(20)))
    assert klp_modfile.parse_notes(blob)[0] == ("Linux", 6, b"6.1\0")
    assert klp_modfile.gnu_build_id(blob) == bytes(range(20)).hex()
    assert klp_modfile.gnu_build_id(note(b"Xen", 3, b"abcd")) is None


REAL_KO = sorted(Path("/tmp/study").glob(
    "linux-image-6.1.0-*-amd64-unsigned_*/lib/modules/*/kernel/net/key/af_key.ko"))


@pytest.mark.skipif(not REAL_KO, reason="needs an extracted Debian linux-image package")
def test_inspect_real_debian_module():
    info = klp_modfile.inspect_module(str(REAL_KO[0]))
    assert info["name"] == "af_key"
    assert info["livepatch"] is False
    assert info["vermagic"].split()[0].startswith("6.1.0-")
    assert "modversions" in info["vermagic"]
    assert len(info["build_id"]) == 40


# --------------------------------------------------------------------------- fake kernel

class FakeKernel:
    """A fake /sys + /proc tree and the livepatch behaviour of a 6.1 kernel.

    insmod creates the patch's sysfs directory with a transition that completes after
    `ticks` polls (never while a task is `stuck`), writing 0 to enabled reverses or
    starts an unpatch transition; a finished unpatch, or a patch replaced atomically,
    has its sysfs directory freed on the next tick and its module put on the one after.
    """

    def __init__(self, root: Path, ticks=3):
        self.root = root
        self.ticks = ticks
        self.now = 0.0
        self.modules: dict[str, dict] = {}  # name -> {"taints": "OEK", "info": {...}}
        self.pending: dict[str, int] = {}
        self.stuck: set[str] = set()  # patch names whose transitions never finish
        self.freeing: list[str] = []  # done patches whose sysfs directory the worker frees
        self.forced: set[str] = set()  # patches whose module livepatch never puts
        self.releasing: list[str] = []  # freed patches whose module is still held
        self.commands: list[list[str]] = []
        self.insmod_error: str | None = None
        for d in ("sys/kernel/livepatch", "proc/sys/kernel", "sys/module"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "proc/sys/kernel/tainted").write_text("0\n")
        self.sync_modules()

    # helpers
    def lp(self, name) -> Path:
        return self.root / "sys/kernel/livepatch" / name

    def sync_modules(self):
        lines = [f"{n} 16384 0 - Live 0x0 ({m['taints']})\n" if m["taints"]
                 else f"{n} 16384 0 - Live 0x0\n" for n, m in self.modules.items()]
        (self.root / "proc/modules").write_text("".join(lines))

    def add_task(self, pid, comm, patch_state=-1, stack=("[<0>] do_nanosleep+0x1/0x2",)):
        task = self.root / "proc" / str(pid) / "task" / str(pid)
        task.mkdir(parents=True, exist_ok=True)
        (task / "comm").write_text(comm + "\n")
        (task / "patch_state").write_text(f"{patch_state}\n")
        (task / "stack").write_text("".join(line + "\n" for line in stack))

    def set_task_states(self, state):
        for f in (self.root / "proc").glob("*/task/*/patch_state"):
            f.write_text(f"{state}\n")

    def taint(self, letters):
        value = int((self.root / "proc/sys/kernel/tainted").read_text())
        for bit, letter, _d in klp_kernel.TAINT_FLAGS:
            if letter in letters:
                value |= 1 << bit
        (self.root / "proc/sys/kernel/tainted").write_text(f"{value}\n")

    # the command runner
    def run_command(self, argv):
        self.commands.append(list(argv))
        tool = os.path.basename(argv[0])
        if tool == "insmod":
            if self.insmod_error:
                return 1, "", f"insmod: ERROR: could not insert module {argv[1]}: " \
                              f"{self.insmod_error}"
            info = klp_modfile.inspect_module(argv[1])
            name = info["name"]
            if name in self.modules:
                return 1, "", "insmod: ERROR: could not insert module: File exists"
            self.modules[name] = {"taints": "OEK", "info": info}
            notes = self.root / "sys/module" / name / "notes"
            notes.mkdir(parents=True, exist_ok=True)
            (notes.parent / "refcnt").write_text("1\n")  # held by its livepatch
            (notes / ".note.gnu.build-id").write_bytes(note(b"GNU", 3,
                                                            bytes.fromhex(info["build_id"])))
            d = self.lp(name)
            func = d / "vmlinux" / "cmdline_proc_show,1"
            func.mkdir(parents=True)
            (d / "vmlinux" / "patched").write_text("1\n")
            (d / "enabled").write_text("1\n")
            (d / "transition").write_text("1\n")
            (d / "force").write_text("")
            self.pending[name] = self.ticks
            self.set_task_states(0)
            self.taint("OEK")
            self.sync_modules()
            return 0, "", ""
        if tool == "rmmod":
            name = argv[1]
            if name not in self.modules:
                return 1, "", f"rmmod: ERROR: Module {name} is not currently loaded"
            if (self.root / "sys/module" / name / "refcnt").read_text().strip() != "0":
                return 1, "", f"rmmod: ERROR: Module {name} is in use"
            del self.modules[name]
            shutil.rmtree(self.root / "sys/module" / name, ignore_errors=True)
            self.sync_modules()
            return 0, "", ""
        if tool == "dmesg":
            return 0, "[ 1.0] livepatch: enabling patch\n", ""
        raise AssertionError(f"unexpected command {argv}")

    # the clock and the kernel's workqueue
    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        # klp_free_patch_async: a worker frees the directory, then puts the module.
        for name in self.releasing:
            if name not in self.forced:
                (self.root / "sys/module" / name / "refcnt").write_text("0\n")
        self.releasing = self.freeing
        for name in self.freeing:
            shutil.rmtree(self.lp(name))
        self.freeing = []
        for name in list(self.pending):
            d = self.lp(name)
            if not d.exists():
                self.pending.pop(name)
                continue
            enabled = (d / "enabled").read_text().strip() == "1"
            if (d / "force").read_text().strip() == "1":
                self.pending[name] = 0
            if name in self.stuck and (d / "force").read_text().strip() != "1":
                continue
            self.pending[name] -= 1
            if self.pending[name] > 0:
                continue
            self.pending.pop(name)
            (d / "transition").write_text("0\n")
            self.set_task_states(-1)
            if not enabled:
                self.freeing.append(name)
            elif self.modules.get(name, {}).get("replace"):
                # atomic replace: the others are disabled, their objects freed at once
                for other in self.root.joinpath("sys/kernel/livepatch").iterdir():
                    if other.name != name and other.name not in self.freeing:
                        (other / "enabled").write_text("0\n")
                        shutil.rmtree(other / "vmlinux")
                        self.freeing.append(other.name)


class FakeTarget(klp_kernel.Target):
    """Target whose sysfs writes start transitions in the fake kernel."""

    def __init__(self, kernel: FakeKernel, store: Path):
        super().__init__(root=str(kernel.root), run_command=kernel.run_command,
                         release=RELEASE, store=str(store), sleep=kernel.sleep,
                         clock=kernel.clock)
        self.kernel = kernel

    def write(self, value, *parts):
        d = self.kernel.lp(parts[-2])
        in_transition = d.exists() and (d / "transition").read_text().strip() == "1"
        if parts[-1] == "force" and not in_transition:
            raise klp_errors.KlpError(f"writing {value!r} to force failed: Invalid argument")
        if parts[-1] == "enabled" and value == "1" and not in_transition:
            raise klp_errors.KlpError(f"writing {value!r} to enabled failed: Invalid argument")
        super().write(value, *parts)
        if parts[-1] == "force":  # klp_force_transition marks the patches being removed
            if (d / "enabled").read_text().strip() == "0":
                self.kernel.forced.add(parts[-2])
            elif self.kernel.modules.get(parts[-2], {}).get("replace"):
                self.kernel.forced |= {p.name for p in d.parent.iterdir()} - {parts[-2]}
        if parts[-1] == "enabled":
            name = parts[-2]
            d = self.kernel.lp(name)
            (d / "transition").write_text("1\n")
            self.kernel.pending[name] = self.kernel.ticks
            if value == "0":
                self.kernel.stuck.discard(name)  # tasks still unpatched: the reverse is quick
            self.kernel.set_task_states(1 if value == "0" else 0)


@pytest.fixture
def kernel(tmp_path):
    return FakeKernel(tmp_path / "root")


@pytest.fixture
def target(kernel, tmp_path):
    return FakeTarget(kernel, tmp_path / "store")


@pytest.fixture
def ko(tmp_path):
    def make(name="klp_demo", **kw):
        path = tmp_path / "src" / f"{name}.ko"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(livepatch_ko(name=name, **kw))
        return klp_modfile.inspect_module(str(path))
    return make


def runner(target, **kw):
    warnings = []
    kw.setdefault("transition_timeout", 5)
    r = klp_transition.PatchRunner(target, "host1", warn=warnings.append, **kw)
    r.warnings = warnings
    return r


# --------------------------------------------------------------------------- state machine

def test_enable_then_idempotent(target, kernel, ko):
    info = ko()
    first = runner(target).enable(info)
    assert first["changed"] is True
    assert first["state"] == "enabled"
    assert first["patched"] == {"vmlinux": ["cmdline_proc_show"]}
    assert first["transition_seconds"] > 0
    assert first["diff"] == {"before": "patch klp_demo: absent\n",
                             "after": "patch klp_demo: enabled (transition complete)\n"}
    stored = Path(target.stored_path("klp_demo"))
    assert stored.exists() and oct(stored.parent.stat().st_mode & 0o777) == "0o700"
    second = runner(target).enable(klp_modfile.inspect_module(str(stored)))
    assert second["changed"] is False
    assert [c[0] for c in kernel.commands].count("insmod") == 1


def test_check_mode_changes_nothing(target, kernel, ko):
    info = ko()
    result = runner(target, check_mode=True).enable(info)
    assert result["changed"] is True
    assert result["state"] == "enabled"
    assert kernel.commands == []
    assert not Path(target.stored_path("klp_demo")).exists()
    assert target.status("klp_demo") == "absent"


def test_disable_enable_absent_cycle(target, kernel, ko):
    info = ko()
    runner(target).enable(info)
    res = runner(target).remove("klp_demo", keep_stored=True)
    assert res["changed"] is True and res["state"] == "disabled"
    assert "klp_demo" not in target.loaded_modules()
    assert not kernel.lp("klp_demo").exists()
    assert runner(target).remove("klp_demo", keep_stored=True)["changed"] is False
    # enable again from the stored copy
    res = runner(target).enable(klp_modfile.inspect_module(target.stored_path("klp_demo")))
    assert res["changed"] is True and res["state"] == "enabled"
    # check mode absent predicts without touching
    n = len(kernel.commands)
    res = runner(target, check_mode=True).remove("klp_demo", keep_stored=False)
    assert res["changed"] is True and res["state"] == "absent" and len(kernel.commands) == n
    res = runner(target).remove("klp_demo", keep_stored=False)
    assert res["changed"] is True and res["state"] == "absent"
    assert not Path(target.stored_path("klp_demo")).exists()
    assert runner(target).remove("klp_demo", keep_stored=False)["changed"] is False


def test_stall_reverts_and_names_the_task(target, kernel, ko):
    kernel.add_task(4242, "klp_sleeper", stack=("[<0>] klp_sleeper_wait+0x2a/0x50 [x]",
                                                "[<0>] kthread+0xe8/0x110"))
    kernel.add_task(1, "systemd")
    kernel.stuck.add("klp_demo")

    def insmod_and_stick(argv, _orig=kernel.run_command):
        rc = _orig(argv)
        if os.path.basename(argv[0]) == "insmod":
            # only the sleeper stays unpatched; systemd switched
            (kernel.root / "proc/1/task/1/patch_state").write_text("1\n")
        return rc

    target.run_command = insmod_and_stick
    r = runner(target, transition_timeout=2)
    with pytest.raises(klp_transition.KlpFailure) as exc:
        r.enable(ko())
    message = str(exc.value)
    assert "pid 4242" in message and "klp_sleeper" in message
    assert "klp_sleeper_wait" in message and "host is as before" in message
    assert [t["pid"] for t in exc.value.result["stalled_tasks"]] == [4242]
    assert exc.value.result["reverted"] is True
    assert "klp_demo" not in target.loaded_modules()
    assert not kernel.lp("klp_demo").exists()


def test_stall_force_completes(target, kernel, ko):
    kernel.add_task(7, "stuck")
    kernel.stuck.add("klp_demo")
    res = runner(target, transition_timeout=1, on_stall="force").enable(ko())
    assert res["forced"] is True and res["state"] == "enabled"
    assert (kernel.lp("klp_demo") / "force").read_text() == "1"
    assert [t["pid"] for t in res["stalled_tasks"]] == [7]


def test_stall_wait_then_succeeds(target, kernel, ko):
    kernel.ticks = 30  # 3 s at 0.1 s polls: longer than transition_timeout=1
    r = runner(target, transition_timeout=1, on_stall="wait", stall_timeout=10)
    res = r.enable(ko())
    assert res["state"] == "enabled" and res["transition_seconds"] >= 2.9
    assert r.warnings and "on_stall=wait" in r.warnings[0]


def end_transition_now(kernel, name):
    """The kernel's worker completes NAME's transition (one tick)."""
    kernel.stuck.discard(name)
    kernel.pending[name] = 1
    kernel.sleep(0)


def finish_while_reading_stalled_tasks(target, kernel, name):
    """The kernel's worker completes NAME's transition while the stalled tasks are read."""
    read = target.stalled_tasks

    def and_the_transition_ends(state):
        tasks = read(state)
        end_transition_now(kernel, name)
        return tasks

    target.stalled_tasks = and_the_transition_ends


@pytest.mark.parametrize("on_stall", ["revert", "force", "wait"])
def test_a_transition_that_ends_while_stalled_tasks_are_read_is_kept(
        target, kernel, ko, on_stall):
    """Writing 0 then would unpatch a finished patch, and force would be refused."""
    kernel.add_task(7, "stuck")
    kernel.stuck.add("klp_demo")
    finish_while_reading_stalled_tasks(target, kernel, "klp_demo")
    r = runner(target, transition_timeout=1, on_stall=on_stall)
    res = r.enable(ko())
    assert res["state"] == "enabled" and res["forced"] is False
    assert not r.warnings  # nothing waited for, forced or reverted
    assert target.patch("klp_demo")["enabled"] is True


def test_a_revert_finds_the_transition_ended(target, kernel, ko):
    kernel.stuck.add("klp_demo")
    original = target.revert_transition

    def ends_first(name, timeout):
        end_transition_now(kernel, name)
        return original(name, timeout)

    target.revert_transition = ends_first
    res = runner(target, transition_timeout=1).enable(ko())
    assert res["state"] == "enabled"


def test_force_after_the_transition_ended_is_not_an_error(target, kernel, ko):
    runner(target).enable(ko())
    assert target.force("klp_demo") is False
    assert target.patch("klp_demo")["enabled"] is True


def test_an_unpatch_that_ends_while_stalled_tasks_are_read_is_done(target, kernel, ko):
    runner(target).enable(ko())
    kernel.stuck.add("klp_demo")
    original = target.write

    def unpatch_sticks(value, *parts):
        original(value, *parts)
        if parts[-1] == "enabled" and value == "0":
            kernel.stuck.add(parts[-2])

    target.write = unpatch_sticks
    finish_while_reading_stalled_tasks(target, kernel, "klp_demo")
    res = runner(target, transition_timeout=1).remove("klp_demo", keep_stored=False)
    assert res["state"] == "absent"
    assert "klp_demo" not in target.loaded_modules()
    assert not Path(target.stored_path("klp_demo")).exists()


def load_with_replace(target, kernel, name):
    """Modules NAME loaded from now on are atomic-replace patches."""
    orig = kernel.run_command

    def insmod_replace(argv):
        rc = orig(argv)
        if os.path.basename(argv[0]) == "insmod":
            kernel.modules[name]["replace"] = True
        return rc

    target.run_command = insmod_replace


def forced_replace(target, kernel, ko):
    """klp_old loaded, then klp_new (atomic replace) whose transition had to be forced."""
    runner(target).enable(ko(name="klp_old"))
    kernel.add_task(7, "stuck")
    kernel.stuck.add("klp_new")
    load_with_replace(target, kernel, "klp_new")
    r = runner(target, transition_timeout=1, on_stall="force")
    return r, r.enable(ko(name="klp_new", build_id=b"\x02" * 20))


def test_a_forced_replace_reports_the_modules_it_cannot_unload(target, kernel, ko):
    """klp_force_transition marks the patches a replace replaces as forced: livepatch
    never puts their modules."""
    r, res = forced_replace(target, kernel, ko)
    assert res["forced"] is True and res["state"] == "enabled"
    assert res["replaced"] == ["klp_old"] and res["held_until_reboot"] == ["klp_old"]
    assert "klp_old" in target.loaded_modules() and target.patch_names() == ["klp_new"]
    assert any("until reboot" in w for w in r.warnings)


def test_removing_a_held_module_drops_its_copy(target, kernel, ko):
    forced_replace(target, kernel, ko)
    r = runner(target)
    res = r.remove("klp_old", keep_stored=False)
    assert res["changed"] is True and res["held_until_reboot"] == ["klp_old"]
    assert not Path(target.stored_path("klp_old")).exists()
    assert any("until reboot" in w for w in r.warnings)
    again = runner(target).remove("klp_old", keep_stored=False)  # nothing left to do
    assert again["changed"] is False and again["held_until_reboot"] == ["klp_old"]
    # the patch that was forced in is not held: it unloads when removed
    res = runner(target).remove("klp_new", keep_stored=False)
    assert res["state"] == "absent" and res["held_until_reboot"] == []


def test_failed_insmod_leaves_nothing(target, kernel, ko):
    kernel.insmod_error = "Invalid argument"
    with pytest.raises(klp_errors.KlpError, match="Invalid argument"):
        runner(target).enable(ko())
    assert target.status("klp_demo") == "absent"


def test_refuses_other_transition(target, kernel, ko):
    kernel.stuck.add("other")
    kernel.ticks = 1000
    kernel.run_command(["insmod", ko(name="other")["path"]])
    with pytest.raises(klp_errors.KlpError, match="other is still in transition"):
        runner(target).enable(ko())


def test_replaced_patches_are_unloaded(target, kernel, ko):
    runner(target).enable(ko(name="klp_old"))
    load_with_replace(target, kernel, "klp_new")
    res = runner(target).enable(ko(name="klp_new", build_id=b"\x02" * 20))
    assert res["replaced"] == ["klp_old"]
    assert "klp_old" not in target.loaded_modules()
    assert target.patch_names() == ["klp_new"]


def test_a_livepatch_module_loading_or_unloading_is_still_one(target, kernel):
    """/proc/modules adds + (loading) or - (unloading) inside the taint parentheses."""
    (kernel.root / "proc/modules").write_text(
        "klp_a 16384 1 - Loading 0xffffffffc0a00000 (OEK+)\n"
        "klp_b 16384 0 - Unloading 0xffffffffc0b00000 (OEK-)\n"
        "ext4 1007616 1 - Live 0xffffffffc0c00000\n"
        "plain 16384 0 - Loading 0xffffffffc0d00000 (+)\n")
    assert target.livepatch_modules() == ["klp_a", "klp_b"]
    assert target.loaded_modules()["klp_a"] == {"state": "Loading", "taints": "OEK"}
    assert target.loaded_modules()["plain"]["taints"] == ""


def test_a_patch_without_replace_keeps_the_others(target, kernel, ko):
    runner(target).enable(ko(name="klp_old"))
    res = runner(target).enable(ko(name="klp_new", build_id=b"\x02" * 20))
    assert res["replaced"] == []
    assert target.patch_names() == ["klp_new", "klp_old"]
    assert {"klp_new", "klp_old"} <= set(target.loaded_modules())


@pytest.mark.parametrize(("vermagic", "livepatch", "message"), [
    ("6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions ", True, "built for kernel"),
    ("", True, "built for kernel <unknown>"),
    (VERMAGIC, False, "not a livepatch module"),
])
def test_check_loadable_refusals(target, ko, vermagic, livepatch, message):
    with pytest.raises(klp_errors.KlpError, match=message):
        target.check_loadable(ko(vermagic=vermagic, livepatch=livepatch), "host1")


def test_check_loadable_needs_livepatch_sysfs(target, kernel, ko):
    shutil.rmtree(kernel.root / "sys/kernel/livepatch")
    with pytest.raises(klp_errors.KlpError, match="no livepatch support"):
        target.check_loadable(ko(), "host1")


def test_check_loadable_compares_full_vermagic(target, kernel, ko, tmp_path):
    ref = kernel.root / "lib/modules" / RELEASE / "kernel/net"
    ref.mkdir(parents=True)
    (ref / "ref.ko").write_bytes(livepatch_ko(name="ref", livepatch=False))
    target.check_loadable(ko(), "host1")  # same vermagic: fine
    with pytest.raises(klp_errors.KlpError, match="different build options"):
        target.check_loadable(ko(vermagic=f"{RELEASE} SMP mod_unload "), "host1")


@pytest.mark.parametrize(("sig_enforce", "lockdown", "secure_boot", "message"), [
    ("Y", None, None, r"enforces module signatures \(module.sig_enforce\)"),
    ("N", "none [integrity] confidentiality", b"\x06\x00\x00\x00\x01",
     r"is locked down \(integrity\) \(UEFI Secure Boot is on\)"),
    ("N", "none integrity [confidentiality]", None, r"is locked down \(confidentiality\),"),
    ("N", "[none] integrity confidentiality", b"\x06\x00\x00\x00\x00", None),
])
def test_an_unsigned_module_is_refused_where_the_kernel_would(
        target, kernel, ko, sig_enforce, lockdown, secure_boot, message):
    (kernel.root / "sys/module/module/parameters").mkdir(parents=True)
    (kernel.root / "sys/module/module/parameters/sig_enforce").write_text(sig_enforce + "\n")
    if lockdown:
        (kernel.root / "sys/kernel/security").mkdir(parents=True)
        (kernel.root / "sys/kernel/security/lockdown").write_text(lockdown + "\n")
    if secure_boot is not None:
        variable = kernel.root / klp_kernel.SECURE_BOOT_VARIABLE
        variable.parent.mkdir(parents=True)
        variable.write_bytes(secure_boot)
    if message is None:
        target.check_loadable(ko(), "host1")
        assert target.secure_boot() is False and target.lockdown() == "none"
        return
    with pytest.raises(klp_errors.KlpError, match=message) as refused:
        target.check_loadable(ko(), "host1")
    assert "livepatch_sign_key" in str(refused.value) and "docs/SIGNING.md" in str(refused.value)


@pytest.mark.parametrize(("key", "value"), [
    ("module_sha256", "0" * 64),
    ("kernel_release", "6.1.0-50-amd64"),
    ("module_name", "someone_else"),
])
def test_manifest_mismatch_refused(target, ko, key, value):
    with pytest.raises(klp_errors.KlpError, match=key):
        target.check_manifest(ko(), {key: value}, "host1")


def test_manifest_match_accepted(target, ko):
    info = ko()
    target.check_manifest(info, {"module_sha256": info["sha256"], "module_name": "klp_demo",
                                 "kernel_release": RELEASE, "vermagic": VERMAGIC}, "host1")


def test_patches_view_and_preflight(target, kernel, ko):
    runner(target).enable(ko())
    [patch] = target.patches()
    assert patch["enabled"] is True and patch["transition"] is False
    assert patch["objects"]["vmlinux"]["functions"] == [{"name": "cmdline_proc_show",
                                                         "sympos": 1}]
    assert patch["replace"] is None  # not exposed by 6.1 sysfs
    kernel.add_task(99, "cat", stack=("[<0>] cmdline_proc_show+0x10/0x30",
                                      "[<0>] seq_read_iter+0x11f/0x450"))
    kernel.add_task(98, "sleep", stack=("[<0>] hrtimer_nanosleep+0x8f/0x120",))
    found = target.tasks_in_functions(["cmdline_proc_show", "meminfo_proc_show"])
    assert [(t["pid"], t["function"]) for t in found] == [(99, "cmdline_proc_show")]


@pytest.mark.parametrize("listing_then_freed", [True, False],
                         ids=["freed after listing the patch", "freed before listing an object"])
def test_a_patch_freed_while_it_is_read_is_gone(target, kernel, ko, monkeypatch,
                                                listing_then_freed):
    """The kernel frees a disabled patch's sysfs directory from a worker: a read that
    the removal overtakes sees the patch gone, neither a stale view nor an error."""
    runner(target).enable(ko())
    patch_dir = kernel.lp("klp_demo")
    real_listdir = os.listdir

    def listdir_racing_the_kernel(path):
        inside = Path(path).parent == patch_dir
        if inside and not listing_then_freed and patch_dir.exists():
            shutil.rmtree(patch_dir)
        names = real_listdir(path)
        if Path(path) == patch_dir and listing_then_freed:
            shutil.rmtree(patch_dir)
        return names

    monkeypatch.setattr(klp_kernel.os, "listdir", listdir_racing_the_kernel)
    assert target.patch("klp_demo") is None
    assert target.wait_gone("klp_demo", timeout=1) == (True, 0.0)


@pytest.mark.parametrize("mode", ["warn", "skip", "off"])
def test_enable_preflight_modes(target, kernel, ko, mode):
    """A task asleep in a patched function: warn loads, skip does not, off does not look."""
    kernel.add_task(99, "cat", stack=("[<0>] cmdline_proc_show+0x10/0x30",))
    result = runner(target, preflight=mode, functions=["cmdline_proc_show"]).enable(ko())
    blocking = [(t["pid"], t["function"]) for t in result["blocking_tasks"]]
    assert blocking == ([] if mode == "off" else [(99, "cmdline_proc_show")])
    assert result.get("preflight_skipped", False) is (mode == "skip")
    assert target.status("klp_demo") == ("absent" if mode == "skip" else "enabled")
    assert result["changed"] is (mode != "skip")


def test_preflight_does_not_hold_back_a_loaded_patch(target, kernel, ko):
    runner(target).enable(ko())
    kernel.add_task(99, "cat", stack=("[<0>] cmdline_proc_show+0x10/0x30",))
    again = runner(target, preflight="skip", functions=["cmdline_proc_show"]).enable(ko())
    assert again["changed"] is False and "preflight_skipped" not in again


def test_manifest_functions_reads_both_layouts():
    objects = {"objects": {"vmlinux": [{"name": "b"}, {"name": "a"}], "ext4": ["c"]}}
    assert klp_modfile.manifest_functions(objects) == ["a", "b", "c"]
    patched = {"patched": {"vmlinux": {"functions": [{"name": "x"}]}}}
    assert klp_modfile.manifest_functions(patched) == ["x"]
    assert klp_modfile.manifest_functions(None) == []


def test_kernel_log_since_returns_only_new_records(tmp_path):
    """The mark skips what was logged before; records and continuation lines are parsed."""
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.write(write_end, b"6,1201,9000,-;livepatch: enabling patch 'x'\n"
                        b" SUBSYSTEM=module\n4,1202,9100,-;WARNING: CPU: 0 PID: 1 at x\n")
    assert klp_kernel.Target.kernel_log_since(read_end) == [
        "livepatch: enabling patch 'x'", "WARNING: CPU: 0 PID: 1 at x"]
    os.close(write_end)
    assert klp_kernel.Target.kernel_log_since(None) == []
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/kmsg").write_text("6,1,1,-;old record before the mark\n")
    mark = klp_kernel.Target(root=str(tmp_path)).kernel_log_mark()
    assert klp_kernel.Target.kernel_log_since(mark) == []


def test_run_probes_reports_each_command(target, kernel):
    def run_command(argv):
        if argv[0] == "missing-tool":
            raise FileNotFoundError(2, "No such file or directory", argv[0])
        return (0, "ok\n", "") if argv == ["grep", "-q", "a b", "/f"] else (1, "", "no")
    target.run_command = run_command
    results = target.run_probes(["grep -q 'a b' /f", "false", "missing-tool x"])
    assert [(r["command"], r["rc"]) for r in results] == [
        ("grep -q 'a b' /f", 0), ("false", 1), ("missing-tool x", 127)]
    assert "No such file" in results[2]["stderr"]


# --------------------------------------------------------------------------- persistence

def test_persistence_apply_and_guard(target, kernel, ko, tmp_path):
    runner(target).enable(ko())
    calls = []
    target.run_command = lambda argv: (calls.append(argv[1:]) or (0, "", ""))
    boot = klp_persist.Persistence(target)  # the units go under the fake root
    assert boot.plan("klp_demo", True) is True
    assert boot.apply("klp_demo", True) is True
    assert calls == [["daemon-reload"],
                     ["enable", "klp-livepatch.service", "klp-livepatch-ok.timer"]]
    assert boot.persisted() == ["klp_demo"] and boot.installed()
    script = Path(target.path(klp_persist.BOOT_SCRIPT))
    assert script.stat().st_mode & 0o111
    wants = kernel.root / "etc/systemd/system/sysinit.target.wants"
    wants.mkdir(parents=True)
    (wants / "klp-livepatch.service").symlink_to(klp_persist.BOOT_UNIT)
    assert boot.plan("klp_demo", True) is False
    assert boot.apply("klp_demo", True) is False
    assert boot.apply("klp_demo", False) is True and boot.persisted() == []
    assert boot.plan("klp_demo", False) is False


def run_boot_script(tmp_path, *args, insmod_rc=0, insmod_body=""):
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "insmod").write_text(f"#!/bin/sh\necho \"$1\" >> {tmp_path}/insmod.log\n"
                                   f"{insmod_body}exit {insmod_rc}\n")
    (bindir / "insmod").chmod(0o755)
    script = tmp_path / "boot.sh"
    script.write_text(klp_persist.BOOT_SCRIPT_TEXT % {
        "state": tmp_path / "state", "store": tmp_path / "store", "ok": 120, "script": script,
        "livepatch": tmp_path / "livepatch"})
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")
    return subprocess.run(["sh", str(script), *args], env=env, check=True,
                          capture_output=True, text=True)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_boot_script_crash_loop_guard(tmp_path):
    store = tmp_path / "store" / os.uname().release
    store.mkdir(parents=True)
    (store / "klp_a.ko").write_bytes(b"x")
    (store / "klp_a.persist").write_text("r\n")
    (store / "klp_other.ko").write_bytes(b"x")  # stored but not persistent
    state = tmp_path / "state"
    log = tmp_path / "insmod.log"

    run_boot_script(tmp_path, "load")  # boot 1 loads and marks pending
    assert log.read_text().split() == [str(store / "klp_a.ko")]
    assert (state / "pending").read_text().split() == ["klp_a"]
    run_boot_script(tmp_path, "ok")  # boot 1 reached boot-ok
    assert not (state / "pending").exists() and (state / "last-ok").exists()

    run_boot_script(tmp_path, "load")  # boot 2 loads again ... and never reaches ok
    assert len(log.read_text().split()) == 2
    proc = run_boot_script(tmp_path, "load")  # boot 3: the guard skips
    assert "skipping" in proc.stderr
    assert len(log.read_text().split()) == 2
    assert (state / "skipped").read_text().split() == ["klp_a"]
    run_boot_script(tmp_path, "load")  # boot 4: still skipped until re-armed
    assert len(log.read_text().split()) == 2


def test_boot_script_records_failed_loads(tmp_path):
    store = tmp_path / "store" / os.uname().release
    store.mkdir(parents=True)
    (store / "klp_b.persist").write_text("r\n")
    run_boot_script(tmp_path, "load", insmod_rc=1)
    assert (tmp_path / "state" / "failed").read_text().split() == ["klp_b"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs sh")
def test_boot_script_loads_after_the_last_transition_ended(tmp_path):
    """The kernel refuses a patch while another is in transition (EBUSY): each insmod
    waits for the one before it to finish switching tasks."""
    store = tmp_path / "store" / os.uname().release
    store.mkdir(parents=True)
    for name in ("klp_a", "klp_b"):
        (store / f"{name}.ko").write_bytes(b"x")
        (store / f"{name}.persist").write_text("r\n")
    # The fake insmod notes whether a transition was running, then starts its own,
    # which a background "worker" ends 0.5 s later.
    insmod_body = (
        f"lp={tmp_path}/livepatch\n"
        "if grep -qsx 1 $lp/*/transition; then echo busy >> $lp/../seen; fi\n"
        "n=$(basename \"$1\" .ko); mkdir -p $lp/$n; echo 1 > $lp/$n/transition\n"
        "(sleep 0.5; echo 0 > $lp/$n/transition) >/dev/null 2>&1 &\n")
    run_boot_script(tmp_path, "load", insmod_body=insmod_body)
    assert (tmp_path / "insmod.log").read_text().split() == [
        str(store / "klp_a.ko"), str(store / "klp_b.ko")]
    assert not (tmp_path / "seen").exists()


def test_one_change_at_a_time_per_host(target, kernel):
    """A second change waits for the lock, then gives up naming the holder, having
    changed nothing; once the first is done the lock is free again."""
    busy = r"host1: another klp.livepatch change is running \(pid \d+ since .*\) and still held"
    with klp_transition.ChangeLock(target, "host1", timeout=2):
        second = klp_transition.ChangeLock(target, "host1", timeout=2)
        with pytest.raises(klp_errors.KlpError, match=busy):
            second.__enter__()
        assert kernel.now >= 2  # it waited (on the fake clock) before giving up
    with klp_transition.ChangeLock(target, "host1", timeout=0):
        pass


def test_stale_stores_are_those_of_kernels_no_longer_installed(target, kernel, tmp_path):
    store = tmp_path / "store"
    for release in (RELEASE, "6.1.0-50-amd64", "6.1.0-40-amd64"):
        (store / release).mkdir(parents=True)
        (store / release / "fix.ko").write_bytes(b"x")
    (store / "6.1.0-40-amd64" / "fix.persist").write_text("")
    (kernel.root / "lib/modules/6.1.0-50-amd64").mkdir(parents=True)  # still installed
    assert target.stale_stores() == {"6.1.0-40-amd64": ["fix.ko", "fix.persist"]}


@pytest.mark.parametrize(("text", "expected"), [
    ('PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\nVERSION_ID="13"\n'
     'VERSION_CODENAME=trixie\nID=debian\n',
     {"id": "debian-13", "name": "Debian GNU/Linux 13 (trixie)"}),
    ('PRETTY_NAME="Debian GNU/Linux trixie/sid"\nID=debian\n',
     {"id": "debian", "name": "Debian GNU/Linux trixie/sid"}),
    ("", {"id": None, "name": None}),
])
def test_the_distribution_comes_from_os_release(text, expected):
    assert klp_kernel.parse_os_release(text) == expected
