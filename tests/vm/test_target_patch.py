# SPDX-License-Identifier: GPL-3.0-or-later
"""klp.livepatch.patch, info and preflight on a real Debian 12 kernel in a lab VM.

Test modules come from tests/fixtures/kmod (built against the VM kernel's headers,
under $KLP_CACHE) and go to the VM through ansible-playbook and the collection, the
way a user runs them. Each test is one playbook run (the guest's Python is slow under
emulation), whose tasks register results; the results come back as JSON and the test
asserts on them. The persistence test restarts the VM through the lab (a power cut
after a guest sync) to check the boot unit and its crash-loop guard.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "fixtures" / "kmod"))
import build as kmod_build  # noqa: E402 - the fixture builder lives beside the C sources

from tests.vm.expect import other_flavour, wrong_kernel_refusal  # noqa: E402
from tests.vm.playbook import (  # noqa: E402
    SLEEPER,
    STOP_SLEEPER,
    loaded_klp_modules,
    patch,
    playbook,
    task,
)

BAD_LOG = ("WARNING:", "Call Trace:", "BUG:", "Oops")


@pytest.fixture(scope="session")
def vm_facts(klp_inventory, amd64_host, collections_path, tmp_path_factory) -> dict:
    """klp.livepatch.info on the VM (also gives the Debian package version)."""
    tmp = tmp_path_factory.mktemp("info")
    res = playbook(klp_inventory, amd64_host, collections_path, tmp,
                   [task("info", {"klp.livepatch.info": {}})], {"keep": ["info"]})
    return res["info"]


@pytest.fixture(scope="session")
def kmods(vm_facts) -> Path:
    """Fixture modules built for the VM's kernel."""
    return kmod_build.build(vm_facts["kernel_release"], vm_facts["package_version"])


@pytest.fixture(scope="session")
def cloud_release(vm_release) -> str:
    """The VM's ABI in the cloud flavour (from the inventory): a kernel the VM does not run."""
    return other_flavour(vm_release)


@pytest.fixture(scope="session")
def cloud_kmods(vm_facts, cloud_release) -> Path:
    """The same modules built for the cloud flavour: the wrong kernel for the VM."""
    return kmod_build.build(cloud_release, vm_facts["package_version"])


def test_info_reports_kernel(vm_facts, vm_release):
    assert vm_facts["kernel_release"] == vm_release
    assert vm_facts["package_version"] and vm_facts["package_version"][0].isdigit()
    assert len(vm_facts["build_id"]) == 40
    assert vm_facts["livepatch_supported"] is True
    assert vm_facts["config_livepatch"] == "y"
    assert vm_facts["lockdown"] in ("none", "integrity", "confidentiality", None)


def test_lifecycle_idempotent_with_check_and_replace(
        klp_inventory, amd64_host, collections_path, kmods, tmp_path):
    cmdline = str(kmods / "klp_test_cmdline.ko")
    replace = str(kmods / "klp_test_replace.ko")
    cat = {"ansible.builtin.command": "cat /proc/cmdline", "changed_when": False}
    tasks = [
        {"name": "clear the kernel log", "ansible.builtin.command": "dmesg --clear",
         "changed_when": True},
        task("check_load", patch(src=cmdline), check_mode=True),
        task("after_check", loaded_klp_modules()),
        task("load", patch(src=cmdline), diff=True),
        task("cmd_loaded", cat),
        task("again", patch(src=cmdline, state="present")),  # the Ansible word for it
        task("check_absent", patch(name="klp_test_cmdline", state="absent"), check_mode=True),
        task("disable", patch(name="klp_test_cmdline", state="disabled"), diff=True),
        task("cmd_disabled", cat),
        task("disable_again", patch(name="klp_test_cmdline", state="disabled")),
        task("reenable", patch(name="klp_test_cmdline")),
        task("cmd_reenabled", cat),
        task("replace", patch(src=replace)),
        task("cmd_replaced", cat),
        task("after_replace", loaded_klp_modules()),
        task("info_live", {"klp.livepatch.info": {}}),
        task("absent_replace", patch(src=replace, state="absent")),
        task("absent_old", patch(name="klp_test_cmdline", state="absent")),
        task("absent_again", patch(name="klp_test_cmdline", state="absent")),
        task("cmd_absent", cat),
        task("after_absent", loaded_klp_modules()),
        task("store", {"ansible.builtin.find": {
            "paths": "/var/lib/klp-livepatch/modules", "recurse": True}}),
        task("log", {"ansible.builtin.command": "dmesg"}, changed_when=False),
    ]
    keep = [t["register"] for t in tasks if "register" in t]
    r = playbook(klp_inventory, amd64_host, collections_path, tmp_path, tasks, {"keep": keep})

    assert r["check_load"]["changed"] is True and r["check_load"]["state"] == "enabled"
    assert "klp_test" not in r["after_check"]["stdout"]
    load = r["load"]
    assert load["changed"] is True and load["state"] == "enabled"
    assert load["patched"] == {"vmlinux": ["cmdline_proc_show"]}
    assert "K" in load["taint_after"]["letters"]
    assert load["diff"]["before"].strip() == "patch klp_test_cmdline: absent"
    print(f"\nload + transition: {load['transition_seconds']} s")
    assert r["cmd_loaded"]["stdout"] == "klp_test_cmdline"
    assert r["again"]["changed"] is False and r["again"]["state"] == "enabled"
    assert r["check_absent"]["changed"] is True
    assert r["disable"]["changed"] is True and r["disable"]["state"] == "disabled"
    assert "klp_test_cmdline" not in r["cmd_disabled"]["stdout"]
    assert r["disable_again"]["changed"] is False
    assert r["reenable"]["changed"] is True and r["reenable"]["state"] == "enabled"
    assert r["cmd_reenabled"]["stdout"] == "klp_test_cmdline"
    assert r["replace"]["replaced"] == ["klp_test_cmdline"]
    assert r["cmd_replaced"]["stdout"] == "klp_test_replace"
    assert "klp_test_cmdline" not in r["after_replace"]["stdout"]
    assert [p["name"] for p in r["info_live"]["patches"]] == ["klp_test_replace"]
    assert r["absent_replace"]["changed"] is True and r["absent_replace"]["state"] == "absent"
    assert r["absent_old"]["changed"] is True  # its stored copy is removed
    assert r["absent_again"]["changed"] is False
    assert "klp_test" not in r["cmd_absent"]["stdout"]
    assert "klp_test" not in r["after_absent"]["stdout"]
    assert not [f for f in r["store"]["files"] if "klp_test" in f["path"]]
    assert not [line for line in r["log"]["stdout_lines"] if any(b in line for b in BAD_LOG)]


def test_prune_deletes_only_stores_of_removed_kernels(
        klp_inventory, amd64_host, collections_path, vm_release, tmp_path):
    """A store left by a kernel that is no longer installed goes; the running kernel's
    stays. Check mode only says so."""
    gone = "/var/lib/klp-livepatch/modules/0.0.0-removed-klp-test"
    mine = f"/var/lib/klp-livepatch/modules/{vm_release}"
    r = playbook(klp_inventory, amd64_host, collections_path, tmp_path, [
        {"name": "leave stores behind", "ansible.builtin.shell":
            f"mkdir -p {gone} {mine} && touch {gone}/old.ko {gone}/old.persist {mine}/keep.ko",
         "changed_when": True},
        task("predicted", {"klp.livepatch.prune": {}}, check_mode=True),
        task("pruned", {"klp.livepatch.prune": {}}),
        task("left", {
            "ansible.builtin.shell": f"test -e {mine}/keep.ko && echo kept; "
                                     f"test -e {gone} || echo gone",
            "changed_when": False}),
        {"name": "clean up",
         "ansible.builtin.file": {"path": f"{mine}/keep.ko", "state": "absent"}},
    ], {"keep": ["predicted", "pruned", "left"]})
    removed = {"0.0.0-removed-klp-test": ["old.ko", "old.persist"]}
    assert (r["predicted"]["changed"], r["predicted"]["removed"]) == (True, removed)
    assert (r["pruned"]["changed"], r["pruned"]["removed"]) == (True, removed)
    assert vm_release in r["pruned"]["kept"]
    assert r["left"]["stdout_lines"] == ["kept", "gone"]


def test_refusals_load_nothing(klp_inventory, amd64_host, collections_path, kmods,
                               cloud_kmods, vm_release, cloud_release, tmp_path):
    corrupt = tmp_path / "klp_test_corrupt.ko"
    data = (kmods / "klp_test_cmdline.ko").read_bytes()
    corrupt.write_bytes(data[: len(data) // 3])
    tasks = [
        {"name": "clear the kernel log", "ansible.builtin.command": "dmesg --clear",
         "changed_when": True},
        task("corrupt", patch(src=str(corrupt)), ignore_errors=True),
        task("wrong_kernel", patch(src=str(cloud_kmods / "klp_test_cmdline.ko")),
             ignore_errors=True),
        task("bad_callback", patch(src=str(kmods / "klp_test_badcb.ko")), ignore_errors=True),
        task("not_livepatch", patch(src=str(kmods / "klp_test_sleeper.ko")),
             ignore_errors=True),
        task("park", patch(src=str(kmods / "klp_test_cmdline.ko"),
                           park_kthreads=["kworker/*"]), ignore_errors=True),
        task("freeze", patch(src=str(kmods / "klp_test_cmdline.ko"), consistency="freeze"),
             ignore_errors=True),
        # Another change holds the host's lock (as a second playbook run would).
        # In a session of its own (the task's end must not take it down), and held
        # before the next task starts.
        {"name": "hold the change lock", "changed_when": False,
         "ansible.builtin.shell":
             "setsid -f flock /run/klp-livepatch.lock sleep 37 </dev/null >/dev/null 2>&1; "
             "for i in $(seq 50); do flock -n /run/klp-livepatch.lock true || exit 0; "
             "sleep 0.2; done; echo 'lock not taken' >&2; exit 1"},
        task("locked", patch(src=str(kmods / "klp_test_cmdline.ko"), lock_timeout=3),
             ignore_errors=True),
        {"name": "release the change lock", "changed_when": False,
         # [3]7: the pattern must not match this very shell's command line.
         "ansible.builtin.shell": "pkill -f 'sleep [3]7' || true"},
        # Should the lock not have held, leave nothing loaded for the next tests.
        {"name": "unload what a wrong load left", "ansible.builtin.shell":
             "! test -d /sys/kernel/livepatch/klp_test_cmdline || "
             "{ echo 0 > /sys/kernel/livepatch/klp_test_cmdline/enabled; sleep 5; "
             "rmmod klp_test_cmdline; }", "changed_when": False},
        task("after", loaded_klp_modules()),
        task("log", {"ansible.builtin.command": "dmesg"}, changed_when=False),
    ]
    keep = [t["register"] for t in tasks if "register" in t]
    r = playbook(klp_inventory, amd64_host, collections_path, tmp_path, tasks, {"keep": keep})
    for key, texts in [("corrupt", ["truncated"]),
                       ("wrong_kernel", wrong_kernel_refusal(cloud_release, vm_release)),
                       ("bad_callback", ["failed to enable patch 'klp_test_badcb'"]),
                       ("not_livepatch", ["not a livepatch module"]),
                       ("park", ["cannot be parked"]),
                       ("freeze", ["not supported by this module build"]),
                       ("locked", ["another klp.livepatch change is running",
                                   "still held /run/klp-livepatch.lock after 3 s"])]:
        assert r[key]["failed"] is True, key
        for text in texts:
            assert text in r[key]["msg"], (key, text, r[key]["msg"])
    assert "klp_test" not in r["after"]["stdout"]
    assert not [line for line in r["log"]["stdout_lines"] if any(b in line for b in BAD_LOG)]


def test_stall_is_reverted_and_names_the_task(klp_inventory, amd64_host, collections_path,
                                              kmods, tmp_path):
    sleeper = str(kmods / "klp_test_sleeper.ko")
    params = "/sys/module/klp_test_sleeper/parameters/release"
    tasks = [
        {"name": "clear the kernel log", "ansible.builtin.command": "dmesg --clear",
         "changed_when": True},
        {"name": "copy the sleeper module",
         "ansible.builtin.copy": {"src": sleeper, "dest": "/root/klp_test_sleeper.ko",
                                  "mode": "0600"}},
        {"name": "load the sleeper (a kthread in klp_sleeper_wait)",
         "ansible.builtin.command": "insmod /root/klp_test_sleeper.ko", "changed_when": True},
        task("preflight", {"klp.livepatch.preflight": {"functions": ["klp_sleeper_wait"]}}),
        task("stalled", patch(src=str(kmods / "klp_test_sleeper_patch.ko"),
                              transition_timeout=5), ignore_errors=True),
        task("after_revert", loaded_klp_modules()),
        {"name": "let the sleeper leave klp_sleeper_wait",
         "ansible.builtin.shell": f"echo 1 > {params}", "changed_when": True},
        task("now_ok", patch(src=str(kmods / "klp_test_sleeper_patch.ko"),
                             transition_timeout=30)),
        task("removed", patch(name="klp_test_sleeper_patch", state="absent")),
        {"name": "unload the sleeper", "ansible.builtin.command": "rmmod klp_test_sleeper",
         "changed_when": True},
        task("after", loaded_klp_modules()),
        task("log", {"ansible.builtin.command": "dmesg"}, changed_when=False),
    ]
    keep = [t["register"] for t in tasks if "register" in t]
    r = playbook(klp_inventory, amd64_host, collections_path, tmp_path, tasks, {"keep": keep})

    pre = r["preflight"]
    assert pre["safe"] is False
    assert [t["comm"] for t in pre["blocking_tasks"]] == ["klp_sleeper"]
    stalled = r["stalled"]
    assert stalled["failed"] is True and stalled.get("reverted") is True, stalled.get("msg")
    assert [t["comm"] for t in stalled["stalled_tasks"]] == ["klp_sleeper"]
    assert "klp_sleeper_wait" in stalled["msg"] and "host is as before" in stalled["msg"]
    print(f"\nstall: waited {stalled['transition_seconds']:.1f} s, "
          f"revert + unload {stalled['revert_seconds']:.2f} s")
    assert "klp_test_sleeper_patch" not in r["after_revert"]["stdout"]
    assert "klp_test_sleeper " in r["after_revert"]["stdout"]
    assert r["now_ok"]["state"] == "enabled"
    assert r["now_ok"]["patched"] == {"klp_test_sleeper": ["klp_sleeper_wait"]}
    assert r["removed"]["changed"] is True
    assert "klp_test" not in r["after"]["stdout"]
    assert not [line for line in r["log"]["stdout_lines"] if any(b in line for b in BAD_LOG)]


def test_a_forced_replace_holds_the_replaced_module_until_reboot(
        request, klp_inventory, amd64_host, collections_path, kmods, vm_release, tmp_path):
    """klp_force_transition marks the patches an atomic replace replaces as forced, and
    livepatch never puts their modules: the load succeeds and says so, removing the old
    patch drops its copy, a rerun changes nothing. The VM is restarted afterwards."""
    try:
        lab = request.getfixturevalue("lab")
    except pytest.FixtureLookupError:
        pytest.skip("needs the lab fixture to restart the VM")
    proc = subprocess.run(
        [sys.executable, "-m", "builder", "build", "--kernel", vm_release, "--patch",
         str(REPO / "tests/vm/patches/pipe-read.patch"), "--name", "klp_pipe_forced",
         "--output", str(tmp_path)], cwd=REPO, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    tasks = [
        task("old", patch(src=str(kmods / "klp_test_version.ko"))),
        task("sleeper", SLEEPER),
        task("forced", patch(src=str(tmp_path / "klp_pipe_forced.ko"), on_stall="force",
                             transition_timeout=5)),
        task("drop_old", patch(name="klp_test_version", state="absent")),
        task("drop_old_again", patch(name="klp_test_version", state="absent")),
        task("held", {"ansible.builtin.shell": "cat /sys/module/klp_test_version/refcnt; "
                                               "ls /sys/kernel/livepatch",
                      "changed_when": False}),
        task("drop_new", patch(name="klp_pipe_forced", state="absent")),
        task("stop", STOP_SLEEPER),
    ]
    try:
        r = playbook(klp_inventory, amd64_host, collections_path, tmp_path, tasks,
                     {"keep": ["forced", "drop_old", "drop_old_again", "held", "drop_new"]})
    finally:
        lab.restart(amd64_host)  # only a reboot frees a held module
    forced = r["forced"]
    assert forced["forced"] is True and forced["state"] == "enabled", forced
    assert forced["replaced"] == ["klp_test_version"]
    assert forced["held_until_reboot"] == ["klp_test_version"]
    assert any("until reboot" in w for w in forced.get("warnings", [])), forced
    assert r["drop_old"]["changed"] is True
    assert r["drop_old"]["held_until_reboot"] == ["klp_test_version"]
    assert r["drop_old_again"]["changed"] is False
    assert r["held"]["stdout_lines"] == ["1", "klp_pipe_forced"]
    assert r["drop_new"]["state"] == "absent" and r["drop_new"]["held_until_reboot"] == []


def test_persist_survives_reboot_and_guard_skips_after_bad_boot(
        request, klp_inventory, amd64_host, collections_path, kmods, tmp_path):
    """Reboots are power cuts by the lab (guest page cache synced first).

    The patch must be harmless at boot: patching /proc/cmdline early in boot, for
    instance, hides net.ifnames=0 from udev and the guest loses its network.
    """
    try:
        lab = request.getfixturevalue("lab")
    except pytest.FixtureLookupError:
        pytest.skip("needs the lab fixture to restart the VM")
    src = str(kmods / "klp_test_version.ko")  # harmless at boot
    pending = "/var/lib/klp-livepatch/boot/pending"

    def run(name, tasks):
        keep = [t["register"] for t in tasks if "register" in t]
        (tmp_path / name).mkdir()
        return playbook(klp_inventory, amd64_host, collections_path, tmp_path / name, tasks,
                        {"keep": keep})

    r1 = run("before", [task("persist", patch(src=src, persist=True)),
                        task("persist_again", patch(src=src, persist=True))])
    lab.restart(amd64_host)
    r2 = run("boot1", [
        task("boot1", {"klp.livepatch.info": {}}),
        task("unit1", {"ansible.builtin.command": "systemctl is-active klp-livepatch.service"},
             changed_when=False, failed_when=False),
        task("version1", {"ansible.builtin.command": "cat /proc/version"}, changed_when=False),
        {"name": "pretend this boot dies before boot-ok",
         # The timer and its service stop first (stop waits for a running service):
         # on a slow boot they could otherwise clear the marker after this, as a
         # healthy boot would.
         "ansible.builtin.shell": ("systemctl stop klp-livepatch-ok.timer "
                                   "klp-livepatch-ok.service; "
                                   f"echo klp_test_version > {pending}; sync"),
         "changed_when": True},
    ])
    lab.restart(amd64_host)
    r3 = run("boot2", [
        task("boot2", {"klp.livepatch.info": {}}),
        task("rearm", patch(src=src, persist=True)),
        task("boot2_after", {"klp.livepatch.info": {}}),
        task("absent", patch(name="klp_test_version", state="absent")),
        task("after", loaded_klp_modules()),
    ])

    assert r1["persist"]["changed"] is True and r1["persist"]["persisted"] is True
    assert r1["persist_again"]["changed"] is False
    boot1 = r2["boot1"]
    assert [p["name"] for p in boot1["patches"]] == ["klp_test_version"]
    assert boot1["patches"][0]["enabled"] is True
    assert boot1["boot"]["installed"] is True and boot1["boot"]["unit_enabled"] is True
    assert boot1["boot"]["skipped"] == []
    assert r2["unit1"]["stdout"] == "active"
    assert "(klp_test_version)" in r2["version1"]["stdout"]
    assert boot1["package_version"]  # /proc/version still parses
    boot2 = r3["boot2"]
    assert boot2["patches"] == []
    assert boot2["boot"]["skipped"] == ["klp_test_version"]
    assert r3["rearm"]["changed"] is True and r3["rearm"]["state"] == "enabled"
    assert r3["boot2_after"]["boot"]["skipped"] == []
    assert r3["absent"]["changed"] is True and r3["absent"]["persisted"] is False
    assert "klp_test" not in r3["after"]["stdout"]
