# SPDX-License-Identifier: GPL-3.0-or-later
"""Session-scoped lab for VM tests: boot each VM once, when a test first needs it; always
tear down.

The session's VMs: the default set, or `KLP_LAB_KERNELS` (whitespace-separated specs),
plus any `@pytest.mark.lab_kernels("spec", …)` on collected tests; they stay up once
booted. Other VMs a module boots go down after it. Only VMs this session booted are
stopped at the end (a VM the user already had running is reused and left alone).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab import VM, Lab
from lab.kernels import resolve
from lab.specs import default_name, parse_spec
from tests.vm.playbook import lab_hosts

ROOT = Path(__file__).resolve().parents[2]
REPO = ROOT
DEFAULT_KERNELS = ["newest-6.1-amd64", "newest-6.1-cloud-amd64"]


# Test modules by time taken, slowest first: pytest-xdist (`--dist loadfile`) hands whole
# modules to its workers in this order, so the long ones do not all end up last.
SLOWEST_FIRST = ["test_corpus", "test_target_patch", "test_debian13", "test_rollout",
                 "test_builder_kernels", "test_faults", "test_persist_other_kernel",
                 "test_molecule", "test_update", "test_signatures", "test_real_fixes"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lab_kernels(*specs): lab VM specs a test needs booted")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: keeps order within


def session_kernels(items: list[pytest.Item]) -> list[str]:
    """The union, in first-seen order, of the base set and the specs tests ask for."""
    specs = os.environ.get("KLP_LAB_KERNELS", "").split() or list(DEFAULT_KERNELS)
    for item in items:
        for marker in item.iter_markers("lab_kernels"):
            specs += [s for s in marker.args if s not in specs]
    return specs


def session_vm_names(specs: list[str]) -> set[str]:
    """The VM names the session's specs boot as."""
    return {spec.name or default_name(resolve(spec.boot)) for spec in map(parse_spec, specs)}


def lab_state_dir() -> Path:
    """`KLP_LAB_STATE` or .lab; under pytest-xdist each worker runs a lab of its own in a
    subdirectory (its own VMs, ports and inventory), so two workers never share a guest."""
    base = Path(os.environ.get("KLP_LAB_STATE", ROOT / ".lab"))
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return base / worker if worker else base


def _teardown(lab: Lab) -> None:
    if lab.started:
        lab.down(list(lab.started))


@pytest.fixture(scope="session")
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The Lab. Nothing is booted until a test asks: `session_vms` and `amd64_host` boot the
    session's VMs (kept until the end), `lab.up([...])` others (down after their module).
    A worker that never runs a test of a VM never boots it: an idle TCG guest still takes
    a share of the two cores."""
    the_lab = Lab(state_dir=lab_state_dir())
    atexit.register(_teardown, the_lab)  # also when pytest itself is interrupted oddly
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:  # turn SIGTERM into an exception so finally runs
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        # What a module boots beyond these goes down after it (_module_vms_go_down).
        request.session.klp_lab = the_lab
        request.session.klp_session_vms = session_vm_names(session_kernels(request.session.items))
        yield the_lab
    finally:
        _teardown(the_lab)
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="module", autouse=True)
def _module_vms_go_down(request: pytest.FixtureRequest) -> Iterator[None]:
    """VMs a test module boots on demand (other releases, extra specs) stop after it: an
    idle TCG guest still takes a share of the two cores from every later test."""
    yield
    the_lab = getattr(request.session, "klp_lab", None)
    if the_lab is not None:
        extra = [n for n in the_lab.started if n not in request.session.klp_session_vms]
        if extra:
            the_lab.down(extra)


@pytest.fixture(scope="session")
def session_vms(lab: Lab, request: pytest.FixtureRequest) -> list[VM]:
    """The VMs of the session's kernel set, in spec order (booted on first use), as they
    were booted: for session- and module-scoped fixtures that need names and releases."""
    return lab.up(session_kernels(request.session.items))


@pytest.fixture
def lab_vms(lab: Lab, session_vms: list[VM]) -> list[VM]:
    """The session's VMs as they run now: a test before may have restarted one (new QEMU
    pid, maybe another SSH port), which leaves the records from boot stale."""
    return [lab.get(vm.name) or vm for vm in session_vms]


@pytest.fixture(scope="session")
def lab_inventory(lab: Lab) -> Path:
    """Path of the inventory (all running lab VMs) for ansible -i."""
    return lab.inventory_path


@pytest.fixture(scope="session")
def lab_boot(lab: Lab) -> Callable[[list[str]], list[VM]]:
    """Boot extra VMs on demand (`lab_boot(["name=RELEASE+cmdline"])`); down at session end."""
    return lab.up


def _ansible_bin(tool: str) -> str:
    local = Path(sys.executable).parent / tool
    found = str(local) if local.exists() else shutil.which(tool)
    if not found:
        pytest.fail(f"{tool} not found: run 'make venv'")
    return found


def run_ansible(tool: str, *args: str, inventory: Path, timeout: float = 600
                ) -> dict[str, dict]:
    """Run `ansible` or `ansible-playbook` like a user would; return each host's last result.

    Results come from ansible-core's `tree` callback (one JSON file per host), so a playbook
    whose result matters should end with the task that produces it.
    """
    with tempfile.TemporaryDirectory(prefix="klp-ansible-tree-") as tree:
        env = {**os.environ, "ANSIBLE_CALLBACKS_ENABLED": "ansible.builtin.tree",
               "ANSIBLE_CALLBACK_TREE_DIR": tree, "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
               "ANSIBLE_HOST_KEY_CHECKING": "False",
               "ANSIBLE_DEPRECATION_WARNINGS": "False", "ANSIBLE_NOCOLOR": "1"}
        proc = subprocess.run([_ansible_bin(tool), "-i", str(inventory), *args], env=env,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              cwd=ROOT)
        results = {p.name: json.loads(p.read_text()) for p in Path(tree).iterdir()}
    if proc.returncode != 0 or not results:
        pytest.fail(f"{tool} {' '.join(args)} exited {proc.returncode}:\n"
                    f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return results


@pytest.fixture(scope="session")
def ansible(lab_inventory: Path) -> Callable[..., dict]:
    """`ansible(pattern, "-m", MODULE, "-a", ARGS)` against the lab inventory: host -> result."""
    def run(*args: str, tool: str = "ansible", timeout: float = 600) -> dict[str, dict]:
        return run_ansible(tool, *args, inventory=lab_inventory, timeout=timeout)
    return run


# ---- fixtures for tests that drive the collection's modules (tests/vm/playbook.py)

@pytest.fixture(scope="session")
def klp_inventory(request) -> Path:
    """The lab's inventory: from the lab fixture when there is one, else .lab/."""
    try:
        return Path(request.getfixturevalue("lab_inventory"))
    except pytest.FixtureLookupError:
        inventory = REPO / ".lab" / "inventory.yml"
        if not inventory.exists():
            pytest.skip("no lab VM: run 'python3 -m lab up newest-6.1-amd64'")
        return inventory


@pytest.fixture(scope="session")
def amd64_host(lab: Lab) -> str:
    """The VM running the newest 6.1 amd64 kernel, booted when first asked for."""
    (vm,) = lab.up(["newest-6.1-amd64"])
    return vm.name


@pytest.fixture(scope="session")
def collections_path(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("collections")
    (base / "ansible_collections" / "klp").mkdir(parents=True)
    (base / "ansible_collections" / "klp" / "livepatch").symlink_to(REPO)
    return base


@pytest.fixture(scope="session")
def vm_release(klp_inventory, amd64_host) -> str:
    """The kernel release amd64_host runs, as the lab's inventory says."""
    return lab_hosts(klp_inventory)[amd64_host]["klp_lab_kernel_release"]
