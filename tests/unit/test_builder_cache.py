# SPDX-License-Identifier: GPL-3.0-or-later
"""The controller cache: listing, the least-recently-used order, pruning to a budget
without touching a source tree another build holds."""

from __future__ import annotations

import fcntl
import os
import subprocess
import threading
from pathlib import Path

import pytest

from builder import cache
from builder.__main__ import main


def entry(root, area, name, size, used):
    path = root / area / name
    if area == "debs":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * size)
        os.utime(path, (used, used))
        return path
    path.mkdir(parents=True)
    (path / "data").write_bytes(b"x" * size)
    cache.mark_used(path)
    os.utime(path / cache.USED_MARK, (used, used))
    return path


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("KLP_CACHE", str(tmp_path))
    entry(tmp_path, "src", "6.1.190-1", 5000, used=100)
    entry(tmp_path, "kernels", "6.1.0-55-amd64_6.1.190-1", 3000, used=200)
    entry(tmp_path, "debs", "linux-source-6.1_6.1.190-1_all.deb", 2000, used=300)
    entry(tmp_path, "work", "fix-6.1.0-57-amd64", 1000, used=400)
    (tmp_path / "src" / ".6.1.192-3.tmp-99").mkdir()  # an extraction under way
    return tmp_path


def test_entries_are_listed_least_recently_used_first(root):
    listed = cache.entries(root)
    assert [e.path.name for e in listed] == [
        "6.1.190-1", "6.1.0-55-amd64_6.1.190-1", "linux-source-6.1_6.1.190-1_all.deb",
        "fix-6.1.0-57-amd64"]
    assert [e.size for e in listed] == [5000, 3000, 2000, 1000]


def test_prune_removes_the_oldest_until_the_rest_fits(root, capsys):
    assert main(["cache", "prune", "--max-size", "3500", "--dry-run"]) == 0
    assert "would remove" in capsys.readouterr().out
    assert (root / "src" / "6.1.190-1").is_dir()  # a dry run removes nothing
    assert main(["cache", "prune", "--max-size", "3500"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out and "2.9K left" in out  # 2000 + 1000 bytes
    assert sorted(p.name for p in (root / "src").iterdir()) == [".6.1.192-3.tmp-99"]
    assert not (root / "kernels" / "6.1.0-55-amd64_6.1.190-1").exists()
    assert (root / "work" / "fix-6.1.0-57-amd64").is_dir()


def test_a_source_tree_in_use_is_kept(root):
    lock = root / "src" / "6.1.190-1" / cache.TREE_LOCK
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another build compiles in this tree
        removed, _left = cache.prune(root, 0)
    assert (root / "src" / "6.1.190-1").is_dir()
    assert "6.1.190-1" not in [e.path.name for e in removed]
    assert len(removed) == 3


@pytest.mark.parametrize(("text", "size"), [("20G", 20 << 30), ("500M", 500 << 20),
                                            ("1.5K", 1536), ("123", 123), ("2GiB", 2 << 30)])
def test_sizes(text, size):
    assert cache.parse_size(text) == size


def test_a_bad_budget_is_refused(root, capsys):
    assert main(["cache", "prune", "--max-size", "lots"]) == 2
    assert "not a size such as 20G" in capsys.readouterr().err
    assert main(["cache", "prune"]) == 2


def test_a_killed_builds_leftover_goes_and_a_running_ones_stays(tmp_path):
    """temporary_for: what a build that no longer runs left beside the destination (a
    half-extracted tree, a half-written file) is removed; a running build's is not."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    dest = tmp_path / "pkgs"
    half_tree = tmp_path / f".pkgs.tmp-{dead.pid}"
    (half_tree / "usr").mkdir(parents=True)
    no_such_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    half_file = tmp_path / f".pkgs.tmp-{no_such_pid}"
    half_file.write_text("half")
    running = tmp_path / f".pkgs.tmp-{os.getppid()}"
    running.mkdir()
    other = tmp_path / ".src.tmp-1"  # another destination's: not this one's business
    other.mkdir()
    sibling = tmp_path / f".pkgs.tmp-{os.getpid()}.1"  # another thread of this process
    sibling.write_text("under way")
    mine = cache.temporary_for(dest)
    assert mine == tmp_path / f".pkgs.tmp-{os.getpid()}.{threading.get_ident()}"
    assert not half_tree.exists() and not half_file.exists()
    assert running.is_dir() and other.is_dir() and sibling.is_file()


def test_two_threads_never_share_a_temporary_name(tmp_path):
    """An update builds two units at once in one process: both may write the same cache
    file (a kernel's kallsyms table); neither may remove or rename the other's."""
    names = []
    both = threading.Barrier(2)  # alive at once: a finished thread's id may be reused

    def name() -> None:
        names.append(cache.temporary_for(tmp_path / "kallsyms.json"))
        both.wait(timeout=10)

    workers = [threading.Thread(target=name), threading.Thread(target=name)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(set(names)) == 2


def test_a_kernel_extracted_before_is_resolved_and_acquired_without_the_archive(
        tmp_path, monkeypatch):
    """A warm build asks apt nothing (each question costs a second or more)."""
    from builder.providers.debian import DebianProvider

    monkeypatch.setenv("KLP_CACHE", str(tmp_path))
    (tmp_path / "kernels" / "6.1.0-57-amd64_6.1.192-3" / "pkgs").mkdir(parents=True)
    (tmp_path / "src" / "6.1.192-3" / "deb").mkdir(parents=True)
    (tmp_path / "debs").mkdir()
    (tmp_path / "debs" / "linux-image-6.1.0-57-amd64-unsigned_6.1.192-3_amd64.deb").touch()
    provider = DebianProvider("12")

    def no_archive(*args, **kwargs):
        raise AssertionError(f"the archive was asked: {args}")

    monkeypatch.setattr(type(provider.archive), "run", no_archive)
    kernel = provider.resolve("6.1.0-57-amd64", "6.1.192-3")
    assert (kernel.release, kernel.package_version) == ("6.1.0-57-amd64", "6.1.192-3")
    monkeypatch.setattr("builder.stages.acquire.acquire_packages",
                        lambda kernel, names, cache, archive: names)
    names = provider.acquire(kernel)
    assert names["image"] == "linux-image-6.1.0-57-amd64-unsigned"
    with pytest.raises(AssertionError, match="the archive was asked"):
        provider.resolve("6.1.0-57-amd64", "6.1.192-2")  # never fetched: asked
