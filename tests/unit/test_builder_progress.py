# SPDX-License-Identifier: GPL-3.0-or-later
"""The builder's one clock (builder/progress.py): the lines it prints and the figures it keeps."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from builder import progress as progress_mod
from builder.progress import Progress, Timer, timed

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def clock(monkeypatch):
    """time.monotonic as the test sets it: clock.now = seconds."""
    class Clock:
        now = 100.0
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: Clock.now)
    return Clock


def test_a_stage_prints_the_run_time_its_name_detail_and_its_own_time(clock):
    out = io.StringIO()
    progress = Progress(stream=out)

    def work(a, b=0):
        clock.now += 4.1234
        return a + b

    clock.now += 8.2
    assert progress.stage("compile", "fs/proc/meminfo.c", work, 1, b=2) == 3
    assert out.getvalue() == "[  12.3s] compile   fs/proc/meminfo.c (4.1s)\n"
    assert progress.seconds == {"compile": 4.123}


def test_a_note_prints_under_the_stage_lines(clock):
    out = io.StringIO()
    progress = Progress(stream=out)
    clock.now += 14.0
    progress.note("unit 2/5: fs/ext4")
    assert out.getvalue() == "[  14.0s]           unit 2/5: fs/ext4\n"


def test_a_stage_run_again_keeps_its_last_time(clock):
    """update runs acquire and prepare itself, then the cumulative build runs them again."""
    progress = Progress(stream=io.StringIO())

    def take(seconds):
        clock.now += seconds

    for took in (5.0, 2.0):
        progress.stage("prepare", "kernel tree", take, took)
    assert progress.seconds == {"prepare": 2.0}


def test_a_nested_run_shares_the_clock_and_stream_but_not_the_figures(clock):
    out = io.StringIO()
    outer = Progress(stream=out)
    outer.stage("resolve", "versions", lambda: None)
    clock.now += 30.0
    inner = outer.nested()
    inner.stage("diff", "1 unit(s)", lambda: None)
    assert inner.clock is outer.clock and inner.stream is out
    assert outer.seconds == {"resolve": 0.0} and inner.seconds == {"diff": 0.0}
    assert out.getvalue().splitlines()[-1] == "[  30.0s] diff      1 unit(s) (0.0s)"


def test_timed_adds_up_even_when_the_body_fails(clock):
    timings = {"plan": 1.5}
    with timed(timings, "plan") as timer:
        clock.now += 0.25
        assert timer.seconds == 0.25
    with pytest.raises(RuntimeError), timed(timings, "apply"):
        clock.now += 2.0
        raise RuntimeError("patch failed")
    assert timings == {"plan": 1.75, "apply": 2.0}


def test_timer_counts_from_when_it_was_made(clock):
    timer = Timer()
    clock.now += 3.5
    assert timer.seconds == 3.5


def test_only_the_timer_reads_the_clock():
    """Every figure the builder records or prints comes from builder/progress.py."""
    found = subprocess.run(["grep", "-rln", "--include=*.py", "time.monotonic", "builder"],
                           cwd=REPO, capture_output=True, text=True, check=False).stdout.split()
    assert found == ["builder/progress.py"]


def test_every_step_of_a_build_is_a_timed_stage(tmp_path, monkeypatch):
    """pipeline.build with each step stubbed: every step is a stage, in order."""
    from types import SimpleNamespace

    from builder import pipeline
    from builder.pipeline import BuildRequest
    from builder.stages import compile as compile_stage
    from builder.stages import prepare as prepare_stage
    from builder.symbols import Exports

    patch = tmp_path / "fix.patch"
    patch.write_text("--- a/f.c\n+++ b/f.c\n@@ -1 +1 @@\n-a\n+b\n")
    ko = tmp_path / "built.ko"
    ko.write_bytes(b"module")
    kernel = SimpleNamespace(release="6.1.0-56-amd64", package_version="6.1.192-1")
    provider = SimpleNamespace(resolve=lambda release, version: kernel,
                               acquire=lambda k: SimpleNamespace(kernel=k, module_symvers=None))
    monkeypatch.setattr(pipeline, "get_provider", lambda distribution: provider)
    monkeypatch.setattr(pipeline, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(pipeline, "mark_used", lambda *paths: None)
    tree = SimpleNamespace(source_dir=tmp_path / "src" / "linux", toolchain=[])
    monkeypatch.setattr(prepare_stage, "prepare", lambda packages: tree)
    monkeypatch.setattr(compile_stage, "compile_units",
                        lambda *a, **kw: SimpleNamespace(units=[]))
    monkeypatch.setattr(pipeline, "_diff_all", lambda *a: [])
    monkeypatch.setattr(pipeline, "_verify_all", lambda *a: ({}, {}))
    monkeypatch.setattr(Exports, "load", classmethod(lambda cls, path: None))
    monkeypatch.setattr(pipeline, "probe_layout", lambda *a: None)
    monkeypatch.setattr(pipeline, "_generate_all", lambda *a: [])
    monkeypatch.setattr(pipeline, "_link", lambda *a: SimpleNamespace(path=ko))
    monkeypatch.setattr(pipeline, "_check", lambda *a: None)
    monkeypatch.setattr(pipeline, "_sign", lambda *a: None)
    monkeypatch.setattr(pipeline, "_manifest", lambda *a: {"stage_seconds": a[6]})
    out = io.StringIO()
    progress = Progress(stream=out)
    request = BuildRequest(kernel=kernel.release, patches=[patch], name="fix",
                           output=tmp_path / "out", work=tmp_path / "work",
                           sign_key=tmp_path / "k", sign_cert=tmp_path / "c")
    manifest = pipeline.build(request, progress)
    stages = ["acquire", "prepare", "compile", "diff", "verify", "exports", "layout",
              "generate", "link", "check", "sign"]
    assert list(manifest["stage_seconds"]) == stages
    assert [line[10:].split()[0] for line in out.getvalue().splitlines()] == stages
