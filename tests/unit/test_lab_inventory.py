# SPDX-License-Identifier: GPL-3.0-or-later
"""Inventory rendering and the QEMU command line (pure logic, no VM)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lab import qemu
from lab.images import Image, image_key
from lab.inventory import SSH_ARGS, Host, render


def test_inventory_is_yaml_ansible_understands():
    hosts = [Host("vm-b", 2222, "/k/id_ed25519", "6.1.0-56-cloud-amd64", ("6.1.0-56-cloud-amd64",)),
             Host("vm-a", 2200, "/k/id_ed25519", "6.1.0-56-amd64",
                  ("6.1.0-56-amd64", "6.1.0-55-amd64"))]
    data = yaml.safe_load(render(hosts))
    lab_hosts = data["all"]["children"]["lab"]["hosts"]
    assert list(lab_hosts) == ["vm-a", "vm-b"]
    assert lab_hosts["vm-a"] == {
        "ansible_host": "127.0.0.1", "ansible_port": 2200, "ansible_user": "root",
        "ansible_ssh_private_key_file": "/k/id_ed25519", "ansible_ssh_common_args": SSH_ARGS,
        "ansible_python_interpreter": "/usr/bin/python3", "ansible_pipelining": True,
        "klp_lab_kernel_release": "6.1.0-56-amd64",
        "klp_lab_kernels": ["6.1.0-56-amd64", "6.1.0-55-amd64"],
    }


def test_empty_inventory_is_valid():
    assert yaml.safe_load(render([]))["all"]["children"]["lab"]["hosts"] == {}


def test_image_key_ignores_order_and_tracks_the_ssh_key():
    assert image_key(["b", "a"], "k1") == image_key(["a", "b", "a"], "k1")
    assert image_key(["a"], "k1") != image_key(["a"], "k2")


def test_qemu_command_is_isolated(tmp_path: Path):
    image = Image(tmp_path / "img")
    argv = qemu.command(name="vm-x", image=image, release="6.1.0-56-amd64",
                        overlay=tmp_path / "disk.qcow2", vm_dir=tmp_path, port=40000,
                        append="module.sig_enforce=1", accelerator="tcg")
    netdev = argv[argv.index("-netdev") + 1]
    assert "restrict=on" in netdev.split(",")
    assert "hostfwd=tcp:127.0.0.1:40000-:22" in netdev
    append = argv[argv.index("-append") + 1]
    assert "root=/dev/vda" in append and append.endswith("module.sig_enforce=1")
    assert "systemd.hostname=vm-x" in append
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert json.dumps(argv)  # recordable in vm.json


def test_only_trees_of_another_recipe_are_outdated(tmp_path):
    from lab.images import BASE_RECIPE, RECIPE, outdated_recipes

    current = image_key(["6.1.0-57-amd64"], "k1")
    for name in (f"images/{current}", "images/6.1.0-57-amd64-r0-9d9b08a7",
                 "images/6.12.118+deb13-amd64-r0-9d9b08a7", f"base-trixie-{BASE_RECIPE}",
                 "base-trixie-r0", "images/logs-ignored"):
        (tmp_path / name).mkdir(parents=True)
    assert RECIPE in current and RECIPE != "r0" and BASE_RECIPE != "r0"
    assert [p.relative_to(tmp_path).as_posix() for p in outdated_recipes(tmp_path)] == [
        "base-trixie-r0", "images/6.1.0-57-amd64-r0-9d9b08a7",
        "images/6.12.118+deb13-amd64-r0-9d9b08a7"]
