# SPDX-License-Identifier: GPL-3.0-or-later
"""The HTML report in a real headless browser (Debian's Chromium): it renders at 3 and
at 500 hosts (screenshots kept for people to look at), failures come first, and the
filter box hides the rows that do not match."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from ansible_collections.klp.livepatch.plugins.action import report as rp

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                                "(make setup installs it)")
SHOTS = Path(__file__).resolve().parents[1] / "output" / "report-screenshots"
KERNELS = ("6.1.0-56-amd64", "6.1.0-56-cloud-amd64", "6.12.117+deb12-amd64")


def fleet(count: int) -> list[dict]:
    """COUNT synthetic hosts: mostly patched, every 25th failing a probe, every 40th
    unreachable."""
    entries = []
    for i in range(count):
        kernel = {"release": KERNELS[i % 3], "package_version": "6.1.192-2",
                  "livepatch_supported": True}
        facts = {"build_kernel": kernel, "verify_result": {"ok": True, "reachable": True,
                                                           "state": "enabled"},
                 "rollout_result": {"status": "ok", "state": "enabled", "changed": True,
                                    "transition_seconds": 0.4 + i % 7 / 10, "taint": "K",
                                    "taint_before": ""}}
        if i % 25 == 7:
            facts["rollout_result"].update(
                status="failed", gate="probes", reason="curl -fs localhost/health failed",
                probes=[{"command": "curl -fs localhost/health", "rc": 7, "stdout": "",
                         "stderr": "connection refused"}])
        if i % 40 == 13:
            facts = {"build_kernel": kernel,
                     "verify_result": {"reachable": False, "reason": "ssh: timed out"}}
        entries.append(rp.host_entry(f"web{i:03d}.example.org", facts))
    return entries


def browser(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", *args], capture_output=True, text=True,
                          check=False, timeout=180)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("hosts", [3, 500])
def test_the_report_renders_in_chromium(tmp_path, hosts):
    page = tmp_path / "report.html"
    page.write_text(rp.render_html(rp.build_report(fleet(hosts), "cve_fix")))
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"report-{hosts}-hosts.png"
    shot.unlink(missing_ok=True)
    proc = browser("--window-size=1280,1000", f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), proc.stderr[-2000:]
    assert png_size(shot) == (1280, 1000)
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_failures_come_first_and_the_filter_hides_the_rest(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(rp.render_html(rp.build_report(fleet(500), "cve_fix")))
    dom = browser("--dump-dom", page.as_uri() + "#filter=probes").stdout
    rows = re.findall(r"<tr class=\"(\w+)-row\"( hidden=\"\")?>", dom)
    assert len(rows) == 500
    statuses = [status for status, _hidden in rows]
    assert statuses[:20] == ["failed"] * 20  # worst first
    shown = [status for status, hidden in rows if not hidden]
    assert shown == ["failed"] * 20, shown  # only the hosts that failed gate probes
    assert "20 shown" in dom
