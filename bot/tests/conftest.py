"""Shared fixtures: a throwaway PostgreSQL cluster, the simulator, and a bot wired to it."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings

from rampart_bot.adapters.persistence import Store
from rampart_bot.adapters.secrets import Secret
from rampart_bot.core.risk import RiskLimits
from rampart_bot.service.config import BotConfig, parse_config
from rampart_bot.service.runtime import BotRuntime
from rampart_bot.sim.server import SimServer

# Deterministic fuzzing: the same examples on every run (no flakes), no example database on disk.
settings.register_profile("rampart", derandomize=True, database=None, deadline=None)
settings.load_profile("rampart")

API_KEY = "test-key"
API_SECRET = "test-secret"
OPERATOR_TOKEN = "test-operator-token"
SECRETS = {
    "api_key": Secret(API_KEY),
    "api_secret": Secret(API_SECRET),
    "operator_token": Secret(OPERATOR_TOKEN),
}


# -- PostgreSQL ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    return None


@dataclass
class PgCluster:
    port: int
    _counter: itertools.count  # type: ignore[type-arg]

    def new_database_url(self) -> str:
        import psycopg

        name = f"t{next(self._counter)}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    required = os.environ.get("RAMPART_REQUIRE_POSTGRES") == "1"
    bindir = _pg_bindir()
    if bindir is None:
        msg = "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin (apt-get install postgresql)"
        if required:
            pytest.fail(f"RAMPART_REQUIRE_POSTGRES=1 but {msg}")
        pytest.skip(msg)
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    tmp = tempfile.mkdtemp(prefix="rampart-pg-")
    data = os.path.join(tmp, "data")
    if as_root:
        shutil.chown(tmp, "postgres", "postgres")
    port = _free_port()
    try:
        subprocess.run(
            [
                *prefix,
                f"{bindir}/initdb",
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
            check=True,
            capture_output=True,
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {tmp} -c fsync=off -c full_page_writes=off"
        subprocess.run(
            [
                *prefix,
                f"{bindir}/pg_ctl",
                "-D",
                data,
                "-o",
                opts,
                "-l",
                f"{tmp}/log",
                "-w",
                "-t",
                "60",
                "start",
            ],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        msg = f"could not start a throwaway PostgreSQL: {exc.stderr.decode(errors='replace').strip()[:300]}"
        if required:
            pytest.fail(msg)
        pytest.skip(msg)
    try:
        yield PgCluster(port, itertools.count())
    finally:
        subprocess.run(
            [*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True
        )
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bot.sqlite3'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database_url()


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    yield s
    s.close()


# -- simulator and bot ---------------------------------------------------------------------------
@pytest_asyncio.fixture
async def sim() -> AsyncIterator[SimServer]:
    server = SimServer(API_KEY, API_SECRET, tick_interval_s=0.01)
    await server.start()
    yield server
    await server.stop()


def bot_config(sim: SimServer, db_url: str, **runtime: object) -> BotConfig:
    cfg = parse_config(
        {
            "venue": {"rest_url": sim.base_url, "ws_url": sim.ws_url, "timeout_s": 2.0},
            "strategy": {"name": "idle"},
            "database": {"url": db_url},
            "runtime": {
                "fill_poll_interval_s": 0.02,
                "stale_after_s": 1.0,
                "reconnect_base_s": 0.01,
                "reconnect_cap_s": 0.1,
                "breaker_reset_s": 0.2,
                **runtime,
            },
        },
        "<test>",
    )
    cfg.limits = RiskLimits(
        max_position=Decimal("5"),
        max_exposure=Decimal("1000000"),
        daily_loss_limit=Decimal("100000"),
        max_orders_per_second=1000,
    )
    return cfg


@pytest.fixture
def bot_db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bot.sqlite3'}"


@pytest_asyncio.fixture
async def bot(sim: SimServer, bot_db_url: str) -> AsyncIterator[BotRuntime]:
    runtime = await BotRuntime.start(bot_config(sim, bot_db_url), SECRETS, http_port=0)
    await runtime.engine.wait_for(runtime.engine.ready, timeout=10)
    yield runtime
    await runtime.stop()
