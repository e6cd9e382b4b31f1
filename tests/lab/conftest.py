"""Lab fixtures: the running lab's topology and a testinfra host per lab host (over the lab's SSH)."""

import json
from pathlib import Path

import pytest
import testinfra

from rampart.topology import load

ROOT = Path(__file__).resolve().parents[2]
SSH_CONFIG = ROOT / ".lab" / "ssh_config"


def pytest_collection_modifyitems(config, items):
    if not (ROOT / ".lab" / "state.json").exists():
        pytest.exit("no running lab (.lab/state.json missing): run `make test-lab`, which builds it", returncode=2)


@pytest.fixture(scope="session")
def topo():
    state = json.loads((ROOT / ".lab" / "state.json").read_text())
    return load(state["topology"])


def lab_hosts():
    state = json.loads((ROOT / ".lab" / "state.json").read_text())
    return sorted(state["hosts"])


_hosts = {}


def remote(name: str):
    if name not in _hosts:
        _hosts[name] = testinfra.get_host(f"ssh://{name}", ssh_config=str(SSH_CONFIG), sudo=True)
    return _hosts[name]


def pytest_generate_tests(metafunc):
    if "lab_host" in metafunc.fixturenames and (ROOT / ".lab" / "state.json").exists():
        metafunc.parametrize("lab_host", lab_hosts())


@pytest.fixture
def host(lab_host):
    return remote(lab_host)
