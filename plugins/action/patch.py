# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright: klp.livepatch contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin for klp.livepatch.patch: check the module on the controller, then run.

1. On the controller: find O(src), read its ELF .modinfo (name, vermagic, livepatch
   flag) and sha256, and the manifest NAME.json beside it if there is one (validated by
   plugin_utils/manifest.py, cross-checked with the file by module_utils/klp_manifest.py).
2. Copy the .ko into the remote temporary directory and run the module once with src
   pointing at it. The module stores it under /var/lib/klp-livepatch/modules/RELEASE/
   only when the stored copy differs, so a rerun changes nothing. Copying a module of a
   few hundred KiB costs less than a second module run to ask whether it is needed.
The remote temporary directory is always removed.
"""

from __future__ import annotations

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

from ansible_collections.klp.livepatch.plugins.module_utils.klp_errors import KlpError
from ansible_collections.klp.livepatch.plugins.module_utils.klp_manifest import check_module_file
from ansible_collections.klp.livepatch.plugins.module_utils.klp_modfile import (
    inspect_module,
    module_name,
)
from ansible_collections.klp.livepatch.plugins.plugin_utils.manifest import read_manifest

MODULE = "klp.livepatch.patch"


class ActionModule(ActionBase):
    TRANSFERS_FILES = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars or {})
        del tmp  # unused; the connection's tmpdir is used
        args = dict(self._task.args)
        src = args.pop("src", None)
        state = args.get("state", "enabled")
        try:
            if src:
                args.update(self._controller_checks(src, args))
            if src and state in ("enabled", "present"):
                args["src"] = self._transfer(args["name"])
            result.update(self._run_module(args, task_vars))
            return result
        except AnsibleError:
            raise
        except KlpError as exc:
            raise AnsibleActionFail(str(exc)) from exc
        finally:
            self._remove_tmp_path(self._connection._shell.tmpdir)

    def _controller_checks(self, src: str, args: dict) -> dict:
        try:
            path = self._find_needle("files", src)
        except AnsibleError as exc:
            raise AnsibleActionFail(f"livepatch module {src} not found on the controller: "
                                    f"{to_text(exc)}") from exc
        try:
            info = inspect_module(path)
        except KlpError as exc:
            raise AnsibleActionFail(f"refusing {path}: {exc}") from exc
        if not info["livepatch"]:
            raise AnsibleActionFail(f"{path} is not a livepatch module (no livepatch=Y in "
                                    ".modinfo); refusing to send it to any host")
        name = args.get("name")
        if name and module_name(name) != info["name"]:
            raise AnsibleActionFail(f"{path} is kernel module {info['name']!r} but name is "
                                    f"{name!r}")
        wanted = args.get("sha256")
        if wanted and wanted.lower() != info["sha256"]:
            raise AnsibleActionFail(f"{path} has sha256 {info['sha256']}, not {wanted}")
        extra = {"name": info["name"], "sha256": info["sha256"]}
        manifest = read_manifest(path)  # validated against the schema, or None
        if manifest is not None:
            check_module_file(manifest, info)
            extra["manifest"] = manifest
        self._klp_src = path
        return extra

    def _transfer(self, name: str) -> str:
        if not self._connection._shell.tmpdir:
            self._make_tmp_path()
        remote = self._connection._shell.join_path(self._connection._shell.tmpdir,
                                                   f"{name}.ko")
        self._transfer_file(self._klp_src, remote)
        self._fixup_perms2((self._connection._shell.tmpdir, remote))
        return remote

    def _run_module(self, args: dict, task_vars) -> dict:
        return self._execute_module(module_name=MODULE, module_args=args,
                                    task_vars=task_vars)
