"""Segmentation suite fixtures: the running lab's topology and temporary listeners for its endpoints."""

import pytest
import segmentation_probe as sp
from support import lab


def pytest_collection_modifyitems(config, items):
    if not lab.running():
        pytest.exit("no running lab (.lab/state.json missing): `make test-lab` builds one", returncode=2)


@pytest.fixture(scope="session")
def topo():
    return lab.topology()


@pytest.fixture(scope="session")
def listeners(topo):
    """Every TCP endpoint has a listener for the whole session: the real service where it runs, else a
    temporary one (systemd unit rampart-probe-listener), stopped afterwards."""
    started = sp.start_listeners(topo)
    print("\ntemporary listeners: " + ", ".join(f"{h}: {' '.join(s)}" for h, s in sorted(started.items()) if s))
    yield started
    sp.stop_listeners([h for h, s in started.items() if s])
