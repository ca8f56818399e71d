# SPDX-License-Identifier: GPL-3.0-or-later
"""The lab, proven like a user would: Ansible over SSH into real Debian kernels in QEMU."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import yaml

from lab import Lab, kernels
from lab.qemu import alive
from tests.vm.conftest import DEFAULT_KERNELS


def test_two_releases_boot_side_by_side(lab_vms, ansible):
    releases = {vm.release for vm in lab_vms}
    assert len(lab_vms) >= 2 and len(releases) >= 2, "the session should run two kernels"
    assert all(vm.alive for vm in lab_vms)
    results = (ansible("lab", "-m", "ansible.builtin.ping"))
    assert {vm.name for vm in lab_vms} <= set(results)
    for name, result in results.items():
        assert result.get("ping") == "pong", (name, result)


def test_each_host_runs_the_requested_release(lab_vms, ansible, lab_inventory):
    wanted = {vm.name: vm.release for vm in lab_vms}
    results = (ansible("lab", "-m", "ansible.builtin.command", "-a", "uname -r"))
    for name, release in wanted.items():
        assert results[name]["stdout"].strip() == release, results[name]
    # The inventory says the same, and the default aliases name what the archive resolves.
    hosts = yaml.safe_load(Path(lab_inventory).read_text())["all"]["children"]["lab"]["hosts"]
    for name, release in wanted.items():
        assert hosts[name]["klp_lab_kernel_release"] == release
    if [vm.release for vm in lab_vms][:2] == [kernels.resolve(a) for a in DEFAULT_KERNELS]:
        assert lab_vms[0].release.endswith("-amd64") and "cloud" in lab_vms[1].release


def test_each_host_has_livepatch_sysfs(lab_vms, ansible):
    results = ansible("lab", "-m", "ansible.builtin.stat", "-a", "path=/sys/kernel/livepatch")
    for vm in lab_vms:
        stat = results[vm.name]["stat"]
        assert stat["exists"] and stat["isdir"], (vm.name, stat)


PROBE = """\
import json, socket, subprocess
out = {}
for host, port in [("10.0.2.2", PORT), ("10.0.2.3", 53), ("10.0.2.2", 22)]:
    try:
        socket.create_connection((host, port), 3).close()
        out[f"tcp {host}:{port}"] = "connected"
    except OSError as e:
        out[f"tcp {host}:{port}"] = f"blocked: {e}"
query = bytes.fromhex("4b4c01000001000000000000") + b"\\x06debian\\x03org\\x00\\x00\\x01\\x00\\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
try:
    s.sendto(query, ("10.0.2.3", 53))
    s.recv(512)
    out["dns 10.0.2.3:53"] = "answered"
except OSError as e:
    out["dns 10.0.2.3:53"] = f"blocked: {e}"
route = subprocess.run(["ip", "-4", "route", "show", "default"], capture_output=True, text=True)
out["default route"] = route.stdout.strip()
print(json.dumps(out))
"""


def test_guest_reaches_no_network(lab_vms, ansible, tmp_path):
    """restrict=on: a host listener on loopback, the slirp DNS and the gateway are unreachable."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        playbook = tmp_path / "probe.yml"
        playbook.write_text(yaml.safe_dump([{
            "name": "Probe the network from the guest", "hosts": "lab", "gather_facts": False,
            "tasks": [
                {"name": "Try to connect out",
                 "ansible.builtin.command": {"argv": ["python3", "-c",
                                                      PROBE.replace("PORT", str(port))]}},
            ]}], sort_keys=False))
        output = ansible(str(playbook), tool="ansible-playbook")
        listener.settimeout(0.2)
        try:
            conn, _address = listener.accept()
            conn.close()
            accepted = True
        except OSError:
            accepted = False
    for vm in lab_vms:
        result = json.loads(output[vm.name]["stdout"])
        assert result.pop("default route") == "", (vm.name, "the guest has a default route")
        assert all(v.startswith("blocked") for v in result.values()), (vm.name, result)
    assert not accepted, "a guest reached the host's loopback listener"


def test_restart_keeps_disk_and_down_leaves_no_qemu(lab: Lab, lab_boot, ansible):
    """An extra VM: restart with another cmdline keeps its disk; down leaves no QEMU behind."""
    name = "lab-selftest"
    (vm,) = lab_boot([f"{name}={DEFAULT_KERNELS[-1]}"])
    assert vm.ssh("echo kept > /root/marker && sync", check=True).returncode == 0
    first_pid = vm.pid

    vm = lab.restart(name, append="klp_lab_selftest=1")
    assert vm.pid != first_pid and not alive(first_pid, Path(vm.overlay))
    assert vm.ssh("cat /root/marker", check=True).stdout.strip() == "kept"
    assert "klp_lab_selftest=1" in vm.ssh("cat /proc/cmdline", check=True).stdout
    results = (ansible(name, "-m", "ansible.builtin.command", "-a", "uname -r"))
    assert results[name]["stdout"].strip() == vm.release

    vm_json = lab.state_dir / name / "vm.json"
    recorded = json.loads(vm_json.read_text())
    lab.down([name])
    assert not alive(recorded["pid"], Path(recorded["overlay"]))
    assert not Path(f"/proc/{recorded['pid']}").exists() or b"qemu" not in Path(
        f"/proc/{recorded['pid']}/cmdline").read_bytes()
    assert not vm_json.exists()
    assert name not in lab.inventory_path.read_text()
    assert name not in {v.name for v in lab.vms()}


def test_status_and_inventory_list_the_running_vms(lab: Lab, lab_vms, lab_inventory):
    running = {vm.name: vm for vm in lab.vms()}
    for vm in lab_vms:
        assert running[vm.name].port == vm.port
    text = Path(lab_inventory).read_text()
    assert text.startswith("#")
    for vm in lab_vms:
        assert f"ansible_port: {vm.port}" in text
