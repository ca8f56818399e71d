# SPDX-License-Identifier: GPL-3.0-or-later
"""AWX definitions (awx/) against livepatch.yml: the survey asks only for real inputs, with
types, choices, defaults and required flags that agree with the playbook's input check,
and configure.yml wires the survey and a canary → approval → fleet workflow.

No AWX here: configure.yml is also run against stand-in awx.awx modules that only record
the arguments they get, to check what the real modules would be sent.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ansible_collections.klp.livepatch.plugins.module_utils.klp_kernel import (
    validate_park_kthreads,
)


class PlaybookLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus Ansible's !unsafe tag (a string left untemplated)."""


PlaybookLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))

ROOT = Path(__file__).resolve().parents[2]
SURVEY = yaml.safe_load((ROOT / "awx" / "survey.yml").read_text())
CONFIGURE = yaml.load((ROOT / "awx" / "configure.yml").read_text(), Loader=PlaybookLoader)
PLAYBOOK = yaml.safe_load((ROOT / "playbooks" / "livepatch.yml").read_text())
QUESTIONS = {q["variable"]: q for q in SURVEY["spec"]}

# AWX's question types and the Python type of their default.
AWX_TYPES = {"text": str, "textarea": str, "password": str, "multiplechoice": str,
             "multiselect": str, "integer": int, "float": float}


def input_spec() -> dict[str, dict]:
    """The argument_spec of livepatch.yml's validate_argument_spec task."""
    for task in PLAYBOOK[0]["tasks"]:
        if "ansible.builtin.validate_argument_spec" in task:
            return task["ansible.builtin.validate_argument_spec"]["argument_spec"]
    raise AssertionError("livepatch.yml has no validate_argument_spec task")


SPEC = input_spec()
DEFAULTS = PLAYBOOK[0]["vars"]


def choices(question: dict) -> list[str]:
    value = question.get("choices", [])
    return value.splitlines() if isinstance(value, str) else list(value)


def default_items(question: dict) -> list[str]:
    """A multiselect/multiplechoice default: AWX takes one string, one choice a line."""
    return [line for line in question.get("default", "").splitlines() if line]


def task_with(tasks: list[dict], module: str) -> list[dict]:
    """The arguments of every task (blocks included) that calls MODULE."""
    found = []
    for task in tasks:
        found += task_with(task.get("block", []), module)
        if module in task:
            found.append(task[module])
    return found


CONFIGURE_TASKS = CONFIGURE[0]["tasks"]
CONFIGURE_VARS = CONFIGURE[0]["vars"]


def test_the_survey_is_valid_for_awx():
    assert isinstance(SURVEY["name"], str) and isinstance(SURVEY["description"], str)
    assert len(QUESTIONS) == len(SURVEY["spec"]), "a variable is asked twice"
    for var, q in QUESTIONS.items():
        assert isinstance(q["question_name"], str) and isinstance(q["required"], bool), var
        assert q["type"] in AWX_TYPES, var
        if q.get("default", "") != "":
            assert isinstance(q["default"], AWX_TYPES[q["type"]]), var
        if q["type"] in ("multiplechoice", "multiselect"):
            assert choices(q), var
            assert set(default_items(q)) <= set(choices(q)), var
        if q["type"] == "multiplechoice":
            assert len(default_items(q)) <= 1, var
        if q["type"] == "integer" and "default" in q:
            assert q["min"] <= q["default"] <= q["max"], var


@pytest.mark.parametrize("var", sorted(QUESTIONS))
def test_every_question_is_a_checked_input_of_the_same_type(var):
    question, spec = QUESTIONS[var], SPEC.get(var)
    assert spec is not None, f"{var} is not an input livepatch.yml checks"
    # The survey must at least require what the playbook requires.
    assert question["required"] or not spec.get("required", False), var
    kind = spec["type"]
    if kind == "int":
        assert question["type"] == "integer", var
    elif kind == "str" and "choices" in spec:
        assert question["type"] == "multiplechoice", var
        assert sorted(choices(question)) == sorted(spec["choices"]), var
    elif kind in ("str", "path"):
        assert question["type"] in ("text", "textarea"), var
    elif kind == "list":
        assert question["type"] == "multiselect", var  # AWX's only list answer
        if "choices" in spec:
            assert set(choices(question)) <= set(spec["choices"]), var
    else:
        # bool: AWX has no boolean question; "true"/"false" strings pass the input check
        # but break a `when:` in the roles. Such inputs are template extra variables.
        pytest.fail(f"{var}: a {kind} input cannot be asked by an AWX survey")


@pytest.mark.parametrize("var", sorted(QUESTIONS))
def test_survey_defaults_are_the_playbook_defaults(var):
    question, default = QUESTIONS[var], DEFAULTS[var]
    if question["type"] == "multiselect":
        assert default_items(question) == [str(item) for item in default], var
    else:
        assert question.get("default") == default, var


def test_patch_choices_are_files_of_the_project():
    """A job runs in the project directory: patch paths are relative to its root."""
    assert SPEC["livepatch_patches"]["elements"] == "path"
    for path in choices(QUESTIONS["livepatch_patches"]):
        assert not path.startswith("/") and (ROOT / path).is_file(), path


def test_batch_and_kthread_choices_are_valid_values():
    for size in choices(QUESTIONS["livepatch_batches"]):
        assert re.fullmatch(r"[1-9][0-9]*|([1-9][0-9]?|100)%", size), size
    validate_park_kthreads(choices(QUESTIONS["livepatch_park_kthreads"]))  # raises if not
    max_fail = QUESTIONS["livepatch_max_fail_percentage"]
    assert (max_fail["min"], max_fail["max"]) == (0, 100)  # livepatch.yml asserts this range


def test_template_extra_vars_are_inputs_the_survey_does_not_ask():
    extra = CONFIGURE_VARS["klp_awx_extra_vars"]
    assert set(extra) <= set(SPEC)
    assert not set(extra) & set(QUESTIONS)  # one source per input
    bools = {var for var, spec in SPEC.items() if spec["type"] == "bool"}
    assert bools - {"livepatch_become"} <= set(extra)  # every boolean settable somewhere


def test_configure_loads_the_survey_file():
    assert re.search(r"lookup\('ansible.builtin.file', 'survey.yml'\)",
                     CONFIGURE_VARS["klp_awx_survey"])
    assert set(CONFIGURE_VARS["klp_awx_rollback_questions"]) <= set(QUESTIONS)
    assert "livepatch_name" in CONFIGURE_VARS["klp_awx_rollback_questions"]
    templates = task_with(CONFIGURE_TASKS, "awx.awx.job_template")
    assert len(templates) == 2
    for template in templates:
        assert template["playbook"] == "livepatch.yml"
        assert template["survey_enabled"] is True and "klp_awx_survey" in template["survey_spec"]
        assert template["ask_limit_on_launch"] is True  # the workflow nodes set limits
    assert sum("'livepatch_state': 'absent'" in t["extra_vars"] for t in templates) == 1


def test_workflow_has_an_approval_between_canary_and_fleet():
    nodes = {n["identifier"]: n
             for n in task_with(CONFIGURE_TASKS, "awx.awx.workflow_job_template_node")}
    [approval] = [n for n in nodes.values() if "approval_node" in n]
    assert "unified_job_template" not in approval
    assert approval["approval_node"]["timeout"] == "{{ klp_awx_approval_timeout }}"
    assert CONFIGURE_VARS["klp_awx_approval_timeout"] > 0  # 0 would wait forever
    parents = [n for n in nodes.values() if approval["identifier"] in n.get("success_nodes", [])]
    children = [nodes[i] for i in approval["success_nodes"]]
    assert len(parents) == 1 and len(children) == 1
    canary, fleet = parents[0], children[0]
    rollout = "{{ klp_awx_rollout_template }}"
    assert canary["unified_job_template"] == fleet["unified_job_template"] == rollout
    assert canary["limit"] != fleet["limit"]
    assert canary["job_slice_count"] == 1  # the canary is one job, whatever the slicing
    assert not fleet.get("success_nodes")  # nothing runs after the fleet
    # no other path around the approval
    assert [n["identifier"] for n in nodes.values() if fleet["identifier"] in
            n.get("success_nodes", []) + n.get("always_nodes", []) + n.get("failure_nodes", [])
            ] == [approval["identifier"]]


STAND_IN = """\
import json, os, sys
from ansible.module_utils.basic import _load_params


def main():
    params = {k: v for k, v in _load_params().items() if not k.startswith("_")}
    with open(os.environ["KLP_AWX_RECORD"], "a") as record:
        record.write(json.dumps({"module": "%s", "args": params}) + "\\n")
    print(json.dumps({"changed": True}))
    sys.stdout.flush()
    os._exit(0)


main()
"""


def test_configure_sends_the_survey_and_workflow(tmp_path):
    """configure.yml against stand-in awx.awx modules: what the real ones would get."""
    collection = tmp_path / "ansible_collections" / "awx" / "awx"
    modules = collection / "plugins" / "modules"
    modules.mkdir(parents=True)
    (collection / "galaxy.yml").write_text("namespace: awx\nname: awx\nversion: 0.0.0\n")
    for module in {m.split(".")[-1] for task in CONFIGURE_TASKS
                   for block in [task, *task.get("block", [])]
                   for m in block if m.startswith("awx.awx.")}:
        (modules / f"{module}.py").write_text(STAND_IN % module)
    record = tmp_path / "record.jsonl"
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path), KLP_AWX_RECORD=str(record),
               ANSIBLE_NOCOLOR="1")
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           str(ROOT / "awx" / "configure.yml"),
                           "-e", "klp_awx_scm_url=https://git.example.invalid/klp.git",
                           "-e", "klp_awx_inventory_file=examples/inventory.yml",
                           "-e", "klp_awx_job_slice_count=4"],
                          capture_output=True, text=True, env=env, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    by_name = {c["args"]["name"]: c["args"] for c in calls if "name" in c["args"]}
    rollout = by_name[CONFIGURE_VARS["klp_awx_rollout_template"]]
    rollback = by_name[CONFIGURE_VARS["klp_awx_rollback_template"]]
    workflow = by_name[CONFIGURE_VARS["klp_awx_workflow"]]
    assert rollout["survey_spec"] == SURVEY == workflow["survey_spec"]
    assert int(rollout["job_slice_count"]) == 4  # a string from -e; the module's int converts
    assert [q["variable"] for q in rollback["survey_spec"]["spec"]] == \
        CONFIGURE_VARS["klp_awx_rollback_questions"]
    assert rollback["extra_vars"]["livepatch_state"] == "absent"
    # AWX, not configure.yml, fills in the job id: one report directory per job (slice)
    assert rollout["extra_vars"]["livepatch_report_dir"].endswith("/{{ awx_job_id }}")
    nodes = {c["args"]["identifier"]: c["args"] for c in calls
             if c["module"] == "workflow_job_template_node"}
    assert list(nodes) == ["fleet", "approval", "canary"]  # each link to an existing node
    assert nodes["canary"]["success_nodes"] == ["approval"]
    assert nodes["approval"]["success_nodes"] == ["fleet"]
    assert nodes["approval"]["approval_node"]["timeout"] > 0
    assert int(nodes["canary"]["job_slice_count"]) == 1
    assert int(nodes["fleet"]["job_slice_count"]) == 4
    assert nodes["canary"]["limit"] == "livepatch_canary"
    assert nodes["fleet"]["limit"] == "all:!livepatch_canary"
