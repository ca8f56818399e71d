# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for klp.livepatch.build: runs the builder on the controller, per kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

from ansible_collections.klp.livepatch.builder.request import action_spec, command_line
from ansible_collections.klp.livepatch.plugins.plugin_utils.manifest import (
    ManifestError,
    read_manifest,
)

# The collection root: the builder package lives there (python3 -m builder).
COLLECTION_ROOT = Path(__file__).resolve().parents[2]
# Builds of distinct kernels run side by side, at most this many at once: each builder
# compiles with make -j on its own, so two keep a small controller busy without thrashing.
PARALLEL_BUILDS = 2

# The build request's options (patches, name, replace, consistency, signing) come from
# their one description, builder/request.py; these are the action's own: one build per
# kernel into OUTPUT_DIR/RELEASE, or an update instead of patches.
ARGUMENT_SPEC = {
    **action_spec(),
    "update_to": {"type": "str"},
    "kernels": {"type": "list", "elements": "raw", "required": True},
    "output_dir": {"type": "path", "required": True},
    "fail_on_build_error": {"type": "bool", "default": True},
}


def kernel_items(kernels: list) -> list[tuple[str, str | None]]:
    """Normalise `kernels` to (release, package_version or None), without duplicates."""
    seen: list[tuple[str, str | None]] = []
    for item in kernels:
        if isinstance(item, str):
            pair = (item, None)
        elif isinstance(item, dict) and item.get("release"):
            pair = (str(item["release"]), item.get("package_version"))
        else:
            raise AnsibleActionFail(f"kernels: {item!r} is neither a release string nor a "
                                    "dictionary with 'release'")
        if pair not in seen:
            seen.append(pair)
    return seen


def _failure(name: str, release: str, proc: subprocess.CompletedProcess) -> str:
    """The builder's error message for a kernel (from its 'error:' line on, without the
    progress lines before it), prefixed with what failed."""
    lines = proc.stderr.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error")), 0)
    detail = "\n".join(lines[start:]) or f"exit status {proc.returncode}"
    return f"building {name} for {release} failed: {detail}"


def builder_outcome(name: str, release: str, proc: subprocess.CompletedProcess
                    ) -> tuple[dict, str | None]:
    """The builder's result (its last stdout line, JSON) for a kernel, or why there is none."""
    if proc.returncode != 0:
        return {}, _failure(name, release, proc)
    lines = proc.stdout.strip().splitlines()
    if not lines:
        return {}, (f"building {name} for {release}: the builder exited 0 without printing "
                    "its result; its last log lines: "
                    + " | ".join(proc.stderr.splitlines()[-5:]))
    return json.loads(lines[-1]), None


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(
            argument_spec=ARGUMENT_SPEC, mutually_exclusive=[["patches", "update_to"]],
            required_one_of=[["patches", "update_to"]])
        patches = [Path(self._loader.path_dwim(p)) for p in args["patches"]]
        for patch in patches:
            if not patch.is_file():
                raise AnsibleActionFail(f"patch file not found: {patch}")
        output = Path(self._loader.path_dwim(args["output_dir"]))
        result.update(modules={}, manifests={}, names={}, updates={}, built=[], skipped=[],
                      failed_kernels={}, log={}, changed=False)
        kernels = kernel_items(args["kernels"])
        # One kernel's failure is that kernel's hosts' problem: the others still build.
        with ThreadPoolExecutor(max_workers=PARALLEL_BUILDS) as pool:
            runs = list(pool.map(lambda k: self._build_one(args, patches, output, *k), kernels))
        for (release, _version), (proc, out) in zip(kernels, runs, strict=True):
            result["log"][release] = proc.stderr.splitlines()
            outcome, failure = builder_outcome(args["name"], release, proc)
            if failure:
                result["failed_kernels"][release] = failure
                continue
            name = outcome.get("name", args["name"])
            try:
                # NAME.json beside NAME.ko, also when an update made no module
                manifest = read_manifest(out / f"{name}.ko")
            except ManifestError as exc:
                result["failed_kernels"][release] = f"building {name} for {release}: {exc}"
                continue
            result["modules"][release] = outcome["module"] or ""
            result["names"][release] = name
            (result["built"] if outcome["changed"] else result["skipped"]).append(release)
            if manifest is not None:
                result["manifests"][release] = manifest
            if args["update_to"]:
                result["updates"][release] = self._update_summary(
                    outcome, result["manifests"].get(release, {}))
        result["changed"] = bool(result["built"])
        if result["failed_kernels"] and args["fail_on_build_error"]:
            result["failed"] = True
            result["msg"] = "\n".join(result["failed_kernels"].values())
        return result

    def _build_one(self, args: dict, patches: list[Path], output: Path, release: str,
                   version: str | None) -> tuple[subprocess.CompletedProcess, Path]:
        """Run the builder for one kernel; returns the finished process and its output dir."""
        out = output / release
        argv = self._argv(args, patches, release, out, version, self._task.check_mode)
        proc = subprocess.run(argv, cwd=COLLECTION_ROOT, capture_output=True, text=True,
                              check=False, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        return proc, out

    @staticmethod
    def _argv(args: dict, patches: list[Path], release: str, out: Path,
              version: str | None = None, check: bool = False) -> list[str]:
        """`python3 -m builder build` (or `update`) for one kernel, from the task's arguments."""
        values = {**args, "kernel": release, "package_version": version, "patches": patches,
                  "output": out, "check": check}
        base = [sys.executable, "-m", "builder"]
        if args["update_to"]:
            return [*base, *command_line(values, "update"), "--to", args["update_to"]]
        return [*base, *command_line({**values, "if_changed": True})]

    @staticmethod
    def _update_summary(outcome: dict, manifest: dict) -> dict:
        """Per kernel: versions, state, units by status, CVEs (for the report)."""
        info = manifest.get("update", {})
        units = info.get("units", [])
        return {"from": outcome.get("from"), "to": outcome.get("to"),
                "state": outcome.get("state"),
                "live": [u["name"] for u in units if u["status"] == "live"],
                "needs_reboot": [{"name": u["name"], "reason": u.get("reason", "")}
                                 for u in units if u["status"] == "needs-reboot"],
                "no_change": [u["name"] for u in units if u["status"] == "no-change"],
                "not_in_config": len([u for u in units if u["status"] == "not-in-config"]),
                "cves_live": info.get("cves_live", []),
                "cves_not_live": info.get("cves_not_live", [])}
