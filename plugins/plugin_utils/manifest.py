# Copyright: klp.livepatch developers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The builder manifest contract on the controller: NAME.json beside NAME.ko, validated
against builder/manifest.schema.json (the file the builder writes by).

The one way the action plugins and the rollout role (through the klp.livepatch.manifest
lookup) find and read a manifest.
"""

from __future__ import annotations

import json
import os
from functools import cache

from ansible_collections.klp.livepatch.plugins.module_utils.klp_errors import KlpError

try:
    import jsonschema
except ImportError:  # reported when a manifest is read
    jsonschema = None

# The collection root holds builder/ (the whole repository is the collection).
SCHEMA_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "builder", "manifest.schema.json")


class ManifestError(KlpError):
    """A manifest that cannot be read, is of a newer schema, or breaks the schema."""


def manifest_path(ko_path) -> str:
    """The builder manifest of a module file: NAME.json beside NAME.ko."""
    return os.path.splitext(str(ko_path))[0] + ".json"


@cache
def load_schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def schema_version() -> int:
    """The schema_version this collection reads (the one its schema file describes)."""
    return load_schema()["properties"]["schema_version"]["const"]


def read_manifest(ko_path) -> dict | None:
    """The validated manifest beside `ko_path` (which need not exist), or None if there
    is none; ManifestError names the file and what is wrong with it."""
    path = manifest_path(ko_path)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read the manifest {path}: {exc}") from exc
    return validate(manifest, path)


def validate(manifest, where: str = "manifest"):
    """`manifest` if it follows the schema; otherwise ManifestError naming `where` (the
    file) and each offending key."""
    if not isinstance(manifest, dict):
        raise ManifestError(f"manifest {where} is not a JSON object")
    known = schema_version()
    # Builds from before schema_version existed wrote version 1.
    version = manifest.get("schema_version", known)
    if isinstance(version, int) and not isinstance(version, bool) and version > known:
        raise ManifestError(
            f"manifest {where} has schema_version {version}, but this klp.livepatch "
            f"collection reads schema_version {known} at most: upgrade the collection "
            "(ansible-galaxy collection install --upgrade klp.livepatch) to use modules of "
            "a newer builder")
    if jsonschema is None:
        raise ManifestError(f"cannot check the manifest {where}: the controller's Python has "
                            "no jsonschema library; install it (pip install jsonschema, or "
                            "the collection's meta/ee-requirements.txt)")
    schema = load_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    problems = [f"key {_key(error)!r}: {error.message}"
                for error in sorted(validator.iter_errors(manifest), key=lambda e: e.path)]
    if problems:
        raise ManifestError(f"manifest {where} does not follow the manifest schema "
                            f"(schema_version {known}, builder/manifest.schema.json): "
                            + "; ".join(problems))
    return manifest


def _key(error) -> str:
    """objects.vmlinux[0].sympos; a missing key is named itself, not its parent."""
    parts = list(error.path)
    if error.validator == "required":
        parts.append(error.message.split("'")[1])
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"
