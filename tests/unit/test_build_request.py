# SPDX-License-Identifier: GPL-3.0-or-later
"""The build request described once (builder/request.py): the command line, the rendered
arguments and the cache key all follow from the fields."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from dataclasses import MISSING
from pathlib import Path

import pytest

from builder import __version__, code_digest
from builder.__main__ import parser
from builder.request import BuildRequest, command_line, described_fields

FIELDS = described_fields()
NAMES = [name for name, _described, _default in FIELDS]


def other(name: str, described, current, tmp_path: Path):
    """A value of the field other than `current`."""
    form = described.form
    if form in ("switch", "negated"):
        return not current
    if form == "count":
        return current + 1
    if form == "paths":
        other_patch = tmp_path / "other.patch"
        other_patch.write_text("--- a/g.c\n+++ b/g.c\n")
        return [other_patch]
    if form == "path":
        if current is not None and described.required:
            return Path(str(current) + "-other")
        if current is not None and name == "sign_key":
            return None  # unsigned
        other_file = tmp_path / f"{name}-other"
        other_file.write_text(f"another {name}")
        return other_file
    if described.choices:
        return next(choice for choice in described.choices if choice != current)
    return f"{current}-other" if current else f"other-{name}"


@pytest.fixture
def request_(tmp_path) -> BuildRequest:
    """A signed request; every other field at its default."""
    patch, key, cert = tmp_path / "fix.patch", tmp_path / "k.pem", tmp_path / "c.x509"
    patch.write_text("--- a/f.c\n+++ b/f.c\n")
    key.write_text("key")
    cert.write_text("cert")
    return BuildRequest(kernel="6.1.0-56-amd64", package_version="6.1.192-1", patches=[patch],
                        name="fix", output=tmp_path / "out", sign_key=key, sign_cert=cert)


def every_field_set(tmp_path) -> BuildRequest:
    """A request with no field at its default."""
    values = {}
    for name, described, default in FIELDS:
        values[name] = other(name, described, None if default is MISSING else default,
                             tmp_path)
    values["sign_key"] = tmp_path / "k.pem"  # the certificate goes only with a key
    return BuildRequest(**values)


def test_builder_build_takes_exactly_the_fields():
    parsed = parser().parse_args(["build", "--kernel", "r", "--patch", "p", "--name", "n",
                                  "--output", "o"])
    assert sorted(vars(parsed)) == sorted(["command", *NAMES])
    for name, _described, default in FIELDS:
        if default is not MISSING:
            assert getattr(parsed, name) == default, name


def test_the_command_line_parses_back_into_the_request(tmp_path):
    request = every_field_set(tmp_path)
    argv = command_line(dataclasses.asdict(request))
    assert argv[0] == "build"
    assert BuildRequest.from_args(parser().parse_args(argv)) == request


def test_a_request_at_its_defaults_needs_only_the_required_options(tmp_path):
    request = BuildRequest(kernel="r", patches=[tmp_path / "a", tmp_path / "b"], name="n",
                           output=tmp_path)
    argv = command_line(dataclasses.asdict(request))
    assert argv == ["build", "--kernel", "r", "--patch", str(tmp_path / "a"),
                    "--patch", str(tmp_path / "b"), "--name", "n", "--output", str(tmp_path)]
    assert BuildRequest.from_args(parser().parse_args(argv)) == request


def test_update_gets_the_options_marked_for_it_and_parses_them_back(tmp_path):
    request = every_field_set(tmp_path)
    argv = [*command_line(dataclasses.asdict(request), "update"), "--to", "latest"]
    parsed = vars(parser().parse_args(argv))
    marked = [name for name, described, _default in FIELDS if described.update]
    assert {"kernel", "name", "output", "consistency", "sign_key", "sign_cert"} <= set(marked)
    for name in marked:
        assert parsed[name] == getattr(request, name), name
    assert "--patch" not in argv and "--if-changed" not in argv


def test_the_certificate_goes_with_the_key_only():
    assert "--sign-cert" not in command_line({"sign_cert": "/c"})
    assert command_line({"sign_key": "/k"})[-4:] == ["--sign-key", "/k", "--sign-cert", ""]


@pytest.mark.parametrize("name", NAMES)
def test_a_field_changes_the_key_exactly_when_it_is_part_of_it(request_, tmp_path, name):
    described = {n: d for n, d, _form in FIELDS}[name]
    changed = dataclasses.replace(
        request_, **{name: other(name, described, getattr(request_, name), tmp_path)})
    assert (changed.key() != request_.key()) == (described.key is not None)


def test_the_key_keeps_the_shape_existing_manifests_carry(request_):
    """--if-changed compares it with the key of manifests written by earlier builds."""
    patch_sha256 = hashlib.sha256(hashlib.sha256(request_.patches[0].read_bytes()).digest())
    assert request_.key() == {
        "kernel": "6.1.0-56-amd64", "package_version": "6.1.192-1",
        "patch_sha256": patch_sha256.hexdigest(), "builder_version": __version__,
        "builder_code": code_digest(), "replace": True, "signed": True,
        "consistency": "default", "name": "fix",
        "sign_cert_sha256": hashlib.sha256(b"cert").hexdigest()}
    unsigned = dataclasses.replace(request_, sign_key=None, skip_init_changes=True)
    assert unsigned.key()["signed"] is False and "sign_cert_sha256" not in unsigned.key()
    assert unsigned.key()["skip_init_changes"] is True


def test_the_code_digest_changes_with_the_builders_code(tmp_path, monkeypatch):
    import builder

    tree = tmp_path / "copy"
    shutil.copytree(Path(builder.__file__).parent, tree / "builder",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(Path(builder.__file__).parents[1] / "kmod", tree / "kmod")

    def digest_of(root: Path) -> str:
        monkeypatch.setattr(builder, "__file__", str(root / "builder" / "__init__.py"))
        builder.code_digest.cache_clear()
        try:
            return builder.code_digest()
        finally:
            builder.code_digest.cache_clear()

    same = digest_of(tree)
    assert same == code_digest()  # a copy of the same code (an installed collection)
    (tree / "kmod" / "klp_hook.c").write_text((tree / "kmod" / "klp_hook.c").read_text() + "\n")
    assert digest_of(tree) != same
