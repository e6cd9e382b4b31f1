"""Lab fixtures: a testinfra host per lab host (over the lab's SSH config)."""

import pytest
from support import lab
from support.lab_fixtures import pytest_collection_modifyitems, topo  # noqa: F401  (shared by lab suites)


def pytest_generate_tests(metafunc):
    if "lab_host" in metafunc.fixturenames and lab.running():
        metafunc.parametrize("lab_host", lab.hosts())


@pytest.fixture
def host(lab_host):
    return lab.remote(lab_host)
