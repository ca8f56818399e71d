# SPDX-License-Identifier: GPL-3.0-or-later
"""The manifest contract: builder/manifest.schema.json, what the builder writes, and the
collection's one reader (plugins/module_utils/klp_manifest.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import jsonschema
import pytest
from ansible.errors import AnsibleLookupError
from ansible.parsing.dataloader import DataLoader

from ansible_collections.klp.livepatch.plugins.lookup.manifest import LookupModule
from ansible_collections.klp.livepatch.plugins.module_utils import klp_errors, klp_manifest
from ansible_collections.klp.livepatch.plugins.plugin_utils import manifest as reader
from builder import pipeline
from builder import update as update_mod
from builder.artifacts import KernelId
from builder.manifest import SCHEMA_PATH, SCHEMA_VERSION
from builder.patchset import PatchSet
from builder.pipeline import BuildRequest
from builder.stages.diff import UnitDiff
from builder.stages.generate import FunctionEntry, GeneratedUnit
from builder.stages.link import LinkedModule

SCHEMA = json.loads(SCHEMA_PATH.read_text())
KERNEL = KernelId(release="6.1.0-57-amd64", package_version="6.1.192-3")
SHA = "a7cdedcb46ddf13e627484e387b356fcf5254f548eea7e7c6c233e743075ffda"
PATCH = """\
--- a/fs/proc/meminfo.c
+++ b/fs/proc/meminfo.c
@@ -1,3 +1,3 @@
 int a;
-int b;
+int c;
 int d;
"""


def good() -> dict:
    """A manifest as a build writes it (the keys of a real one, trimmed)."""
    return {
        "schema_version": 1, "name": "klp_fix", "module_name": "klp_fix",
        "kernel_release": KERNEL.release, "package_version": KERNEL.package_version,
        "distribution": "debian-12", "vermagic": f"{KERNEL.release} SMP preempt mod_unload ",
        "kernel_build_id": "01d2640d3a13145ee314eb05b155f141b7b7058b",
        "patches": [{"file": "fix.patch", "sha256": SHA}], "patch_sha256": SHA,
        "builder_version": "0.1.0", "key": {"kernel": KERNEL.release, "name": "klp_fix"},
        "objects": {"vmlinux": [{"name": "meminfo_proc_show", "sympos": 0,
                                 "source": "fs/proc/meminfo.c", "reason": "size"}]},
        "replace": True, "signed": False, "module_sha256": SHA, "consistency": "default",
    }


def write(tmp_path: Path, manifest) -> Path:
    """NAME.json with `manifest`; returns the NAME.ko path beside it (not created)."""
    (tmp_path / "klp_fix.json").write_text(json.dumps(manifest))
    return tmp_path / "klp_fix.ko"


# --------------------------------------------------------------------------- reader

def test_manifest_is_the_json_beside_the_module():
    assert reader.manifest_path("/out/6.1.0-57-amd64/klp_fix.ko") == \
        "/out/6.1.0-57-amd64/klp_fix.json"
    assert reader.manifest_path(Path("klp_fix.ko")) == "klp_fix.json"


def test_good_manifest_is_read(tmp_path):
    assert reader.read_manifest(write(tmp_path, good())) == good()


def test_no_manifest_is_none(tmp_path):
    assert reader.read_manifest(tmp_path / "klp_fix.ko") is None


def test_manifest_of_an_older_build_without_schema_version_is_read(tmp_path):
    old = good()
    del old["schema_version"]
    assert reader.read_manifest(write(tmp_path, old)) == old


def test_newer_schema_version_is_refused_with_upgrade_advice(tmp_path):
    ko = write(tmp_path, {**good(), "schema_version": 2, "name": 7})
    with pytest.raises(reader.ManifestError, match="upgrade the collection") as err:
        reader.read_manifest(ko)
    assert str(tmp_path / "klp_fix.json") in str(err.value)
    assert "schema_version 2" in str(err.value)


@pytest.mark.parametrize(("change", "named"), [
    ({"module_sha256": 12}, "key 'module_sha256': 12 is not of type 'string', 'null'"),
    ({"module_sha256": "not-hex"}, "key 'module_sha256': 'not-hex' does not match"),
    ({"signed": "yes"}, "key 'signed': 'yes' is not of type 'boolean'"),
    ({"consistency": "fast"}, "key 'consistency': 'fast' is not one of ['default', 'freeze']"),
    ({"schema_version": True}, "key 'schema_version': 1 was expected"),
    ({"schema_version": 0}, "key 'schema_version': 1 was expected"),
    ({"objects": {"vmlinux": [{"name": "f", "sympos": "1"}]}},
     "key 'objects.vmlinux[0].sympos': '1' is not of type 'integer'"),
    ({"update": {"from": "1", "to": "2", "state": "update",
                 "units": [{"name": "fs/proc", "status": "maybe"}]}},
     "key 'update.units[0].status': 'maybe' is not one of"),
])
def test_wrong_types_are_named(tmp_path, change, named):
    ko = write(tmp_path, {**good(), **change})
    with pytest.raises(reader.ManifestError) as err:
        reader.read_manifest(ko)
    assert named in str(err.value)
    assert str(tmp_path / "klp_fix.json") in str(err.value)


def test_missing_required_key_is_named(tmp_path):
    broken = good()
    del broken["kernel_release"]
    missing = "key 'kernel_release': 'kernel_release' is a required property"
    with pytest.raises(reader.ManifestError, match=missing):
        reader.read_manifest(write(tmp_path, broken))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]"])
def test_unreadable_manifest_names_the_file(tmp_path, text):
    (tmp_path / "klp_fix.json").write_text(text)
    with pytest.raises(reader.ManifestError, match=str(tmp_path / "klp_fix.json")):
        reader.read_manifest(tmp_path / "klp_fix.ko")


def test_unknown_keys_are_left_for_newer_builders(tmp_path):
    newer = {**good(), "something_new": {"a": 1}}
    assert reader.read_manifest(write(tmp_path, newer)) == newer


# --------------------------------------------------------------------------- the role's lookup

def lookup(tmp_path, term):
    """lookup('klp.livepatch.manifest', term) from a play whose files are in tmp_path."""
    return LookupModule(loader=DataLoader()).run(
        [term], variables={"ansible_search_path": [str(tmp_path)]})


def test_lookup_reads_the_manifest_of_the_module_it_finds(tmp_path):
    write(tmp_path, good()).write_bytes(b"module")
    assert lookup(tmp_path, "klp_fix.ko") == [good()]
    assert lookup(tmp_path, str(tmp_path / "klp_fix.ko")) == [good()]


def test_lookup_fails_without_module_or_manifest_or_on_a_bad_one(tmp_path):
    with pytest.raises(AnsibleLookupError, match="klp_fix.ko not found on the controller"):
        lookup(tmp_path, "klp_fix.ko")
    (tmp_path / "klp_fix.ko").write_bytes(b"module")
    with pytest.raises(AnsibleLookupError, match="no builder manifest"):
        lookup(tmp_path, "klp_fix.ko")
    write(tmp_path, {**good(), "signed": "no"})
    with pytest.raises(AnsibleLookupError, match="key 'signed': 'no' is not of type 'boolean'"):
        lookup(tmp_path, "klp_fix.ko")


# --------------------------------------------------------------------------- cross-check

INFO = {"path": "/out/klp_fix.ko", "sha256": SHA, "name": "klp_fix",
        "vermagic": f"{KERNEL.release} SMP preempt mod_unload "}


def test_module_file_matching_its_manifest_passes():
    klp_manifest.check_module_file(good(), INFO)
    klp_manifest.check_module_file({"name": "klp_fix"}, INFO)  # an older, sparser manifest


@pytest.mark.parametrize(("key", "value"), [
    ("module_sha256", "0" * 64),
    ("module_name", "someone_else"),
    ("vermagic", "6.1.0-50-amd64 SMP preempt mod_unload "),
])
def test_sha256_or_name_mismatch_is_refused(key, value):
    with pytest.raises(klp_errors.KlpError, match=key) as err:
        klp_manifest.check_module_file({**good(), key: value}, INFO)
    assert INFO["path"] in str(err.value) and "after the build" in str(err.value)


# --------------------------------------------------------------------------- the schema

def test_schema_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_builder_and_reader_agree_on_the_schema_version():
    assert SCHEMA_VERSION == reader.schema_version() == 1
    assert Path(reader.SCHEMA_PATH).resolve() == SCHEMA_PATH.resolve()


# ------------------------------------------------------------------- what the builder writes

def strict(schema):
    """`schema` with every object closed: a key the builder writes that the schema does not
    describe fails validation."""
    schema = copy.deepcopy(schema)

    def close(node):
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for value in node.values():
                close(value)
        elif isinstance(node, list):
            for value in node:
                close(value)
    close(schema)
    return schema


def follows_the_schema(manifest: dict) -> None:
    jsonschema.validate(manifest, strict(SCHEMA))
    reader.validate(json.loads(json.dumps(manifest)), "the builder's manifest")
    assert manifest["schema_version"] == SCHEMA_VERSION


def build_manifest(tmp_path, monkeypatch, **request) -> dict:
    """pipeline._manifest for one unit with a changed, a new and a callback function."""
    patch = tmp_path / "fix.patch"
    patch.write_text(PATCH)
    if request.get("sign_key"):
        for name in ("sign_key", "sign_cert"):
            (tmp_path / name).write_text(name)
            request[name] = tmp_path / name
    req = BuildRequest(kernel=KERNEL.release, package_version=KERNEL.package_version,
                       patches=[patch], name="klp_fix", output=tmp_path, **request)
    ko = tmp_path / "klp_fix.ko"
    ko.write_bytes(b"\x7fELF module")
    monkeypatch.setattr(pipeline, "vermagic", lambda ko: f"{KERNEL.release} SMP preempt ")
    diff = UnitDiff(source="fs/proc/meminfo.c", target_object="vmlinux",
                    new_functions=["helper"], new_data=["state"],
                    callbacks={"pre_patch": "klp_pre", "post_unpatch": "klp_post"},
                    skipped_init=["meminfo_init"])
    unit = GeneratedUnit(object=None, klp_symbols=[".klp.sym.vmlinux.si_swapinfo,0"],
                         notes=["fs/proc/meminfo.c: static key stays off"],
                         functions=[FunctionEntry(object="vmlinux",
                                                  old_name="meminfo_proc_show", sympos=0,
                                                  new_symbol="meminfo_proc_show",
                                                  source="fs/proc/meminfo.c", reason="size")])
    linked = LinkedModule(path=ko, module_name="klp_fix",
                          klp_relocation_sections=[".klp.rela.vmlinux..text"])
    images = {"vmlinux": SimpleNamespace(build_id="01d2640d3a13145ee314eb05b155f141b7b7058b")}
    compiled = SimpleNamespace(units=[SimpleNamespace(because=""),
                                      SimpleNamespace(because="include/linux/mm.h")],
                               same_after_preprocessing=12)
    return pipeline._manifest(req, KERNEL, [diff], [unit], linked, ko,
                              {"compile": 2.4, "link": 2.5}, images, PatchSet.read([patch]),
                              compiled)


@pytest.mark.parametrize("request_args", [
    {},
    {"replace": False, "consistency": "freeze", "skip_init_changes": True, "sign_key": True},
])
def test_every_build_manifest_follows_the_schema(tmp_path, monkeypatch, request_args):
    follows_the_schema(build_manifest(tmp_path, monkeypatch, **request_args))


def update_info() -> dict:
    item = {"version": "6.1.192-3", "text": "fs/proc: fix (CVE-2026-1234)",
            "cves": ["CVE-2026-1234"]}
    return {"from": "6.1.190-1", "to": "6.1.192-3", "changelog": [item],
            "left_out": {"fs/new.c": "new .c file: the running kernel has no such object"},
            "cves_live": ["CVE-2026-1234"], "cves_not_live": [],
            "units": [
                {"name": "fs/proc", "files": ["fs/proc/meminfo.c"], "unbuilt": [],
                 "placements": {"fs/proc/meminfo.c": "vmlinux"}, "status": "live",
                 "reason": "", "functions": {"vmlinux": ["meminfo_proc_show"]},
                 "notes": [], "build_seconds": 12.5, "changelog": [item]},
                {"name": "drivers/x", "files": ["drivers/x/a.c"], "unbuilt": ["drivers/x/a.c"],
                 "placements": {}, "status": "not-in-config", "reason": "not built",
                 "changelog": []},
                {"name": "mm", "files": ["mm/a.c"], "unbuilt": [], "placements": {},
                 "status": "needs-reboot", "reason": "changes data", "build_seconds": 3.0,
                 "changelog": []}]}


@pytest.mark.parametrize("state", ["current", "nothing-live"])
def test_update_manifest_without_a_module_follows_the_schema(tmp_path, state):
    written = update_mod._write(tmp_path / "u.json",
                                update_mod._current("u_6_1_192_3", KERNEL, update_info(),
                                                    state=state))
    follows_the_schema(written)
    assert json.loads((tmp_path / "u.json").read_text()) == written


def test_update_manifest_with_a_module_follows_the_schema(tmp_path, monkeypatch):
    built = build_manifest(tmp_path, monkeypatch)
    follows_the_schema({**built, "update": {**update_info(), "state": "update"}})
