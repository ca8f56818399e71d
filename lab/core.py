# SPDX-License-Identifier: GPL-3.0-or-later
"""The Lab: VMs from specs, their state in `.lab/<name>/vm.json`, the inventory."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import lab.images as images
import lab.inventory as inventory
import lab.kernels as kernels
import lab.qemu as qemu
from lab.errors import LabError
from lab.progress import step, tail
from lab.specs import Spec, default_name, parse_spec

# Boot to SSH is ~20-40 s under TCG, much longer when other VMs share the host's cores.
SSH_TIMEOUT = float(os.environ.get("KLP_LAB_SSH_TIMEOUT", "600"))


@dataclass
class VM:
    """One lab VM as recorded in its vm.json; `ssh` runs a command in it."""

    name: str
    release: str  # the kernel it boots now
    kernels: list[str]  # every kernel installed in its image
    port: int
    pid: int
    append: str  # extra kernel command line
    image: str
    overlay: str
    key: str
    qemu_argv: list[str] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return qemu.alive(self.pid, Path(self.overlay))

    def ssh_argv(self, command: str | list[str] | None = None, *, connect_timeout: int = 10
                 ) -> list[str]:
        argv = ["ssh", "-i", self.key, "-p", str(self.port), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}",
                "root@127.0.0.1"]
        if command is not None:
            argv.append(command if isinstance(command, str) else shlex.join(command))
        return argv

    def ssh(self, command: str | list[str], *, timeout: float = 120, check: bool = False
            ) -> subprocess.CompletedProcess[str]:
        """Run a command in the guest as root; output captured as text."""
        return subprocess.run(self.ssh_argv(command), capture_output=True, text=True,
                              timeout=timeout, check=check, stdin=subprocess.DEVNULL)


class Lab:
    """Real Debian 12 VMs for tests, the demo and users; state lives in `state_dir`."""

    def __init__(self, state_dir: str | Path = ".lab") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.inventory_path = self.state_dir / "inventory.yml"
        self.started: list[str] = []  # VMs this Lab object booted (tests tear down these)

    # ---- state -------------------------------------------------------------------------
    def _vm_dir(self, name: str) -> Path:
        return self.state_dir / name

    def _save(self, vm: VM) -> None:
        path = self._vm_dir(vm.name) / "vm.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(vm), indent=2) + "\n")
        tmp.replace(path)

    def get(self, name: str) -> VM | None:
        """The recorded VM called name (running or not), or None."""
        path = self._vm_dir(name) / "vm.json"
        if not path.exists():
            return None
        return VM(**json.loads(path.read_text()))

    def vms(self, *, running_only: bool = True) -> list[VM]:
        """Recorded VMs, sorted by name; by default only those whose QEMU is alive."""
        found = []
        for path in sorted(self.state_dir.glob("*/vm.json")):
            vm = self.get(path.parent.name)
            if vm and (vm.alive or not running_only):
                found.append(vm)
        return found

    def write_inventory(self) -> Path:
        """Rewrite `.lab/inventory.yml` with every running VM."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        hosts = [inventory.Host(vm.name, vm.port, vm.key, vm.release, tuple(vm.kernels))
                 for vm in self.vms()]
        tmp = self.inventory_path.with_suffix(".tmp")
        tmp.write_text(inventory.render(hosts))
        tmp.replace(self.inventory_path)
        return self.inventory_path

    # ---- up ----------------------------------------------------------------------------
    def up(self, specs: list[str | Spec] | None = None, *, timeout: float = SSH_TIMEOUT
           ) -> list[VM]:
        """Boot one VM per spec (default: newest-6.1-cloud-amd64) and wait for SSH.

        A spec whose VM already runs is left alone. Returns the VMs of the specs, in order.
        If anything fails, the QEMUs this call started are stopped before the error rises.
        """
        parsed = [s if isinstance(s, Spec) else parse_spec(s)
                  for s in (specs or [kernels.DEFAULT_ALIAS])]
        plans = []
        for spec in parsed:
            releases = [kernels.resolve(k) for k in spec.kernels]
            name = spec.name or default_name(releases[0])
            if name in (p[0] for p in plans):
                raise LabError(f"two specs want VM {name}; name one: NAME=RELEASE")
            plans.append((name, releases, spec.append))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        result: dict[str, VM] = {}
        new: list[VM] = []
        try:
            for name, releases, append in plans:
                running = self.get(name)
                if running and running.alive:
                    if running.release != releases[0]:
                        raise LabError(f"VM {name} already runs {running.release}, not "
                                       f"{releases[0]}: 'python3 -m lab down {name}' first")
                    note = (f"; its cmdline extra is {running.append!r}, not {append!r}: "
                            "'restart --append' to change it" if running.append != append else "")
                    step(f"{name}: already running ({running.release}, port {running.port}){note}")
                    result[name] = running
                    continue
                image = images.ensure_image(releases)
                vm = self._boot(name, image, releases[0], append, fresh_disk=True)
                new.append(vm)
                self.started.append(name)
                result[name] = vm
            for vm in new:
                self._wait_ssh(vm, timeout)
        except BaseException:
            for vm in new:  # leave nothing of this call behind: no QEMU, no disk, no vm.json
                self._discard(vm)
            self.write_inventory()
            raise
        self.write_inventory()
        return [result[name] for name, _, _ in plans]

    def _boot(self, name: str, image: images.Image, release: str, append: str, *,
              fresh_disk: bool) -> VM:
        vm_dir = self._vm_dir(name)
        vm_dir.mkdir(parents=True, exist_ok=True)
        overlay = vm_dir / "disk.qcow2"
        if fresh_disk or not overlay.exists():
            qemu.create_overlay(overlay, image, vm_dir / "qemu.log")
        accelerator = qemu.accel(image, release)
        step(f"{name}: booting {release} ({accelerator}){' + ' + append if append else ''}")

        def argv_for_port(port: int) -> list[str]:
            return qemu.command(name=name, image=image, release=release, overlay=overlay,
                                vm_dir=vm_dir, port=port, append=append,
                                accelerator=accelerator)

        pid, port, argv = qemu.start(argv_for_port, vm_dir, name)
        vm = VM(name=name, release=release, kernels=list(image.kernels), port=port, pid=pid,
                append=append, image=str(image.path), overlay=str(overlay),
                key=str(images.ssh_key()), qemu_argv=argv)
        self._save(vm)
        return vm

    def _wait_ssh(self, vm: VM, timeout: float) -> None:
        """Poll until `ssh true` works; fail with the console tail when it never does."""
        t0 = time.monotonic()
        console = self._vm_dir(vm.name) / "console.log"
        while True:
            if not vm.alive:
                raise LabError(f"VM {vm.name} ({vm.release}): QEMU exited during boot; "
                               f"console {console}:\n{tail(console)}")
            try:
                proc = subprocess.run(vm.ssh_argv("true", connect_timeout=5), timeout=30,
                                      capture_output=True, stdin=subprocess.DEVNULL, check=False)
                if proc.returncode == 0:
                    break
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() - t0 > timeout:
                raise LabError(f"VM {vm.name} ({vm.release}): no SSH on port {vm.port} after "
                               f"{timeout:.0f}s; console {console}:\n{tail(console)}")
            time.sleep(1)
        step(f"{vm.name}: SSH up on port {vm.port} after {time.monotonic() - t0:.0f}s")

    # ---- restart / down ----------------------------------------------------------------
    def restart(self, name: str, *, kernel: str | None = None, append: str | None = None,
                timeout: float = SSH_TIMEOUT, flush: bool = True) -> VM:
        """Stop the VM's QEMU and boot again from the same disk, maybe another kernel/cmdline.
        QEMU is stopped like a power cut; `flush` syncs the guest's page cache first."""
        old = self.get(name)
        if old is None:
            raise LabError(f"no VM {name} in {self.state_dir}; 'python3 -m lab status' lists them")
        release = kernels.resolve(kernel) if kernel else old.release
        image = images.Image(Path(old.image))
        if release not in image.kernels:
            raise LabError(f"kernel {release} is not installed in the image of VM {name} "
                           f"(it has {', '.join(image.kernels)}); boot a VM with "
                           f"NAME={','.join([*image.kernels, release])} to get all of them")
        if flush and old.alive:
            try:
                old.ssh("sync", timeout=30)
            except subprocess.TimeoutExpired:
                step(f"{name}: sync before restart timed out; restarting anyway")
        self._stop(old)
        vm = self._boot(name, image, release, old.append if append is None else append,
                        fresh_disk=False)
        try:
            self._wait_ssh(vm, timeout)
        except BaseException:
            self._stop(vm)
            raise
        finally:
            self.write_inventory()
        return vm

    def _stop(self, vm: VM) -> None:
        qemu.stop(vm.pid, Path(vm.overlay))

    def _discard(self, vm: VM) -> None:
        """Stop the VM's QEMU and drop its disk and record (console logs stay)."""
        self._stop(vm)
        Path(vm.overlay).unlink(missing_ok=True)
        (self._vm_dir(vm.name) / "vm.json").unlink(missing_ok=True)
        if vm.name in self.started:
            self.started.remove(vm.name)

    def down(self, names: list[str] | None = None) -> list[str]:
        """Stop VMs (all by default) and drop their disks; logs stay for post-mortems."""
        targets = names if names is not None else [vm.name for vm in
                                                   self.vms(running_only=False)]
        stopped = []
        for name in targets:
            vm = self.get(name)
            if vm is None:
                raise LabError(f"no VM {name} in {self.state_dir}")
            was_alive = vm.alive
            self._discard(vm)
            if was_alive:
                step(f"{name}: stopped (pid {vm.pid})")
            stopped.append(name)
        self.write_inventory()
        return stopped

