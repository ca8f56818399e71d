# SPDX-License-Identifier: GPL-3.0-or-later
"""The fleet report (plugins/action/report.py): statuses, JSON, JUnit XML, HTML, queries."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import pytest

from ansible_collections.klp.livepatch.plugins.action import report as rp

KERNEL = {"release": "6.1.0-56-amd64", "package_version": "6.1.192-2",
          "distribution": "debian-12"}
CLOUD = {"release": "6.1.0-56-cloud-amd64", "package_version": "6.1.192-2"}

# A fixed fleet: one host per status, with the facts the roles set.
FLEET = {
    "web1": {
        "build_kernel": KERNEL,
        "rollout_result": {"status": "ok", "state": "enabled", "changed": True,
                           "transition_seconds": 1.25, "taint": "OEK"},
        "verify_result": {"ok": True, "reachable": True, "state": "enabled"},
    },
    "web2": {
        "build_kernel": CLOUD,
        "rollout_result": {"status": "failed", "state": "enabled", "changed": True,
                           "gate": "kernel_log", "reason": "WARNING: at mm/slab.c:42",
                           "transition_seconds": 0.5, "rolled_back": True},
    },
    "db1": {},  # never reached
    "db2": {"build_kernel": KERNEL},  # reached, but the rollout stopped before it
    "db3": {
        "build_kernel": KERNEL,
        "rollout_result": {"status": "skipped", "state": "disabled", "gate": "preflight",
                           "reason": "kworker/0:1 sleeps in cmdline_proc_show"},
    },
    "db4": {
        "build_kernel": KERNEL,
        "rollout_result": {"status": "ok", "state": "enabled", "transition_seconds": 2.0},
        "verify_result": {"ok": False, "reachable": True, "state": "transition",
                          "reason": "patch still in transition"},
    },
    "db5": {
        "build_kernel": KERNEL,
        "rollout_result": {"status": "ok", "state": "enabled", "transition_seconds": 1.0},
        "verify_result": {"ok": False, "reachable": False,
                          "reason": "ssh: connect to host db5 port 22: timed out"},
    },
}

EXPECTED_STATUS = {"web1": "ok", "web2": "failed", "db1": "unreachable", "db2": "not_attempted",
                   "db3": "skipped", "db4": "failed", "db5": "unreachable"}


@pytest.fixture
def report() -> dict:
    entries = [rp.host_entry(host, facts) for host, facts in FLEET.items()]
    return rp.build_report(entries, "cve_2026_1234", build={"built": ["6.1.0-56-amd64"],
                                                            "skipped": []},
                           generated="2026-11-28T08:00:00Z")


@pytest.mark.parametrize(("host", "status"), sorted(EXPECTED_STATUS.items()))
def test_status(report, host, status):
    entry = next(e for e in report["hosts"] if e["host"] == host)
    assert entry["status"] == status


def test_gates_and_reasons(report):
    by_host = {e["host"]: e for e in report["hosts"]}
    assert (by_host["web2"]["gate"], by_host["web2"]["rolled_back"]) == ("kernel_log", True)
    assert by_host["db4"]["gate"] == "verify"
    assert by_host["db4"]["reason"] == "patch still in transition"
    assert by_host["db1"]["gate"] == "reachable"
    assert "did not answer" in by_host["db1"]["reason"]
    assert "timed out" in by_host["db5"]["reason"]
    assert by_host["web1"]["verified"] is True


def test_summary_and_order(report):
    assert report["summary"] == {"hosts": 7, "failed": 2, "unreachable": 2, "skipped": 1,
                                 "not_attempted": 1, "current": 0, "ok": 1}
    assert report["success"] is False
    assert [e["status"] for e in report["hosts"]][0] == "failed"
    assert report["hosts"][-1]["host"] == "web1"


def test_all_ok_is_success():
    entries = [rp.host_entry("web1", FLEET["web1"])]
    assert rp.build_report(entries, "p")["success"] is True


def test_json_round_trip(report):
    assert json.loads(rp.render_json(report)) == report


def test_junit(report):
    root = ET.fromstring(rp.render_junit(report))
    suite = root.find("testsuite")
    assert suite.get("tests") == "7"
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("2", "2", "2")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert set(cases) == set(FLEET)
    assert cases["web2"].find("failure").get("message") == "kernel_log: WARNING: at mm/slab.c:42"
    assert cases["db1"].find("error") is not None
    assert cases["db3"].find("skipped") is not None
    assert list(cases["web1"]) == []
    assert cases["web1"].get("time") == "1.250"
    assert cases["web1"].get("classname") == "klp_livepatch/cve_2026_1234/6_1_0-56-amd64"
    assert all("." not in case.get("classname") for case in cases.values())


def test_html(report):
    page = rp.render_html(report)
    assert page.startswith("<!DOCTYPE html>")
    for host in FLEET:
        assert f"<td>{host}</td>" in page
    assert "6.1.0-56-cloud-amd64" in page
    assert "kernel_log" in page and "(rolled back)" in page
    assert "attention needed" in page
    assert "built: 6.1.0-56-amd64" in page
    assert "6.1.192-2 · debian-12" in page  # the distribution per host
    assert "http" not in page  # self-contained: no external assets


def test_html_escapes():
    entries = [rp.host_entry("<b>x</b>", {"build_kernel": KERNEL, "rollout_result": {
        "status": "failed", "gate": "probe", "reason": "<script>alert(1)</script>"}})]
    page = rp.render_html(rp.build_report(entries, "p"))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)" in page
    assert page.count("<script>") == 1  # the page's own filter script only


def test_the_page_shows_each_hosts_evidence_and_each_kernels_build():
    entry = rp.host_entry("web1", {"build_kernel": KERNEL, "rollout_result": {
        "status": "failed", "gate": "transition", "reason": "stalled", "taint": "K",
        "taint_before": "", "kernel_log": ["livepatch: enabling patch 'fix'"],
        "probes": [{"command": "true", "rc": 0, "stdout": "", "stderr": ""}],
        "stalled_tasks": [{"comm": "cat", "pid": 42, "stack": ["[<0>] pipe_read+0x1/0x2"]}]}})
    report = rp.build_report([entry], "fix", build={
        "kernels": rp.kernel_summaries({"6.1.0-56-amd64": {
            "objects": {"vmlinux": [{"name": "cmdline_proc_show"}]},
            "module_sha256": "ab" * 32, "patch_sha256": "cd" * 32,
            "builder_version": "0.1.0", "signed": False}})})
    page = rp.render_html(report)
    for text in ("taint - &rarr; K", "probe <code>true</code>: exit 0",
                 "livepatch: enabling patch &#x27;fix&#x27;", "stalled: cat (pid 42)",
                 "pipe_read+0x1/0x2", "vmlinux:cmdline_proc_show", "abababababababab",
                 'id="filter"'):
        assert text in page, text


@pytest.mark.parametrize(("query", "answer"), [
    ("hosts[?status=='failed'].host | sort(@)", ["db4", "web2"]),
    ("hosts[?kernel_release=='6.1.0-56-cloud-amd64'].host", ["web2"]),
    ("summary.ok", 1),
    ("length(hosts[?changed])", 2),
])
def test_query(report, query, answer):
    assert rp.run_query(report, query) == answer


def test_bad_query(report):
    with pytest.raises(rp.AnsibleActionFail, match="invalid report query"):
        rp.run_query(report, "hosts[?")


def test_write_atomic(tmp_path):
    path = tmp_path / "report.json"
    rp.write_atomic(str(path), "one")
    rp.write_atomic(str(path), "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_each_run_has_its_directory_and_latest_names_the_newest(tmp_path):
    for run in ("20261201T040000Z-fix-enabled", "20261201T050000Z-fix-absent"):
        (tmp_path / run).mkdir()
        rp.point_latest(str(tmp_path), run)
    latest = tmp_path / rp.LATEST
    assert latest.is_symlink() and os.readlink(latest) == "20261201T050000Z-fix-absent"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "20261201T040000Z-fix-enabled", "20261201T050000Z-fix-absent", "latest"]


def test_kernel_without_livepatch_support():
    entry = rp.host_entry("old", {"build_kernel": {**KERNEL, "livepatch_supported": False}})
    assert (entry["status"], entry["gate"]) == ("failed", "kernel")


def test_an_update_shows_versions_units_reboot_debt_and_cves():
    kernel = {"release": "6.1.0-55-amd64", "package_version": "6.1.192-1",
              "livepatch_supported": True}
    update = {"from": "6.1.192-1", "to": "6.1.192-3", "state": "update",
              "live": ["fs/ext4", "fs/nfsd"], "needs_reboot": [{"name": "mm", "reason": "x"}],
              "cves_live": ["CVE-2026-99362"], "cves_not_live": []}
    patched = rp.host_entry("h55", {
        "build_kernel": kernel, "build_update": update,
        "rollout_result": {"status": "ok", "state": "enabled", "changed": True},
        "verify_result": {"ok": True, "reachable": True, "state": "enabled"}})
    current = rp.host_entry("h57", {
        "build_kernel": {**kernel, "release": "6.1.0-57-amd64", "package_version": "6.1.192-3"},
        "build_update": {"from": "6.1.192-3", "to": "6.1.192-3", "state": "current"},
        "rollout_result": {"status": "current", "gate": "build", "reason": "already runs"},
        "verify_result": {"ok": True, "reachable": True, "state": "absent"}})
    assert patched["update"]["needs_reboot"] == ["mm"] and patched["status"] == "ok"
    assert current["status"] == "current"
    report = rp.build_report([patched, current], "debian_update", generated="x")
    assert report["summary"]["current"] == 1 and report["success"] is True
    page = rp.render_html(report)
    assert "6.1.192-1 &rarr; 6.1.192-3: 2 unit(s) live, 1 need a reboot (mm)" in page
    assert "CVE-2026-99362" in page and "already runs 6.1.192-3" in page
    assert 'skipped="1"' in rp.render_junit(report)


def test_a_dry_run_report_says_so_and_shows_the_prediction():
    entry = rp.host_entry("web1", {
        "build_kernel": KERNEL,
        "rollout_result": {
            "status": "ok", "state": "enabled", "changed": True,
            "reason": "check mode: fix.ko would be built for this kernel, then loaded"},
        "verify_result": {"ok": True, "reachable": True, "state": "absent"}})
    report = rp.build_report([entry], "fix")
    report["check_mode"] = True
    page = rp.render_html(report)
    assert "dry run (check mode)" in page
    assert "would be built for this kernel, then loaded" in page


def test_the_fleet_status_lists_loaded_and_stored_patches():
    entry = rp.host_entry("web1", {
        "build_kernel": KERNEL,
        "status_result": {
            "patches": [{"name": "cve_fix", "enabled": True, "transition": False,
                         "objects": {"vmlinux": {"functions": [{"name": "f"}, {"name": "g"}]}}},
                        {"name": "old", "enabled": False, "transition": True}],
            "stored": [{"name": "cve_fix", "persist": True}], "taint": "K"}})
    assert entry["status"] == "ok"
    assert entry["patch_state"] == "cve_fix enabled, old unpatching"
    assert entry["patches"][0]["functions"] == 2
    page = rp.render_html(rp.build_report([entry], "fleet-status"))
    assert "stored: cve_fix (at boot)" in page


def test_each_host_names_its_distribution(report):
    hosts = {e["host"]: e for e in report["hosts"]}
    assert hosts["web1"]["distribution"] == "debian-12"
