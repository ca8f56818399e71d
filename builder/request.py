# SPDX-License-Identifier: GPL-3.0-or-later
"""The build request: what `python3 -m builder build` is asked, each option described once.

Every field of `BuildRequest` carries an `Option` (in the field's metadata) saying how
the field is spelled wherever a build is asked for, and each of these is derived from
the fields, in their order:

- the builder's command line: `add_arguments` gives the `build` command its options,
  `BuildRequest.from_args` makes the request from what was parsed;
- klp.livepatch.build (plugins/action/build.py): `action_spec` is the part of its
  argument spec that asks for request options, and `command_line` renders a request's
  values as the builder's arguments (for `builder update` too: the options marked
  `update`);
- the cache key: `BuildRequest.key()`, what makes two builds the same (`--if-changed`
  builds nothing when the output directory holds a module of this key).

So a new option is a new field here. The roles' argument specs and the module
documentation are written by hand; unit tests hold them to this description.

The action plugin imports this module on the controller as
`ansible_collections.klp.livepatch.builder.request`, where the rest of the builder is
not importable: at module level it imports the standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

# The forms of an option: how argparse reads it, and its type in klp.livepatch.build.
ARGPARSE = {
    "value": {},  # --flag VALUE
    "path": {"type": Path},  # --flag PATH
    "paths": {"action": "append", "type": Path},  # --flag PATH, repeated, in order
    "switch": {"action": "store_true"},  # --flag sets True
    "negated": {"action": "store_false"},  # --flag sets False (--no-replace)
    "count": {"type": int},  # --flag N
}
ANSIBLE_TYPE = {"value": "str", "path": "path", "paths": "path", "switch": "bool",
                "negated": "bool", "count": "int"}


@dataclass(frozen=True)
class Option:
    """How one field of the request is spelled, and whether it makes another build."""

    flag: str
    form: str = "value"  # a key of ARGPARSE
    help: str | None = None
    metavar: str | None = None
    choices: tuple[str, ...] | None = None
    required: bool = False  # on the builder's command line
    action: bool = False  # klp.livepatch.build asks for it, under the field's name
    update: bool = False  # `builder update` takes it too
    follows: str | None = None  # written only with that option, and then always
    # Its part of the cache key, key(field name, request) -> dict; None: not in the key.
    key: Callable[[str, BuildRequest], dict] | None = None


def option(flag: str, *, default: Any = MISSING, **spec) -> Any:
    """A request field described by Option(flag, **spec).

    Without a default it is None, a switch False and a negated flag True; a required
    option has none.
    """
    described = Option(flag, **spec)
    if default is MISSING and not described.required:
        default = {"switch": False, "negated": True}.get(described.form)
    # Called only in BuildRequest's body below, so the field is a dataclass's after all.
    return field(default=default, metadata={"option": described})  # pylint: disable=invalid-field-call


# A header change recompiles every built file that includes it, twice; past this, refuse.
MAX_FILES = int(os.environ.get("KLP_MAX_UNITS", "1500"))


# ---------------------------------------------------------------- parts of the key
def _as_is(name: str, request: BuildRequest) -> dict:
    return {name: getattr(request, name)}


def _when_set(name: str, request: BuildRequest) -> dict:
    """In the key only when set, so that the keys of builds without it stay as they were."""
    return {name: True} if getattr(request, name) else {}


def _patch_digest(_name: str, request: BuildRequest) -> dict:
    return {"patch_sha256": request.patch_sha256()}


def _signed(_name: str, request: BuildRequest) -> dict:
    return {"signed": bool(request.sign_key)}


def _cert_digest(_name: str, request: BuildRequest) -> dict:
    """Another signing certificate is another module."""
    from builder.cache import sha256_file  # keys are made by the builder only

    if request.sign_key and request.sign_cert:
        return {"sign_cert_sha256": sha256_file(Path(request.sign_cert))}
    return {}


# ---------------------------------------------------------------- the request
@dataclass(kw_only=True)
class BuildRequest:
    """One build: the fields in the order of `python3 -m builder build --help`."""

    kernel: str = option(
        "--kernel", required=True, metavar="RELEASE", update=True, key=_as_is,
        help="kernel release as `uname -r` prints it, e.g. 6.1.0-56-amd64")
    package_version: str | None = option(
        "--package-version", metavar="VERSION", update=True, key=_as_is,
        help="Debian package version (default: resolved from the archive)")
    patches: list[Path] = option(
        "--patch", form="paths", required=True, metavar="FILE", action=True,
        key=_patch_digest, help="unified diff against the kernel source (-p1); repeatable")
    name: str = option(
        "--name", required=True, action=True, update=True, key=_as_is,
        help="patch module name (NAME.ko, NAME.json)")
    output: Path = option("--output", form="path", required=True, metavar="DIR", update=True)
    replace: bool = option(
        "--no-replace", form="negated", action=True, key=_as_is,
        help="do not replace earlier patches (default: atomic replace)")
    sign_key: Path | None = option(
        "--sign-key", form="path", metavar="KEY", action=True, update=True, key=_signed)
    sign_cert: Path | None = option(
        "--sign-cert", form="path", metavar="CERT", action=True, update=True,
        follows="sign_key", key=_cert_digest)
    consistency: str = option(
        "--consistency", default="default", choices=("default", "freeze"), action=True,
        update=True, key=_as_is,
        help="freeze: the module freezes user space around the transition")
    skip_init_changes: bool = option(
        "--skip-init-changes", form="switch", key=_when_set,
        help="leave changed __init code out (it already ran) instead of refusing; "
             "recorded in the manifest")
    # How to run the build rather than what to build: none of these is in the key.
    max_files: int = option(
        "--max-files", form="count", default=MAX_FILES, metavar="N",
        help="refuse a header change that needs more than N built files compiled (each "
             "twice; includers whose preprocessed text shows no code change are not, and "
             f"up to 4N are preprocessed; default {MAX_FILES}, or KLP_MAX_UNITS)")
    if_changed: bool = option(
        "--if-changed", form="switch",
        help="do nothing when DIR already holds this exact build (same key)")
    check: bool = option(
        "--check", form="switch", update=True,
        help="only report whether a build is needed (with --if-changed)")
    work: Path | None = option(
        "--work", form="path", metavar="DIR", update=True,
        help="work directory (default: cache)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BuildRequest:
        """The request `build`'s parsed command line asks for (see add_arguments)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})

    @property
    def distribution(self) -> str:
        """debian-12 or debian-13, from the kernel release."""
        from builder.providers import distribution_of

        return distribution_of(self.kernel)

    def patch_sha256(self) -> str:
        digest = hashlib.sha256()
        for patch in self.patches:
            digest.update(hashlib.sha256(patch.read_bytes()).digest())
        return digest.hexdigest()

    def key(self) -> dict:
        """What makes two builds the same: the builder's version and code, and each
        option's part."""
        from builder import __version__, code_digest

        key = {"builder_version": __version__, "builder_code": code_digest()}
        for name, described, _default in described_fields():
            if described.key:
                key.update(described.key(name, self))
        return key


def described_fields() -> list[tuple[str, Option, Any]]:
    """(field name, Option, default or MISSING) of every request field, in order."""
    return [(f.name, f.metadata["option"], f.default) for f in fields(BuildRequest)]


# ---------------------------------------------------------------- derived spellings
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every request option, as `python3 -m builder build` takes it (dest: the field)."""
    for name, described, default in described_fields():
        kwargs: dict[str, Any] = {"dest": name, **ARGPARSE[described.form]}
        for attr in ("required", "metavar", "choices", "help"):
            if getattr(described, attr):
                kwargs[attr] = getattr(described, attr)
        if described.form in ("value", "path", "count") and default not in (MISSING, None):
            kwargs["default"] = default
        parser.add_argument(described.flag, **kwargs)


def action_spec() -> dict[str, dict]:
    """The argument spec of the request options klp.livepatch.build asks for.

    A repeatable option is a list there, empty when not given (the action may take
    something else instead: patches or update_to).
    """
    spec = {}
    for name, described, default in described_fields():
        if not described.action:
            continue
        kind = ANSIBLE_TYPE[described.form]
        if described.form == "paths":
            spec[name] = {"type": "list", "elements": kind, "default": []}
            continue
        entry: dict[str, Any] = {"type": kind}
        if described.choices:
            entry["choices"] = list(described.choices)
        if described.required:
            entry["required"] = True
        elif default is not None:
            entry["default"] = default
        spec[name] = entry
    return spec


def command_line(values: Mapping[str, Any], command: str = "build") -> list[str]:
    """The builder's arguments that ask `command` for `values` (field name -> value).

    Options come in field order; one absent, empty or at its default is left out, and
    `update` gets only those marked for it.
    """
    argv = [command]
    for name, described, default in described_fields():
        if command != "build" and not described.update:
            continue
        flag = described.flag
        value = values.get(name, None if default is MISSING else default)
        if described.follows:
            if values.get(described.follows):
                argv += [flag, str(value or "")]
        elif described.form == "paths":
            for item in value or ():
                argv += [flag, str(item)]
        elif described.form == "switch":
            argv += [flag] if value else []
        elif described.form == "negated":
            argv += [] if value else [flag]
        elif value not in (None, "") and value != default:
            argv += [flag, str(value)]
    return argv


__all__ = ["BuildRequest", "Option", "action_spec", "add_arguments", "command_line",
           "described_fields"]
