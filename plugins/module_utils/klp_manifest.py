# Copyright: klp.livepatch developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The one cross-check of a module file against its builder manifest, made on both
sides: by the patch action plugin on the controller and by the patch module on the
host. Reading and validating manifests is controller-only (plugin_utils/manifest.py)."""

from ansible_collections.klp.livepatch.plugins.module_utils.klp_errors import KlpError

# What the module file says, for the manifest's key: (key, info field, what it is).
FILE_CHECKS = (
    ("module_sha256", "sha256", "sha256"),
    ("module_name", "name", "kernel module name"),
    ("vermagic", "vermagic", "vermagic"),
)


def check_module_file(manifest, info):
    """Refuse a module file that is not the one its manifest describes.

    `info` is klp_modfile.inspect_module's view of the file. A key missing on either
    side is not checked (older manifests, modules without vermagic)."""
    for key, field, what in FILE_CHECKS:
        wanted = (manifest or {}).get(key)
        actual = info.get(field)
        if wanted and actual and str(wanted).strip() != str(actual).strip():
            raise KlpError(
                f"{info['path']} has {what} {actual!r} but its manifest says {key}={wanted!r}: "
                "the module was changed or corrupted after the build, or the manifest is "
                "another module's; rebuild or fix the artifact")
