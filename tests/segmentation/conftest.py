"""Segmentation suite fixtures: the running lab's topology and temporary listeners for its endpoints."""

import pytest
import segmentation_probe as sp
from support.lab_fixtures import pytest_collection_modifyitems, topo  # noqa: F401  (shared by lab suites)


@pytest.fixture(scope="session")
def listeners(topo):  # noqa: F811  (the shared fixture, imported above)
    """Every TCP endpoint has a listener for the whole session: the real service where it runs, else a
    temporary one (systemd unit rampart-probe-listener), stopped afterwards."""
    started = sp.start_listeners(topo)
    print("\ntemporary listeners: " + ", ".join(f"{h}: {' '.join(s)}" for h, s in sorted(started.items()) if s))
    yield started
    sp.stop_listeners([h for h, s in started.items() if s])
