# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for klp.livepatch.build: runs the builder on the controller, per kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# The collection root: the builder package lives there (python3 -m builder).
COLLECTION_ROOT = Path(__file__).resolve().parents[2]

ARGUMENT_SPEC = {
    "patches": {"type": "list", "elements": "path", "required": True},
    "name": {"type": "str", "required": True},
    "kernels": {"type": "list", "elements": "raw", "required": True},
    "output_dir": {"type": "path", "required": True},
    "replace": {"type": "bool", "default": True},
    "consistency": {"type": "str", "choices": ["default", "freeze"], "default": "default"},
    "sign_key": {"type": "path"},
    "sign_cert": {"type": "path"},
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


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        patches = [Path(self._loader.path_dwim(p)) for p in args["patches"]]
        for patch in patches:
            if not patch.is_file():
                raise AnsibleActionFail(f"patch file not found: {patch}")
        output = Path(self._loader.path_dwim(args["output_dir"]))
        result.update(modules={}, manifests={}, built=[], skipped=[], log={}, changed=False)
        for release, version in kernel_items(args["kernels"]):
            out = output / release
            argv = [sys.executable, "-m", "builder", "build", "--kernel", release,
                    "--name", args["name"], "--output", str(out), "--if-changed"]
            for patch in patches:
                argv += ["--patch", str(patch)]
            if version:
                argv += ["--package-version", str(version)]
            if not args["replace"]:
                argv.append("--no-replace")
            if args["consistency"] != "default":
                argv += ["--consistency", args["consistency"]]
            if args["sign_key"]:
                argv += ["--sign-key", args["sign_key"], "--sign-cert", args["sign_cert"] or ""]
            if self._task.check_mode:
                argv.append("--check")
            proc = subprocess.run(argv, cwd=COLLECTION_ROOT, capture_output=True, text=True,
                                  check=False,
                                  env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
            result["log"][release] = proc.stderr.splitlines()
            if proc.returncode != 0:
                raise AnsibleActionFail(f"building {args['name']} for {release} failed:\n"
                                        + proc.stderr.strip(), result=result)
            outcome = json.loads(proc.stdout.strip().splitlines()[-1])
            result["modules"][release] = outcome["module"]
            (result["built"] if outcome["changed"] else result["skipped"]).append(release)
            manifest = out / f"{args['name']}.json"
            if manifest.is_file():
                result["manifests"][release] = json.loads(manifest.read_text())
        result["changed"] = bool(result["built"])
        return result
