# SPDX-License-Identifier: GPL-3.0-or-later
"""klp.livepatch.build: the builder command line it runs, and the update summary."""

from __future__ import annotations

from pathlib import Path

from plugins.action.build import ActionModule

ARGS = {"name": "fix", "consistency": "default", "sign_key": None, "sign_cert": None,
        "replace": True, "update_to": None}


def test_patches_run_builder_build_once_per_kernel_with_if_changed():
    argv = ActionModule._argv(ARGS, [Path("/p/a.patch")], "6.1.0-57-amd64", Path("/o"))
    assert argv[2:4] == ["builder", "build"] and "--if-changed" in argv
    assert argv[argv.index("--patch") + 1] == "/p/a.patch"


def test_update_to_runs_builder_update_without_patches():
    argv = ActionModule._argv({**ARGS, "update_to": "latest", "consistency": "freeze"}, [],
                              "6.1.0-55-amd64", Path("/o"))
    assert argv[2:4] == ["builder", "update"]
    assert argv[argv.index("--to") + 1] == "latest"
    assert argv[argv.index("--consistency") + 1] == "freeze"
    assert "--patch" not in argv and "--if-changed" not in argv


def test_update_summary_counts_units_by_status():
    manifest = {"update": {"units": [
        {"name": "fs/ext4", "status": "live"},
        {"name": "mm", "status": "needs-reboot", "reason": "diff: layout"},
        {"name": "net", "status": "no-change"},
        {"name": "sound", "status": "not-in-config"}],
        "cves_live": ["CVE-1"], "cves_not_live": ["CVE-2"]}}
    outcome = {"from": "6.1.192-1", "to": "6.1.192-3", "state": "update"}
    assert ActionModule._update_summary(outcome, manifest) == {
        "from": "6.1.192-1", "to": "6.1.192-3", "state": "update", "live": ["fs/ext4"],
        "needs_reboot": [{"name": "mm", "reason": "diff: layout"}], "no_change": ["net"],
        "not_in_config": 1, "cves_live": ["CVE-1"], "cves_not_live": ["CVE-2"]}
