# SPDX-License-Identifier: GPL-3.0-or-later
"""The manifest contract: NAME.json beside NAME.ko, described by manifest.schema.json.

The schema file is the one description of the keys. The builder writes its
schema_version into every manifest; the collection reads manifests with
plugins/plugin_utils/manifest.py, which validates them against the same file.
"""

from __future__ import annotations

import json
from pathlib import Path

SCHEMA_PATH = Path(__file__).with_name("manifest.schema.json")
# The version this builder writes is the one its schema file describes.
SCHEMA_VERSION: int = json.loads(SCHEMA_PATH.read_text())["properties"]["schema_version"]["const"]

__all__ = ["SCHEMA_PATH", "SCHEMA_VERSION"]
