# SPDX-License-Identifier: GPL-3.0-or-later
"""Faults in the middle of a change, on one lab VM (the session's newest 6.1 amd64): the
SSH connection dropped during a load, two livepatch.yml runs against the host at once,
and the host rebooted during a rollout. Each leaves the host either patched or as it
was, never half way; the report of the interrupted run exists; a rerun converges.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.vm.fleet import (
    REPO,
    ad_hoc,
    env,
    fleet_of,
    hosts_of,
    livepatch,
    livepatch_argv,
    probe,
)
from tests.vm.playbook import (
    ANSIBLE_PLAYBOOK,
    loaded_klp_modules,
    patch,
    play_env,
    playbook,
    task,
    write_play,
)

sys.path.insert(0, str(REPO / "tests" / "fixtures" / "kmod"))
import build as kmod_build  # the fixture builder lives beside the C sources

NAME = "klp_fault_example"
LOCK = "/run/klp-livepatch.lock"  # klp.livepatch.patch holds it for one change at a time
SLEEPER_RELEASE = "/sys/module/klp_test_sleeper/parameters/release"


@pytest.fixture(scope="module")
def host(lab, lab_inventory, tmp_path_factory) -> dict:
    """One host of the session's newest 6.1 amd64 kernel, as a fleet of one."""
    return fleet_of(lab, ("newest-6.1-amd64",), lab_inventory,
                    tmp_path_factory.mktemp("faults"), NAME)


def name_of(fleet: dict) -> str:
    [name] = fleet["hosts"]
    return name


def wait_for(lab, host: str, command: str, what: str, timeout: float = 300) -> None:
    """Poll COMMAND on the guest (over the lab's own SSH) until it succeeds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.get(host).ssh(command, timeout=60).returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"{host}: {what} not seen within {timeout:.0f}s ({command})")


def test_a_dropped_connection_during_a_load_loses_nothing(
        lab, host, collections_path, tmp_path):
    """The controller's SSH connection is cut while the target waits for a transition
    (a sleeper task holds it): the load goes on or is undone on the target alone, the
    change lock is released, and the same task run again finds the patch enabled."""
    name = name_of(host)
    release = host["hosts"][name]
    kmods = kmod_build.build(release, lab.get(name).ssh(
        f"dpkg-query -W -f '${{Version}}' linux-image-{release}", check=True).stdout.strip())
    setup = tmp_path / "setup"
    setup.mkdir()
    playbook(host["inventory"], name, collections_path, setup, [
        {"name": "copy the sleeper module",
         "ansible.builtin.copy": {"src": str(kmods / "klp_test_sleeper.ko"),
                                  "dest": "/root/klp_test_sleeper.ko", "mode": "0600"}},
        {"name": "load the sleeper (a kthread in klp_sleeper_wait)",
         "ansible.builtin.command": "insmod /root/klp_test_sleeper.ko", "changed_when": True},
    ])
    cut = tmp_path / "cut"
    cut.mkdir()
    src = str(kmods / "klp_test_sleeper_patch.ko")
    play = write_play(name, cut, [task("load", patch(src=src, transition_timeout=240))])
    # No ControlMaster: the SSH client is the playbook's own child, so killing the
    # playbook's process group closes the connection (a mux would keep it open).
    run_env = dict(play_env(collections_path), ANSIBLE_SSH_ARGS="-o ControlMaster=no")
    proc = subprocess.Popen([str(ANSIBLE_PLAYBOOK), "-i", str(host["inventory"]), str(play)],
                            env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        wait_for(lab, name, "grep -qx 1 /sys/kernel/livepatch/klp_test_sleeper_patch/transition",
                 "the patch in transition")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (cut / "results.json").exists()  # the controller never heard back
    # The target finishes alone once the sleeper leaves the patched function.
    lab.get(name).ssh(f"echo 1 > {SLEEPER_RELEASE}", check=True)
    wait_for(lab, name, f"flock -n {LOCK} true", "the change lock released")

    again = tmp_path / "again"
    again.mkdir()
    r = playbook(host["inventory"], name, collections_path, again, [
        task("rerun", patch(src=src, transition_timeout=60)),
        task("loaded", loaded_klp_modules()),
        task("removed", patch(name="klp_test_sleeper_patch", state="absent")),
        {"name": "unload the sleeper", "ansible.builtin.command": "rmmod klp_test_sleeper",
         "changed_when": True},
        task("after", loaded_klp_modules()),
    ], {"keep": ["rerun", "loaded", "removed", "after"]})
    assert r["rerun"]["state"] == "enabled" and r["rerun"]["changed"] is False, r["rerun"]
    assert r["rerun"]["patched"] == {"klp_test_sleeper": ["klp_sleeper_wait"]}
    assert r["loaded"]["stdout"].count("klp_test_sleeper_patch ") == 1
    assert r["removed"]["changed"] is True
    assert "klp_test" not in r["after"]["stdout"]


def test_two_runs_against_one_host_at_once_take_turns(host):
    """Two livepatch.yml runs of the same patch at the same time: the builds take turns
    on the controller, the loads take turns on the host; one run makes the change, the
    other finds it made, and the host has the patch once."""
    name = name_of(host)
    runs = []
    for step in ("twin-1", "twin-2"):
        argv, report = livepatch_argv(host, step, livepatch_probes=["true"])
        log = (host["base"] / f"{step}.log").open("w")
        runs.append((subprocess.Popen(argv, cwd=REPO, env=env(host), stdout=log,
                                      stderr=subprocess.STDOUT), report, log))
    for proc, _report, log in runs:
        assert proc.wait(timeout=3600) == 0, (host["base"] / "twin-1.log").read_text()[-4000:]
        log.close()
    entries = [hosts_of(report)[name] for _proc, report, _log in runs]
    assert [e["status"] for e in entries] == ["ok", "ok"], entries
    assert sorted(e["changed"] for e in entries) == [False, True], entries
    assert probe(host, name) == 0
    loaded = lab_modules(host, name)
    assert loaded.count(NAME) == 1, loaded


def lab_modules(fleet: dict, host: str) -> str:
    """The names of the modules loaded on HOST."""
    proc = ad_hoc(fleet, host, "ansible.builtin.shell", "cut -d' ' -f1 /proc/modules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_a_reboot_during_a_rollout_comes_back_patched(lab, host):
    """The host is power-cut while its probe gate runs, right after a persistent load:
    the run's report fails the host at gate "reachable" with the reason, the host boots
    with the patch loaded again from its stored copy, and a rerun converges without a
    change; then it is removed."""
    name = name_of(host)
    # Probes run without a shell (split like one): the shell is asked for explicitly.
    probe_cmd = "sh -c 'sleep 47; grep -q klp.example=1 /proc/cmdline'"

    def cut_power() -> None:
        # "[4]7": the pattern must not match the shell that runs pgrep itself.
        wait_for(lab, name, "pgrep -f 'sleep [4]7'", "the probe gate running", timeout=900)
        lab.restart(name, flush=False)  # a power cut: only what was synced survives

    cutter = threading.Thread(target=cut_power)
    cutter.start()
    proc, report = livepatch(host, "cut", livepatch_persist=True, livepatch_probes=[probe_cmd])
    cutter.join(timeout=900)
    assert not cutter.is_alive()
    # The load's task tolerates an unreachable host so its gate can name it: the host
    # fails gate "reachable" (or is unreachable to the verify play), never "ok".
    assert proc.returncode in (2, 4), proc.stdout[-6000:]
    entry = hosts_of(report)[name]
    assert entry["status"] in ("failed", "unreachable") and entry["reason"], entry
    assert entry["gate"] == "reachable", entry

    assert probe(host, name) == 0  # loaded again at boot from the stored copy
    proc, report = livepatch(host, "after-cut", livepatch_persist=True)
    assert proc.returncode == 0, proc.stdout[-6000:]
    entry = hosts_of(report)[name]
    assert (entry["status"], entry["changed"], entry["patch_state"]) == ("ok", False, "enabled")

    proc, report = livepatch(host, "remove", livepatch_state="absent", livepatch_patches=[])
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert probe(host, name) != 0
    assert NAME not in lab_modules(host, name)
