# SPDX-License-Identifier: GPL-3.0-or-later
"""Every module's DOCUMENTATION, EXAMPLES and RETURN are YAML (a stray ': ' in a plain
scalar breaks ansible-doc; ansible-test sanity finds it too, but minutes later)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

MODULES = sorted((Path(__file__).resolve().parents[2] / "plugins" / "modules").glob("*.py"))


def doc_blocks(path: Path) -> dict[str, str]:
    blocks = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in (
                        "DOCUMENTATION", "EXAMPLES", "RETURN"):
                    blocks[target.id] = node.value.value
    return blocks


@pytest.mark.parametrize("path", MODULES, ids=[p.stem for p in MODULES])
def test_the_documentation_blocks_are_yaml(path):
    blocks = doc_blocks(path)
    assert sorted(blocks) == ["DOCUMENTATION", "EXAMPLES", "RETURN"], path.name
    for name, text in blocks.items():
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as exc:
            pytest.fail(f"{path.name}: {name} is not YAML: {exc}")
