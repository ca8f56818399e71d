# SPDX-License-Identifier: GPL-3.0-or-later
"""Guest images: a debootstrap base rootfs, then one raw ext4 disk per set of kernels.

Everything is built from the host side (debootstrap, chroot apt-get); guests never install
packages. Builds go to a temporary directory that is renamed into place when complete, so
an interrupted build never leaves a half image, and a file lock serialises builds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab.errors import LabError
from lab.kernels import image_package
from lab.progress import step, tail

# Bump when a recipe changes: cached trees with another recipe are not reused. The base
# rootfs (debootstrap, slow) and the images (kernels and boot settings) bump separately.
BASE_RECIPE = "r2"
RECIPE = "r3"
MIRROR = os.environ.get("KLP_LAB_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get("KLP_LAB_SECURITY_MIRROR", "http://deb.debian.org/debian-security")
DISK_SIZE = "2G"
BASE_PACKAGES = [
    "openssh-server", "python3", "kmod", "systemd-sysv", "iproute2", "initramfs-tools",
    "procps", "udev",
]
# Units that would burn emulated CPU at boot, for nothing in a lab: the timers, and a getty
# for a console nobody reads (6-12 s under TCG).
MASKED_UNITS = ["apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                "e2scrub_reap.service", "fstrim.timer", "getty-static.service",
                "systemd-networkd-wait-online.service"]
# QEMU user networking always gives the guest this address. systemd-networkd sets it
# statically: no DHCP exchange to wait for (ifupdown with dhclient took 17-30 s under TCG).
# No gateway: SSH comes in from 10.0.2.2, on the link, and the guest has nowhere to go.
GUEST_NETWORK = "[Match]\nName=eth0\n\n[Network]\nAddress=10.0.2.15/24\n"
ENABLED_UNITS = {"systemd-networkd.service": "multi-user.target.wants",
                 "systemd-networkd.socket": "sockets.target.wants"}


def cache_dir() -> Path:
    """`$KLP_CACHE/lab` (default ~/.cache/klp-livepatch/lab): images and the lab SSH key."""
    root = os.environ.get("KLP_CACHE") or os.path.expanduser("~/.cache/klp-livepatch")
    return Path(root).resolve() / "lab"


@dataclass(frozen=True)
class Image:
    """A built disk image and the kernels installed in it (extracted for direct boot)."""

    path: Path  # the image directory

    @property
    def disk(self) -> Path:
        return self.path / "disk.raw"

    @property
    def kernels(self) -> tuple[str, ...]:
        return tuple(json.loads((self.path / "image.json").read_text())["kernels"])

    def vmlinuz(self, release: str) -> Path:
        return self.path / "boot" / f"vmlinuz-{release}"

    def initrd(self, release: str) -> Path:
        return self.path / "boot" / f"initrd.img-{release}"


def _run(argv: list[str], log: Path, what: str, env: dict[str, str] | None = None) -> None:
    """Run a build command with its output appended to a log; fail with the log tail."""
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(argv)}\n")
        f.flush()
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env=env, check=False)
    if proc.returncode != 0:
        raise LabError(f"{what} failed (exit {proc.returncode}); log {log}:\n{tail(log)}")


def _chroot_env() -> dict[str, str]:
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
            "LC_ALL": "C.UTF-8", "HOME": "/root"}


def ssh_key() -> Path:
    """The lab's private SSH key (ed25519), generated once under the cache."""
    key = cache_dir() / "id_ed25519"
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True)
    tmp = key.with_name(f"id_ed25519.tmp{os.getpid()}")
    for p in (tmp, tmp.with_name(tmp.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "klp-lab",
                    "-f", str(tmp)], check=True, stdin=subprocess.DEVNULL)
    os.replace(tmp.with_name(tmp.name + ".pub"), key.with_suffix(".pub"))
    os.replace(tmp, key)
    return key


@contextlib.contextmanager
def _build_lock():
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "build.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def _remove_tree(path: Path) -> None:
    """Remove a (possibly stale) build directory, unmounting anything left mounted in it."""
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _clean_stale_builds() -> None:
    # Called with the build lock held: any tmp-* directory is left over from a killed build.
    for tmp in cache_dir().glob("tmp-*"):
        _remove_tree(tmp)
    for outdated in outdated_recipes(cache_dir()):
        step(f"removing {outdated.name}: made by an older recipe")
        _remove_tree(outdated)


def outdated_recipes(root: Path) -> list[Path]:
    """Images and base rootfs trees of another recipe than this code's: no lab of this
    checkout boots them again, and each image holds about a gigabyte."""
    images = [path for path in root.glob("images/*")
              if path.name.count("-") >= 2 and path.name.rsplit("-", 2)[1] != RECIPE]
    bases = [path for path in root.glob("base-*-*")
             if path.name.rsplit("-", 1)[1] != BASE_RECIPE]
    return sorted(images + bases)


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError("building a lab image needs root (debootstrap, chroot, mount); "
                       "run as root once, later runs reuse the cached image")
    for tool in ("debootstrap", "mke2fs", "qemu-img"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} not found: run 'make deps' (installs qemu-system-x86, "
                           "qemu-utils, debootstrap, e2fsprogs)")


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    path = root / rel.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _configure_base(root: Path, suite: str) -> None:
    """Files of the base rootfs: apt sources, host name, fstab."""
    _write(root, "/etc/apt/sources.list",
           f"deb {MIRROR} {suite} main\n"
           f"deb {MIRROR} {suite}-updates main\n"
           f"deb {SECURITY_MIRROR} {suite}-security main\n")
    _write(root, "/etc/hostname", "klp-lab\n")
    _write(root, "/etc/hosts", "127.0.0.1\tlocalhost\n127.0.1.1\tklp-lab\n")
    _write(root, "/etc/fstab", "/dev/vda\t/\text4\terrors=remount-ro\t0\t0\n")
    (root / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)


def _configure_guest(root: Path) -> None:
    """What makes an image's rootfs a headless lab guest that boots fast: network, sshd, the
    initramfs (written before the kernels are installed, whose scripts build it), units."""
    # net.ifnames=0 on the kernel command line makes the virtio NIC eth0.
    _write(root, "/etc/systemd/network/10-klp-lab.network", GUEST_NETWORK)
    _write(root, "/etc/ssh/sshd_config.d/klp-lab.conf",
           "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n")
    # virtio and ext4 are modules in Debian's kernels: the initramfs carries them, and only
    # them (MODULES=list: 7 MB instead of 36 MB, which the emulated kernel unpacks faster).
    _write(root, "/etc/initramfs-tools/modules", "virtio_pci\nvirtio_blk\nvirtio_net\next4\n")
    _write(root, "/etc/initramfs-tools/conf.d/klp-lab.conf", "MODULES=list\n")
    links = dict.fromkeys(MASKED_UNITS, "/dev/null")
    links |= {f"{wants}/{unit}": f"/lib/systemd/system/{unit}"
              for unit, wants in ENABLED_UNITS.items()}
    links["default.target"] = "/lib/systemd/system/multi-user.target"
    for name, target in links.items():
        link = root / "etc/systemd/system" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)


def suite_of(kernels: list[str] | tuple[str, ...]) -> str:
    """The one Debian suite of an image's kernels (Debian 12's bookworm, 13's trixie)."""
    from lab.kernels import suite_of as kernel_suite

    suites = {kernel_suite(k) for k in kernels}
    if len(suites) != 1:
        raise LabError(f"one VM runs kernels of one Debian release: {', '.join(kernels)} "
                       f"belong to {', '.join(sorted(suites))}")
    return suites.pop()


def base_rootfs(suite: str = "bookworm") -> Path:
    """The debootstrap'ed base rootfs of a suite (no kernel), built once per recipe."""
    final = cache_dir() / f"base-{suite}-{BASE_RECIPE}"
    if (final / "rootfs/etc/os-release").exists():
        return final / "rootfs"
    _require_root()
    logs = cache_dir() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"base-{suite}-{BASE_RECIPE}.log"
    log.write_text("")
    tmp = cache_dir() / f"tmp-base-{os.getpid()}"
    _remove_tree(tmp)
    t0 = time.monotonic()
    step(f"building base rootfs: debootstrap --variant=minbase {suite} (log {log})")
    try:
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
              suite, str(tmp / "rootfs"), MIRROR], log, "debootstrap of the lab base rootfs")
        _configure_base(tmp / "rootfs", suite)
        shutil.rmtree(tmp / "rootfs/var/cache/apt/archives", ignore_errors=True)
        (tmp / "rootfs/var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise
    step(f"base rootfs ready in {time.monotonic() - t0:.0f}s")
    return final / "rootfs"


def image_key(kernels: list[str] | tuple[str, ...], pubkey: str) -> str:
    """Cache key: the kernel releases (as a set), the recipe and the lab key it trusts."""
    digest = hashlib.sha256(pubkey.strip().encode()).hexdigest()[:8]
    return f"{'_'.join(sorted(set(kernels)))}-{RECIPE}-{digest}"


def find_image(kernels: list[str] | tuple[str, ...]) -> Image | None:
    pub = ssh_key().with_suffix(".pub").read_text()
    path = cache_dir() / "images" / image_key(kernels, pub)
    return Image(path) if (path / "image.json").exists() else None


def ensure_image(kernels: list[str]) -> Image:
    """The image with exactly these kernel releases installed; built when missing."""
    image = find_image(kernels)
    if image:
        step(f"image for {', '.join(kernels)}: cached ({image.path})")
        return image
    with _build_lock():
        image = find_image(kernels)  # another process may have built it meanwhile
        if image:
            return image
        _clean_stale_builds()
        suite = suite_of(kernels)
        return _build_image(base_rootfs(suite), kernels, suite)


@contextlib.contextmanager
def _chroot_mounts(root: Path, archives: Path):
    """proc for the package scripts; a shared apt archive so kernels download once."""
    mounted: list[Path] = []
    try:
        subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
        mounted.append(root / "proc")
        subprocess.run(["mount", "--bind", str(archives), str(root / "var/cache/apt/archives")],
                       check=True)
        mounted.append(root / "var/cache/apt/archives")
        yield
    finally:
        for point in reversed(mounted):
            subprocess.run(["umount", "-l", str(point)], check=False)


def _build_image(base: Path, kernels: list[str], suite: str) -> Image:
    pubkey = ssh_key().with_suffix(".pub").read_text()
    key = image_key(kernels, pubkey)
    final = cache_dir() / "images" / key
    tmp = cache_dir() / f"tmp-image-{os.getpid()}"
    log = cache_dir() / "logs" / f"image-{key}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    archives = cache_dir() / "apt-archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    _remove_tree(tmp)
    t0 = time.monotonic()
    root = tmp / "rootfs"
    try:
        step(f"image for {', '.join(kernels)}: copying base rootfs")
        tmp.mkdir(parents=True)
        _run(["cp", "-a", "--reflink=auto", str(base), str(root)], log, "copy of the base rootfs")
        _configure_guest(root)
        _write(root, "/root/.ssh/authorized_keys", pubkey, 0o600)
        _write(root, "/usr/sbin/policy-rc.d", "#!/bin/sh\nexit 101\n", 0o755)  # no daemons
        packages = [image_package(k) for k in kernels]
        step(f"image for {', '.join(kernels)}: apt-get install {' '.join(packages)} "
             f"in a chroot (log {log})")
        with _chroot_mounts(root, archives):
            _run(["chroot", str(root), "apt-get", "-q", "update"], log, "apt-get update in chroot",
                 env=_chroot_env())
            _run(["chroot", str(root), "apt-get", "-q", "-y", "--no-install-recommends",
                  "install", *packages], log,
                 f"installing {' '.join(packages)} in the image chroot", env=_chroot_env())
        (root / "usr/sbin/policy-rc.d").unlink()
        shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
        (root / "var/lib/apt/lists/partial").mkdir(parents=True)
        (tmp / "boot").mkdir()
        for k in kernels:
            for name in (f"vmlinuz-{k}", f"initrd.img-{k}"):
                src = root / "boot" / name
                if not src.exists():
                    raise LabError(f"{src} missing after installing linux-image-{k}; log {log}")
                shutil.copy2(src, tmp / "boot" / name)
        step(f"image for {', '.join(kernels)}: mke2fs -d ({DISK_SIZE} sparse raw ext4)")
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-L", "klp-lab", "-d", str(root),
              str(tmp / "disk.raw"), DISK_SIZE], log, "mke2fs of the image")
        _remove_tree(root)
        (tmp / "image.json").write_text(json.dumps(
            {"kernels": list(kernels), "recipe": RECIPE, "suite": suite,
             "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, indent=2) + "\n")
        final.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise
    step(f"image for {', '.join(kernels)} built in {time.monotonic() - t0:.0f}s")
    return Image(final)
