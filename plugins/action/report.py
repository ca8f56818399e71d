# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for klp.livepatch.report: the fleet report (JSON, JUnit XML, HTML).

Everything about the report lives here: reading each host's rollout facts, deciding its
status, rendering the three formats and answering JMESPath queries. The rendering
functions are pure so that unit tests can feed them a fixed fleet.

Host facts read (all optional; see roles/rollout and roles/verify):
  build_kernel     {release, package_version, distribution, livepatch_supported}  set once
                   the host answered
  build_update     {from, to, state, live, needs_reboot, cves_live, ...}  with an update
  rollout_result   {status, state, gate, reason, transition_seconds, changed, ...}
  verify_result    {ok, reachable, state, transition, reason}
  status_result    {patches, stored, taint}  read-only fleet view (playbooks/status.yml)
"""

from __future__ import annotations

import html
import json
import os
import tempfile
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    import jmespath
except ImportError:  # reported when a query is asked for
    jmespath = None

FORMATS = ("json", "junit", "html")
FILES = {"json": "report.json", "junit": "report.xml", "html": "report.html"}
# With `run`, each run writes into its own directory and this link names the newest.
LATEST = "latest"
# Worst first: the order of the summary and of the HTML table.
STATUSES = ("failed", "unreachable", "skipped", "not_attempted", "current", "ok")

ARGUMENT_SPEC = {
    "dest": {"type": "path", "required": True},
    "run": {"type": "str"},
    "name": {"type": "str", "required": True},
    "state": {"type": "str", "default": "enabled", "choices": ["enabled", "absent"]},
    "hosts": {"type": "list", "elements": "str"},
    "records": {"type": "dict"},
    "build": {"type": "dict", "default": {}},
    "formats": {"type": "list", "elements": "str", "default": list(FORMATS),
                "choices": list(FORMATS)},
    "query": {"type": "str"},
}

HOST_FACTS = ("build_kernel", "build_update", "rollout_result", "verify_result",
              "status_result")


def _plain(value):
    """A JSON round trip: plain dicts, lists and strings instead of Ansible's wrappers."""
    return json.loads(json.dumps(value, default=str))


def host_entry(host: str, facts: dict) -> dict:
    """One host's line of the report, from its facts (see HOST_FACTS)."""
    kernel = facts.get("build_kernel") or {}
    result = facts.get("rollout_result") or {}
    verify = facts.get("verify_result") or {}
    entry = {
        "host": host,
        "kernel_release": kernel.get("release"),
        "package_version": kernel.get("package_version"),
        "distribution": kernel.get("distribution"),
        "status": "ok",
        "patch_state": verify.get("state") or result.get("state"),
        "transition_seconds": result.get("transition_seconds"),
        "changed": bool(result.get("changed", False)),
        "gate": result.get("gate"),
        "reason": result.get("reason"),
        "rolled_back": bool(result.get("rolled_back", False)),
        "verified": bool(verify.get("ok", False)),
        "taint": result.get("taint"),
    }
    # What the gates saw, for the page's per-host details (absent keys stay out).
    evidence = {"taint_before": result.get("taint_before"), "taint_after": result.get("taint"),
                "probes": result.get("probes") or [],
                "kernel_log": result.get("kernel_log") or [],
                "stalled_tasks": result.get("stalled_tasks") or []}
    entry["evidence"] = {k: v for k, v in evidence.items() if v}
    update = facts.get("build_update") or {}
    if update:
        # Running version, live-patched-to version, units live and the reboot debt.
        entry["update"] = {
            "from": update.get("from"), "to": update.get("to"), "state": update.get("state"),
            "live_units": update.get("live", []),
            "needs_reboot": [u["name"] for u in update.get("needs_reboot", [])],
            "cves_live": update.get("cves_live", []),
            "cves_not_live": update.get("cves_not_live", [])}
    status = facts.get("status_result")
    if status is not None and kernel:
        # The fleet view: what each host has, with nothing asked of it.
        entry["patches"] = [{"name": p["name"], "state": _patch_state(p),
                             "functions": sum(len(o.get("functions", []))
                                              for o in (p.get("objects") or {}).values())}
                            for p in status.get("patches", [])]
        entry["stored"] = [{"name": p["name"], "persist": bool(p.get("persist"))}
                           for p in status.get("stored", [])]
        entry["taint"] = status.get("taint")
        entry["patch_state"] = ", ".join(
            f"{p['name']} {p['state']}" for p in entry["patches"]) or "none"
        entry["verified"] = True
        return entry
    if not kernel or verify.get("reachable") is False:
        reason = verify.get("reason") if kernel else (
            "did not answer when the fleet's kernels were read")
        entry.update(status="unreachable", gate=entry["gate"] or "reachable",
                     reason=entry["reason"] or reason or "host not reachable", verified=False)
    elif kernel.get("livepatch_supported") is False:
        entry.update(status="failed", gate="kernel",
                     reason=f"{kernel.get('release')} has no livepatch support")
    elif result.get("status") == "failed":
        entry["status"] = "failed"
    elif result.get("status") in ("skipped", "current"):
        entry["status"] = result["status"]
    elif not result:
        entry.update(status="not_attempted",
                     reason="the rollout stopped before this host's batch")
    elif verify and not verify.get("ok", False):
        entry.update(status="failed", gate="verify", reason=verify.get("reason"))
    return entry


def kernel_summaries(manifests: dict) -> dict:
    """Per kernel release: the patched functions and the hashes that identify the build."""
    return {release: {
        "functions": [f"{obj}:{fn['name']}" for obj, fns in (m.get("objects") or {}).items()
                      for fn in fns],
        "module_sha256": m.get("module_sha256"), "patch_sha256": m.get("patch_sha256"),
        "builder_version": m.get("builder_version"), "signed": bool(m.get("signed"))}
        for release, m in sorted(manifests.items())}


def _patch_state(patch: dict) -> str:
    """enabled | transition | unpatching | disabled, from /sys/kernel/livepatch/NAME."""
    if patch.get("transition"):
        return "transition" if patch.get("enabled") else "unpatching"
    return "enabled" if patch.get("enabled") else "disabled"


def build_report(entries: list[dict], name: str, state: str = "enabled",
                 build: dict | None = None, generated: str | None = None) -> dict:
    """The whole report as one document: what the JSON file holds."""
    summary = dict.fromkeys(STATUSES, 0)
    for entry in entries:
        summary[entry["status"]] += 1
    entries = sorted(entries, key=lambda e: (STATUSES.index(e["status"]), e["host"]))
    return {
        "patch": name,
        "state": state,
        "generated": generated or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "summary": {"hosts": len(entries), **summary},
        "success": summary["failed"] == 0 and summary["unreachable"] == 0,
        "build": build or {},
        "hosts": entries,
    }


def render_json(report: dict) -> str:
    return json.dumps(report, indent=2, sort_keys=False) + "\n"


def render_junit(report: dict) -> str:
    """JUnit XML for CI: one testcase per host; failure message is `gate: reason`."""
    summary = report["summary"]
    suite = ET.Element("testsuite", {
        "name": f"klp.livepatch {report['patch']} ({report['state']})",
        "tests": str(summary["hosts"]),
        "failures": str(summary["failed"]),
        "errors": str(summary["unreachable"]),
        "skipped": str(summary["skipped"] + summary["not_attempted"] + summary["current"]),
        "time": f"{sum(e['transition_seconds'] or 0 for e in report['hosts']):.3f}",
        "timestamp": report["generated"],
    })
    for entry in report["hosts"]:
        case = ET.SubElement(suite, "testcase", {
            # No dots: CI tools split a classname at dots into packages.
            "classname": junit_classname(report["patch"], entry["kernel_release"]),
            "name": entry["host"],
            "time": f"{entry['transition_seconds'] or 0:.3f}",
        })
        message = f"{entry['gate']}: {entry['reason']}"
        if entry["status"] == "failed":
            failure = ET.SubElement(case, "failure", {"message": message, "type": entry["gate"]})
            failure.text = json.dumps(entry, indent=2)
        elif entry["status"] == "unreachable":
            ET.SubElement(case, "error", {"message": message, "type": "unreachable"})
        elif entry["status"] in ("skipped", "not_attempted", "current"):
            ET.SubElement(case, "skipped", {"message": entry["reason"] or entry["status"]})
    root = ET.Element("testsuites", {"name": "klp.livepatch rollout"})
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def junit_classname(patch: str, release: str | None) -> str:
    """'klp_livepatch/PATCH/6_1_0-56-amd64': patch and kernel, without dots."""
    return "/".join(("klp_livepatch", patch, release or "unknown")).replace(".", "_")


CSS = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: .2em; }
.meta { color: #666; margin-bottom: 1em; }
.cards span { display: inline-block; padding: .4em .9em; margin: 0 .4em .8em 0;
  border-radius: 6px; background: #eee; font-weight: 600; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45em .7em; border-bottom: 1px solid #ddd;
  vertical-align: top; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.badge { padding: .15em .6em; border-radius: 1em; font-size: .85em; font-weight: 600; }
.ok { background: #d8f5d8; color: #135e13; }
.failed { background: #fbd5d5; color: #8a1414; }
.unreachable { background: #fde7c2; color: #7a4b00; }
.skipped, .not_attempted { background: #e4e4ee; color: #444; }
.current { background: #dcefe2; color: #234; }
h2 { font-size: 1.1em; margin-top: 1.5em; }
#filter { width: 28em; max-width: 100%; padding: .4em; margin: 0 .5em .8em 0; }
details summary { cursor: pointer; color: #555; }
pre { white-space: pre-wrap; margin: .2em 0; font-size: .85em; background: #f7f7f7; }
"""


def render_html(report: dict) -> str:
    """A self-contained page: summary cards, then hosts x kernel x state x time x failure."""
    esc = html.escape
    summary = report["summary"]
    cards = "".join(
        f'<span class="{s}">{esc(s.replace("_", " "))}: {summary[s]}</span>'
        for s in STATUSES if summary[s] or s in ("ok", "failed"))
    rows = []
    for e in report["hosts"]:
        seconds = "" if e["transition_seconds"] is None else f"{e['transition_seconds']:.2f}"
        problem = ""
        if e["status"] not in ("ok", "current"):
            problem = f"<b>{esc(str(e['gate'] or ''))}</b> {esc(str(e['reason'] or ''))}"
        elif e["reason"] and report.get("check_mode"):
            problem = esc(str(e["reason"]))  # what the dry run predicts
        if e.get("update"):
            problem = f"{_update_cell(e['update'])}<br>{problem}" if problem else \
                _update_cell(e["update"])
        if e["rolled_back"]:
            problem += " (rolled back)"
        if e.get("stored"):
            problem += "stored: " + esc(", ".join(
                p["name"] + (" (at boot)" if p["persist"] else "") for p in e["stored"]))
        problem += _evidence(e.get("evidence") or {})
        status = esc(e["status"])
        rows.append(
            f'<tr class="{status}-row">'
            f"<td>{esc(e['host'])}</td>"
            f"<td>{esc(e['kernel_release'] or '?')}"
            f"<br><small>{esc(e['package_version'] or '')}"
            f"{' · ' + esc(e['distribution']) if e.get('distribution') else ''}</small></td>"
            f'<td><span class="badge {status}">{status.replace("_", " ")}</span></td>'
            f"<td>{esc(str(e['patch_state'] or '-'))}</td>"
            f'<td class="num">{seconds}</td>'
            f"<td>{'yes' if e['changed'] else 'no'}</td>"
            f"<td>{problem}</td>"
            "</tr>")
    build = report.get("build") or {}
    built = ""
    if build:
        built = (f" &middot; built: {esc(', '.join(build.get('built', [])) or 'none')}"
                 f" &middot; reused: {esc(', '.join(build.get('skipped', [])) or 'none')}")
        if build.get("failed_kernels"):
            built += f" &middot; build failed: {esc(', '.join(build['failed_kernels']))}"
    kernels = _kernels_table(build.get("kernels") or {})
    verdict = "all hosts OK" if report["success"] else "attention needed"
    if report.get("check_mode"):
        verdict = f"dry run (check mode), {verdict}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>klp.livepatch {esc(report['patch'])}: {esc(verdict)}</title>
<style>{CSS}</style>
</head>
<body>
<h1>Livepatch <code>{esc(report['patch'])}</code> ({esc(report['state'])}): {esc(verdict)}</h1>
<div class="meta">Generated {esc(report['generated'])}
 &middot; {summary['hosts']} hosts{built}</div>
<div class="cards">{cards}</div>
<input id="filter" type="search" placeholder="Filter hosts: name, kernel, status, gate, text"
 aria-label="Filter hosts" oninput="filterRows(this.value)">
<span id="shown"></span>
<table id="hosts">
<thead><tr><th>Host</th><th>Kernel</th><th>Status</th><th>Patch state</th>
<th>Transition (s)</th><th>Changed</th><th>Failure</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody>
</table>
{kernels}
<script>{SCRIPT}</script>
</body>
</html>
"""


# Rows are in the report's order (worst status first); the box keeps those whose text
# contains every word typed, so 500 hosts stay searchable without a server.
SCRIPT = """
function filterRows(text) {
  const words = text.toLowerCase().split(/\\s+/).filter(Boolean);
  let shown = 0;
  for (const row of document.querySelectorAll('#hosts tbody tr')) {
    const hit = words.every(w => row.textContent.toLowerCase().includes(w));
    row.hidden = !hit;
    if (hit) shown++;
  }
  document.getElementById('shown').textContent = words.length ? shown + ' shown' : '';
}
// report.html#filter=failed opens the page filtered (a link to share, a test to run).
const wanted = new URLSearchParams(location.hash.slice(1)).get('filter');
if (wanted) {
  document.getElementById('filter').value = wanted;
  filterRows(wanted);
}
"""


def _evidence(evidence: dict) -> str:
    """What the gates saw on a host, folded: taint, probes, kernel log, stalled tasks."""
    if not evidence:
        return ""
    esc = html.escape
    parts = []
    if "taint_before" in evidence or "taint_after" in evidence:
        parts.append(f"taint {esc(str(evidence.get('taint_before') or '-'))} &rarr; "
                     f"{esc(str(evidence.get('taint_after') or '-'))}")
    for probe in evidence.get("probes", []):
        output = (probe.get("stderr") or probe.get("stdout") or "").strip()[-300:]
        shown = f" <pre>{esc(output)}</pre>" if output else ""
        parts.append(f"probe <code>{esc(probe.get('command', ''))}</code>: exit "
                     f"{esc(str(probe.get('rc')))}{shown}")
    if evidence.get("kernel_log"):
        lines = "\n".join(str(line) for line in evidence["kernel_log"][-20:])
        parts.append(f"kernel log during the change:<pre>{esc(lines)}</pre>")
    for task in evidence.get("stalled_tasks", []):
        stack = "\n".join(task.get("stack") or [])
        parts.append(f"stalled: {esc(str(task.get('comm')))} (pid {esc(str(task.get('pid')))})"
                     f"<pre>{esc(stack)}</pre>")
    items = "".join(f"<li>{part}</li>" for part in parts)
    return f"<details><summary>evidence</summary><ul>{items}</ul></details>"


def _kernels_table(kernels: dict) -> str:
    """Per kernel: the functions the module patches and the hashes of what was built."""
    if not kernels:
        return ""
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(release)}</td><td>{esc(', '.join(k['functions']) or '-')}</td>"
        f"<td><code>{esc(str(k['module_sha256'] or '')[:16])}</code></td>"
        f"<td><code>{esc(str(k['patch_sha256'] or '')[:16])}</code></td>"
        f"<td>{esc(str(k['builder_version'] or ''))}{' signed' if k['signed'] else ''}</td></tr>"
        for release, k in kernels.items())
    return ("<h2>Modules per kernel</h2><table><thead><tr><th>Kernel</th><th>Patched "
            "functions</th><th>Module sha256</th><th>Patch sha256</th><th>Builder</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def _update_cell(update: dict) -> str:
    """'6.1.192-1 → 6.1.192-3: 2 units live, 1 needs a reboot; CVEs live: …'."""
    esc = html.escape
    if update.get("state") == "current":
        return f"update: already runs {esc(str(update.get('to')))}"
    debt = update.get("needs_reboot", [])
    text = (f"update {esc(str(update.get('from')))} &rarr; {esc(str(update.get('to')))}: "
            f"{len(update.get('live_units', []))} unit(s) live, {len(debt)} need a reboot")
    if debt:
        text += f" ({esc(', '.join(debt))})"
    if update.get("cves_live"):
        text += f"; CVEs live: {esc(', '.join(update['cves_live']))}"
    return text


RENDERERS = {"json": render_json, "junit": render_junit, "html": render_html}


def run_query(report: dict, query: str):
    """Apply a JMESPath expression to the report, e.g. hosts[?status=='failed'].host."""
    if jmespath is None:
        raise AnsibleActionFail("query needs the Python library jmespath on the controller")
    try:
        return jmespath.search(query, report)
    except jmespath.exceptions.JMESPathError as exc:
        raise AnsibleActionFail(f"invalid report query {query!r}: {exc}") from exc


def write_atomic(path: str, text: str) -> None:
    """Replace PATH in one step, so a reader never sees half a report."""
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=".report-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def point_latest(root: str, run: str) -> None:
    """Make ROOT/latest a relative link to ROOT/RUN, replacing the old link in one step."""
    tmp = os.path.join(root, f".{LATEST}-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(run, tmp)
    os.replace(tmp, os.path.join(root, LATEST))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        records = args["records"]
        if records is None:
            hosts = args["hosts"] or task_vars.get("ansible_play_hosts_all", [])
            hostvars = task_vars.get("hostvars", {})
            records = {}
            for host in hosts:
                facts = hostvars[host] if host in hostvars else {}  # noqa: SIM401 - HostVars
                records[host] = {k: _plain(facts[k]) for k in HOST_FACTS if k in facts}
        entries = [host_entry(host, facts or {}) for host, facts in _plain(records).items()]
        build = {k: v for k, v in _plain(args["build"]).items()
                 if k in ("built", "skipped", "failed_kernels")}
        build["kernels"] = kernel_summaries(_plain(args["build"]).get("manifests") or {})
        report = build_report(entries, args["name"], args["state"], build)
        report["check_mode"] = bool(self._task.check_mode)
        root = self._loader.path_dwim(args["dest"])
        run = args["run"]
        if run and (os.sep in run or run in (".", "..", LATEST)):
            raise AnsibleActionFail(f"run {run!r} must be a plain directory name")
        dest = os.path.join(root, run) if run else root
        files = {}
        # A dry run's report is its prediction: written when it has a directory of its own,
        # where it overwrites nothing.
        if run or not self._task.check_mode:
            try:
                os.makedirs(dest, exist_ok=True)
                for fmt in args["formats"]:
                    files[fmt] = os.path.join(dest, FILES[fmt])
                    write_atomic(files[fmt], RENDERERS[fmt](report))
                if run:
                    point_latest(root, run)
            except OSError as exc:
                raise AnsibleActionFail(f"cannot write the report to {dest}: {exc}") from exc
        result.update(changed=False, report=report, files=files, success=report["success"])
        if args["query"]:
            result["query_result"] = run_query(report, args["query"])
        return result
