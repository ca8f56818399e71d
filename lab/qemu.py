# SPDX-License-Identifier: GPL-3.0-or-later
"""QEMU processes: accelerator choice, the command line, start, stop, liveness."""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from lab.errors import LabError
from lab.images import Image
from lab.progress import step, tail

QEMU = "qemu-system-x86_64"
MEMORY_MB = 1024
# loglevel=5: the serial console (slow under TCG) gets warnings and worse; dmesg keeps all.
BASE_APPEND = "root=/dev/vda rw console=ttyS0 loglevel=5 net.ifnames=0 panic=10"


def _kvm_boots(image: Image, release: str, timeout: float = 10.0) -> bool:
    """Boot the kernel under KVM briefly: only a kernel that prints proves KVM works here."""
    argv = [QEMU, "-accel", "kvm", "-m", "256", "-display", "none", "-no-reboot",
            "-serial", "stdio", "-monitor", "none", "-kernel", str(image.vmlinuz(release)),
            "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return b"Linux version" in out


@functools.cache
def accel(image: Image, release: str) -> str:
    """'kvm' only if a short probe boots; else 'tcg'. KLP_LAB_ACCEL=tcg|kvm|auto overrides."""
    wanted = os.environ.get("KLP_LAB_ACCEL", "auto")
    if wanted in ("tcg", "kvm"):
        return wanted
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if " vmx" not in flags and " svm" not in flags:
        return "tcg"  # /dev/kvm without hardware virtualisation: guests hang
    return "kvm" if _kvm_boots(image, release) else "tcg"


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (QEMU binds it a moment later; `start` retries a clash)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(*, name: str, image: Image, release: str, overlay: Path, vm_dir: Path, port: int,
            append: str, accelerator: str) -> list[str]:
    """The QEMU argv: direct kernel boot, virtio disk and NIC, no network beyond port 22."""
    kernel_cmdline = f"{BASE_APPEND} systemd.hostname={name} {append}".strip()
    return [
        QEMU, "-name", name, "-machine", "q35", "-accel", accelerator,
        "-m", str(MEMORY_MB), "-smp", "1",
        # -nodefaults: no VGA, floppy or CD-ROM to emulate and probe at boot.
        "-nodefaults", "-display", "none", "-monitor", "none",
        "-chardev", f"file,id=con0,path={vm_dir / 'console.log'},append=on",
        "-serial", "chardev:con0",
        "-kernel", str(image.vmlinuz(release)), "-initrd", str(image.initrd(release)),
        "-append", kernel_cmdline,
        "-drive", f"file={overlay},if=virtio,format=qcow2",
        # restrict=on: the guest reaches nothing, not even the host; only the forward in.
        "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-daemonize", "-pidfile", str(vm_dir / "qemu.pid"),
    ]


def create_overlay(overlay: Path, image: Image, log: Path) -> None:
    """A qcow2 overlay backed by the shared raw image: the VM's own disk, kept across restarts."""
    overlay.unlink(missing_ok=True)
    with open(log, "a") as f:
        proc = subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw",
                               "-b", str(image.disk), str(overlay)],
                              stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise LabError(f"qemu-img create {overlay} failed; log {log}:\n{tail(log)}")


def start(argv_for_port, vm_dir: Path, name: str) -> tuple[int, int, list[str]]:
    """Start QEMU daemonized; returns (pid, port, argv). Retries when the port was taken."""
    log = vm_dir / "qemu.log"
    for _attempt in range(3):
        port = free_port()
        argv = argv_for_port(port)
        (vm_dir / "qemu.pid").unlink(missing_ok=True)
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(argv)}\n")
            f.flush()
            proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, check=False)
        if proc.returncode == 0:
            pid = int((vm_dir / "qemu.pid").read_text().strip())
            return pid, port, argv
        if "host forwarding rule" not in tail(log, 5):
            break
    raise LabError(f"QEMU for VM {name} failed to start; log {log}:\n{tail(log, 10)}")


def alive(pid: int, overlay: Path) -> bool:
    """True if pid is our QEMU (checked by its command line, so a reused pid never counts)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"qemu-system" in cmdline and str(overlay).encode() in cmdline


def stop(pid: int, overlay: Path, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it lingers; returns when the process is gone."""
    if not alive(pid, overlay):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive(pid, overlay):
        if time.monotonic() > deadline:
            step(f"QEMU pid {pid} ignored SIGTERM; killing it")
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
        time.sleep(0.1)
