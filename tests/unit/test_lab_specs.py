# SPDX-License-Identifier: GPL-3.0-or-later
"""Lab spec parsing and default VM names (pure logic, no VM)."""

from __future__ import annotations

import pytest

from lab.errors import LabError
from lab.specs import Spec, default_name, parse_spec


@pytest.mark.parametrize(("text", "expected"), [
    ("6.1.0-56-amd64", Spec(("6.1.0-56-amd64",))),
    ("newest-6.1-cloud-amd64", Spec(("newest-6.1-cloud-amd64",))),
    ("sig=6.1.0-56-amd64+module.sig_enforce=1",
     Spec(("6.1.0-56-amd64",), "sig", "module.sig_enforce=1")),
    ("6.12.57+deb12-amd64", Spec(("6.12.57+deb12-amd64",))),
    ("x=6.12.57+deb12-amd64+quiet loglevel=3",
     Spec(("6.12.57+deb12-amd64",), "x", "quiet loglevel=3")),
    ("multi=6.1.0-56-amd64,6.1.0-55-amd64", Spec(("6.1.0-56-amd64", "6.1.0-55-amd64"), "multi")),
    ("m=6.1.0-56-amd64,6.12.57+deb12-amd64+a=1 b",
     Spec(("6.1.0-56-amd64", "6.12.57+deb12-amd64"), "m", "a=1 b")),
    ("6.1.0-56-amd64+debug", Spec(("6.1.0-56-amd64",), None, "debug")),
])
def test_parse_spec(text, expected):
    assert parse_spec(text) == expected
    assert parse_spec(text).boot == expected.kernels[0]


@pytest.mark.parametrize("text", ["", "name=", "bad_name=6.1.0-56-amd64", "+quiet",
                                  "x=6.1.0;rm -rf /"])
def test_parse_spec_rejects(text):
    with pytest.raises(LabError):
        parse_spec(text)


@pytest.mark.parametrize(("release", "name"), [
    ("6.1.0-56-amd64", "vm-6-1-0-56-amd64"),
    ("6.1.0-56-cloud-amd64", "vm-6-1-0-56-cloud-amd64"),
    ("6.12.57+deb12-amd64", "vm-6-12-57-deb12-amd64"),
])
def test_default_name(release, name):
    assert default_name(release) == name
