# SPDX-License-Identifier: GPL-3.0-or-later
"""The Ansible inventory of the running lab VMs, written as YAML without PyYAML."""

from __future__ import annotations

import json
from dataclasses import dataclass

SSH_ARGS = "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"


@dataclass(frozen=True)
class Host:
    """What Ansible needs to reach one VM."""

    name: str
    port: int
    key: str
    release: str
    kernels: tuple[str, ...]


def _q(value: str) -> str:
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(value)


def render(hosts: list[Host]) -> str:
    """Group `lab`, one host per VM, connection variables and `klp_lab_kernel_release`."""
    lines = ["# Written by 'python3 -m lab'; rewritten on every up/down/restart.",
             "all:", "  children:", "    lab:"]
    if not hosts:
        lines.append("      hosts: {}")
    else:
        lines.append("      hosts:")
    for h in sorted(hosts, key=lambda h: h.name):
        lines += [
            f"        {h.name}:",
            "          ansible_host: 127.0.0.1",
            f"          ansible_port: {h.port}",
            "          ansible_user: root",
            f"          ansible_ssh_private_key_file: {_q(h.key)}",
            f"          ansible_ssh_common_args: {_q(SSH_ARGS)}",
            "          ansible_python_interpreter: /usr/bin/python3",
            # One SSH call per module instead of four: each costs the emulated guest a shell.
            "          ansible_pipelining: true",
            f"          klp_lab_kernel_release: {_q(h.release)}",
            f"          klp_lab_kernels: [{', '.join(_q(k) for k in h.kernels)}]",
        ]
    return "\n".join(lines) + "\n"
