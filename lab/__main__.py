# SPDX-License-Identifier: GPL-3.0-or-later
"""Command line of the lab: `python3 -m lab up|down|status|ssh|restart`."""

from __future__ import annotations

import argparse
import os
import sys

from lab.core import SSH_TIMEOUT, Lab
from lab.errors import LabError
from lab.kernels import ALIASES, DEFAULT_ALIAS


def _status(lab: Lab) -> int:
    rows = [("NAME", "RELEASE", "PORT", "PID", "ALIVE", "CMDLINE")]
    for vm in lab.vms(running_only=False):
        rows.append((vm.name, vm.release, str(vm.port), str(vm.pid),
                     "yes" if vm.alive else "no", vm.append or "-"))
    if len(rows) == 1:
        print(f"no lab VMs in {lab.state_dir}")
        return 0
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m lab", description=(
        "Real Debian 12 kernels in QEMU VMs for klp.livepatch tests and demos."))
    parser.add_argument("--state-dir", default=os.environ.get("KLP_LAB_STATE", ".lab"),
                        help="where VM state and inventory.yml live (default .lab)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="boot VMs and write .lab/inventory.yml",
                        description="SPEC is [NAME=]RELEASE[,OTHER_RELEASE…][+KERNEL CMDLINE]; "
                        f"RELEASE may be an alias: {', '.join(ALIASES)} "
                        f"(default {DEFAULT_ALIAS}).")
    up.add_argument("specs", nargs="*", metavar="SPEC")
    up.add_argument("--timeout", type=float, default=SSH_TIMEOUT,
                    help="seconds to wait for SSH (KLP_LAB_SSH_TIMEOUT)")
    down = sub.add_parser("down", help="stop VMs (all by default)")
    down.add_argument("names", nargs="*", metavar="NAME")
    sub.add_parser("status", help="table of VMs")
    ssh = sub.add_parser("ssh", help="ssh into a VM: ssh NAME [-- CMD…]")
    ssh.add_argument("name")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    restart = sub.add_parser("restart", help="reboot a VM's QEMU from the same disk")
    restart.add_argument("name")
    restart.add_argument("--kernel", help="boot this release (installed in the VM's image)")
    restart.add_argument("--append", help="replace the extra kernel command line")
    restart.add_argument("--timeout", type=float, default=SSH_TIMEOUT)
    args = parser.parse_args(argv)
    lab = Lab(args.state_dir)
    try:
        if args.cmd == "up":
            for vm in lab.up(args.specs, timeout=args.timeout):
                print(f"{vm.name}\t{vm.release}\tport {vm.port}")
            print(f"inventory: {lab.inventory_path}")
        elif args.cmd == "down":
            lab.down(args.names or None)
        elif args.cmd == "status":
            return _status(lab)
        elif args.cmd == "ssh":
            vm = lab.get(args.name)
            if vm is None or not vm.alive:
                raise LabError(f"VM {args.name} is not running; 'python3 -m lab status'")
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            argv = vm.ssh_argv(" ".join(command) if command else None)
            os.execvp(argv[0], argv[:1] + (["-t"] if not command else []) + argv[1:])
        elif args.cmd == "restart":
            vm = lab.restart(args.name, kernel=args.kernel, append=args.append,
                             timeout=args.timeout)
            print(f"{vm.name}\t{vm.release}\tport {vm.port}")
    except LabError as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
