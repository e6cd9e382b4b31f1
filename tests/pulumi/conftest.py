"""Fixtures for the Pulumi tests; the machinery is in pulumi_harness (a unique module name, so these tests
can run alongside other test directories that have their own conftest)."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

# Without the Pulumi SDK these tests cannot run at all: skip the directory instead of failing to import it.
MISSING = [m for m in ("pulumi", "pulumi_docker", "pulumi_policy") if importlib.util.find_spec(m) is None]
if MISSING:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session", autouse=True)
def event_loop_for_pulumi():
    """Pulumi's runtime asks asyncio for the current event loop; a test earlier in the same session that used
    asyncio.run() leaves none set, so one is provided here."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


@pytest.fixture(scope="session")
def lab_run(tmp_path_factory, event_loop_for_pulumi):
    """The lab stack, declared once for the whole session (declaring is deterministic)."""
    from pulumi_harness import config_for, run_program

    return run_program(config_for(tmp_path_factory.mktemp("key")))
