"""Lab fixtures: a testinfra host per lab host (over the lab's SSH config)."""

import pytest
from support import lab


def pytest_collection_modifyitems(config, items):
    if not lab.running():
        pytest.exit("no running lab (.lab/state.json missing): `make test-lab` builds one", returncode=2)


@pytest.fixture(scope="session")
def topo():
    return lab.topology()


def pytest_generate_tests(metafunc):
    if "lab_host" in metafunc.fixturenames and lab.running():
        metafunc.parametrize("lab_host", lab.hosts())


@pytest.fixture
def host(lab_host):
    return lab.remote(lab_host)
