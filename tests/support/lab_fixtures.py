"""The fixtures and hook every suite that runs against the lab shares (imported by those suites' conftest)."""

import pytest

from support import lab


def pytest_collection_modifyitems(config, items):
    if not lab.running():
        pytest.exit("no running lab (.lab/state.json missing): `make test-lab` builds one", returncode=2)


@pytest.fixture(scope="session")
def topo():
    return lab.topology()
