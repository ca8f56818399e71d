# SPDX-License-Identifier: GPL-3.0-or-later
"""builder update: changelog items between two uploads, tied to fix units; versions."""

from __future__ import annotations

import gzip
import shutil

import pytest

from builder.errors import BuildError
from builder.providers.archive import Archive
from builder.update import _cves, target_version
from builder.update.changelog import items_between, read_changelog, tie

pytestmark = pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs dpkg")
BOOKWORM = Archive("bookworm")

CHANGELOG = """\
linux (6.1.192-3) bookworm-security; urgency=high

  * nfsd: preflight SEQUENCE replies before accepting a slot (CVE-2026-99362)

 -- Debian Kernel Team <debian-kernel@lists.debian.org>  Mon, 23 Nov 2026 10:00:00 +0000

linux (6.1.192-2) bookworm-security; urgency=high

  * ext4: fix NULL folio dereference in mballoc (Closes: #1154101)

 -- Debian Kernel Team <debian-kernel@lists.debian.org>  Mon, 16 Nov 2026 10:00:00 +0000

linux (6.1.192-1) bookworm-security; urgency=high

  * New upstream stable update:
    https://www.kernel.org/pub/linux/kernel/v6.x/ChangeLog-6.1.191
    - io_uring/io-wq: don't lose the signal that ends work (CVE-2026-99228)
    - net/sched: act_pedit: use NLA_POLICY for parsing 'ex' keys
    - sched: fair: keep the clock monotonic
    - [x86] KVM: nVMX: Hide shadow VMCS right after VMCLEAR
      (CVE-2026-64562)

 -- Debian Kernel Team <debian-kernel@lists.debian.org>  Mon, 09 Nov 2026 10:00:00 +0000

linux (6.1.190-1) bookworm-security; urgency=high

  * sound: older upload (CVE-2026-00001)

 -- Debian Kernel Team <debian-kernel@lists.debian.org>  Mon, 02 Nov 2026 10:00:00 +0000
"""


def test_items_are_those_after_the_running_version_up_to_the_target():
    items = items_between(CHANGELOG, "6.1.192-1", "6.1.192-3")
    assert [(i.version, i.cves) for i in items] == [
        ("6.1.192-3", ["CVE-2026-99362"]), ("6.1.192-2", [])]
    assert items[0].text.startswith("nfsd: preflight SEQUENCE replies")


def test_stable_items_keep_their_wrapped_cve_and_drop_the_headings():
    items = items_between(CHANGELOG, "6.1.190-1", "6.1.192-1")
    texts = [i.text for i in items]
    assert not any(t.startswith(("New upstream", "https://")) for t in texts)
    kvm = next(i for i in items if "KVM" in i.text)
    assert kvm.cves == ["CVE-2026-64562"] and kvm.text.endswith("(CVE-2026-64562)")
    assert "6.1.190-1" not in {i.version for i in items}


def test_items_tie_to_the_unit_their_subsystem_names():
    items = items_between(CHANGELOG, "6.1.190-1", "6.1.192-3")
    units = {"fs/nfsd": ["fs/nfsd/nfs4state.c"], "fs/ext4": ["fs/ext4/mballoc.c"],
             "io_uring": ["io_uring/io-wq.c"], "net/sched": ["net/sched/act_pedit.c"],
             "kernel/sched": ["kernel/sched/core.c"]}
    tied = {name: [i.text.split(":")[0] for i in found]
            for name, found in tie(items, units).items()}
    assert tied["fs/nfsd"] == ["nfsd"] and tied["fs/ext4"] == ["ext4"]
    assert tied["io_uring"] == ["io_uring/io-wq"]
    assert tied["net/sched"] == ["net/sched"]
    assert tied["kernel/sched"] == []  # "sched:" could be either sched directory


def test_cves_of_live_units_and_the_rest():
    items = items_between(CHANGELOG, "6.1.192-1", "6.1.192-3")
    records = [{"status": "live", "changelog": [items[0].as_dict()]},
               {"status": "needs-reboot", "changelog": []}]
    assert _cves(records, items) == {"cves_live": ["CVE-2026-99362"], "cves_not_live": []}
    records[0]["status"] = "needs-reboot"
    assert _cves(records, items) == {"cves_live": [], "cves_not_live": ["CVE-2026-99362"]}


def test_read_changelog_reads_the_gzip_debian_ships(tmp_path):
    path = tmp_path / "changelog.Debian.gz"
    with gzip.open(path, "wt") as fh:
        fh.write(CHANGELOG)
    assert read_changelog(path) == CHANGELOG


def test_latest_is_the_newest_source_the_archive_offers(monkeypatch):
    offered = ["6.1.192-3", "6.1.192-2", "6.1.192-1"]
    monkeypatch.setattr("builder.update.madison_versions", lambda package, archive: offered)
    assert target_version("6.1", "latest", "6.1.192-1", BOOKWORM) == "6.1.192-3"
    assert target_version("6.1", "6.1.192-2", "6.1.192-1", BOOKWORM) == "6.1.192-2"
    with pytest.raises(BuildError, match="has no version 6.1.999-1"):
        target_version("6.1", "6.1.999-1", "6.1.192-1", BOOKWORM)


def test_units_build_concurrently_each_in_a_work_directory_no_other_build_uses(
        monkeypatch, tmp_path):
    import threading
    import time

    from builder.progress import Progress
    from builder.update import UpdateRequest, _unit_records
    from builder.update.units import Unit

    in_use: set = set()
    most = [0]
    guard = threading.Lock()
    both_running = threading.Event()

    def fake_result(request, kernel, unit, patch, work, unit_work, progress):
        with guard:
            assert unit_work not in in_use, f"{unit_work} used by two builds at once"
            in_use.add(unit_work)
            most[0] = max(most[0], len(in_use))
            if len(in_use) == 2:
                both_running.set()
        # the first builds wait for a second one to start: one at a time would time out
        both_running.wait(timeout=10)
        time.sleep(0.02 if unit.name.endswith("0") else 0.0)  # finish out of order
        with guard:
            in_use.discard(unit_work)
        return {"key": {}, "status": "live", "reason": "", "built_in": unit_work.name}

    monkeypatch.setattr("builder.update._unit_result", fake_result)
    units = [Unit(name=f"dir{i}", sources=[f"dir{i}/a.c"]) for i in range(7)]
    units.insert(3, Unit(name="off", unbuilt=["off/x.c"], reason="CONFIG_OFF is not set"))
    patches = {u.name: tmp_path / f"{u.name}.patch" for u in units}
    request = UpdateRequest(kernel="k", to="latest", name="n", output=tmp_path, jobs=2)
    records = _unit_records(request, None, units, patches, tmp_path, Progress())

    assert [r["name"] for r in records] == [u.name for u in units]  # the units' order
    assert records[3]["status"] == "not-in-config"
    assert records[3]["reason"] == "CONFIG_OFF is not set"
    assert {r["built_in"] for r in records if r["status"] == "live"} == {"unit-work",
                                                                         "unit-work-2"}
    assert most[0] == 2
