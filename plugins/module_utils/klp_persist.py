# Copyright: klp.livepatch developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Loading stored patches again at boot (a script and systemd units), with a
crash-loop guard that stops after a boot that did not come up."""

import os

from ansible_collections.klp.livepatch.plugins.module_utils.klp_errors import KlpError

BOOT_SCRIPT = "/usr/local/lib/klp-livepatch/klp-livepatch-boot"
BOOT_UNIT = "/etc/systemd/system/klp-livepatch.service"
BOOT_OK_UNIT = "/etc/systemd/system/klp-livepatch-ok.service"
BOOT_OK_TIMER = "/etc/systemd/system/klp-livepatch-ok.timer"
BOOT_STATE = "/var/lib/klp-livepatch/boot"
BOOT_OK_SECONDS = 120

BOOT_SCRIPT_TEXT = """#!/bin/sh
# Installed by klp.livepatch.patch (persist=true). Loads, early at boot, the livepatch
# modules marked persistent for the running kernel; "ok" marks the boot as healthy.
# Crash-loop guard: if the previous boot loaded patches and never reached "ok" (the
# klp-livepatch-ok.timer, %(ok)d s after boot), nothing is loaded and the names are
# recorded in %(state)s/skipped until klp.livepatch.patch persists a patch again.
set -u
state=%(state)s
dir=%(store)s/$(uname -r)
mkdir -p "$state"
case "${1:-load}" in
load)
    if [ -e "$state/pending" ]; then
        cat "$state/pending" >> "$state/skipped"
        rm -f "$state/pending"
        echo "klp-livepatch: previous boot loaded patches but did not reach boot-ok; skipping" >&2
        exit 0
    fi
    if [ -s "$state/skipped" ]; then
        echo "klp-livepatch: patches skipped by the crash-loop guard; not loading" >&2
        exit 0
    fi
    for marker in "$dir"/*.persist; do
        [ -e "$marker" ] || continue
        name=$(basename "$marker" .persist)
        echo "$name" >> "$state/pending"
        sync
        # The kernel takes one transition at a time (EBUSY): let the last one end, up to 60 s.
        i=0
        while grep -qsx 1 %(livepatch)s/*/transition && [ $i -lt 600 ]; do
            sleep 0.1
            i=$((i + 1))
        done
        if insmod "$dir/$name.ko"; then
            echo "klp-livepatch: loaded $name" >&2
        else
            echo "$name" >> "$state/failed"
        fi
    done
    ;;
ok)
    rm -f "$state/pending"
    date +%%s > "$state/last-ok"
    ;;
esac
exit 0
"""

BOOT_UNIT_TEXT = """# Installed by klp.livepatch.patch (persist=true)
[Unit]
Description=Load persistent kernel livepatches (klp.livepatch)
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target shutdown.target
Conflicts=shutdown.target
ConditionPathExists=%(script)s

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=%(script)s load

[Install]
WantedBy=sysinit.target
"""

BOOT_OK_UNIT_TEXT = """# Installed by klp.livepatch.patch (persist=true)
[Unit]
Description=Mark this boot healthy for the klp.livepatch crash-loop guard

[Service]
Type=oneshot
ExecStart=%(script)s ok
"""

BOOT_OK_TIMER_TEXT = """# Installed by klp.livepatch.patch (persist=true)
[Unit]
Description=Mark this boot healthy for the klp.livepatch crash-loop guard

[Timer]
OnBootSec=%(ok)ds

[Install]
WantedBy=timers.target
"""


class Persistence:
    """Boot-time loading of stored patches for the running kernel, with a crash-loop guard."""

    def __init__(self, target):
        self.t = target

    def files(self):
        values = {"state": BOOT_STATE, "store": self.t.store_base, "ok": BOOT_OK_SECONDS,
                  "script": BOOT_SCRIPT, "livepatch": "/sys/kernel/livepatch"}
        return [
            (BOOT_SCRIPT, BOOT_SCRIPT_TEXT % values, 0o755),
            (BOOT_UNIT, BOOT_UNIT_TEXT % values, 0o644),
            (BOOT_OK_UNIT, BOOT_OK_UNIT_TEXT % values, 0o644),
            (BOOT_OK_TIMER, BOOT_OK_TIMER_TEXT % values, 0o644),
        ]

    def marker(self, name):
        return os.path.join(self.t.store_dir(), name + ".persist")

    def persisted(self):
        try:
            return sorted(n[: -len(".persist")] for n in os.listdir(self.t.store_dir())
                          if n.endswith(".persist"))
        except OSError:
            return []

    def installed(self):
        return all(self.t.read(path) == text for path, text, _mode in self.files())

    def guard(self):
        def lines(name):
            return [ln for ln in (self.t.read(BOOT_STATE, name) or "").split() if ln]
        last_ok = (self.t.read(BOOT_STATE, "last-ok") or "").strip()
        return {"pending": lines("pending"), "skipped": lines("skipped"),
                "failed": lines("failed"), "last_ok": int(last_ok) if last_ok.isdigit() else None,
                "unit_enabled": os.path.lexists(self.t.path(
                    "etc/systemd/system/sysinit.target.wants/klp-livepatch.service"))}

    def plan(self, name, persist):
        """Whether persisting (or not) NAME would change anything."""
        has_marker = os.path.exists(self.marker(name))
        if persist:
            return (not has_marker or not self.installed() or bool(self.guard()["skipped"])
                    or not self.guard()["unit_enabled"])
        return has_marker

    def apply(self, name, persist, drop=()):
        """Make NAME persistent (installing the boot units) or not. True if changed."""
        changed = False
        for other in drop:
            if os.path.exists(self.marker(other)):
                os.remove(self.marker(other))
                changed = True
        if not persist:
            if os.path.exists(self.marker(name)):
                os.remove(self.marker(name))
                changed = True
            return changed
        for path, text, mode in self.files():
            if self.t.read(path) != text:
                full = self.t.path(path)
                if not os.path.isdir(os.path.dirname(full)):
                    os.makedirs(os.path.dirname(full), 0o755)
                with open(full + ".tmp", "w") as f:
                    f.write(text)
                os.chmod(full + ".tmp", mode)
                os.rename(full + ".tmp", full)
                changed = True
        if not os.path.exists(self.marker(name)):
            with open(self.marker(name), "w") as f:
                f.write(self.t.release + "\n")
            changed = True
        skipped = self.t.path(BOOT_STATE, "skipped")
        if os.path.exists(skipped):
            os.remove(skipped)  # a new decision by the operator re-arms the guard
            changed = True
        if not self.guard()["unit_enabled"]:
            self.t._run("systemctl", ["daemon-reload"])
            rc, out, err = self.t._run("systemctl", [
                "enable", "klp-livepatch.service", "klp-livepatch-ok.timer"])
            if rc != 0:
                raise KlpError(f"systemctl enable klp-livepatch.service failed: {err or out}")
            changed = True
        return changed
