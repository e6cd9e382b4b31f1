"""`/sim/control` needs a bearer token (issue 13, item 8); without one configured it is disabled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import rampart_bot
from rampart_bot.sim.server import SimServer

from .test_sim_support import CONTROL_TOKEN, KEY, SECRET, http, paused_sim  # noqa: F401

SRC = str(Path(rampart_bot.__file__).resolve().parents[1])  # this tree's sources, not an installed copy


async def test_control_refuses_missing_or_wrong_token(paused_sim: SimServer, http) -> None:  # noqa: F811
    url = f"{paused_sim.base_url}/sim/control"
    body = {"faults": {"rate_limit_next": 3}}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {CONTROL_TOKEN}"}):
        async with http.post(url, json=body, headers=headers) as resp:
            assert resp.status == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
            assert "error" in await resp.json()
    assert paused_sim.faults.rate_limit_next == 0
    # The scheme is case-insensitive (RFC 7235).
    async with http.post(url, json=body, headers={"Authorization": f"bearer {CONTROL_TOKEN}"}) as resp:
        assert resp.status == 200 and (await resp.json())["faults"]["rate_limit_next"] == 3
    assert paused_sim.faults.rate_limit_next == 3


async def test_control_bad_bodies_change_nothing(paused_sim: SimServer, http) -> None:  # noqa: F811
    url = f"{paused_sim.base_url}/sim/control"
    auth = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
    bad = [
        b"not json",
        b"[1]",
        b'{"faults": {"rate_limit_next": 2, "nope": 1}}',
        b'{"faults": {"rate_limit_next": "2"}}',
        b'{"action": "explode"}',
        b'{"faults": {"ban_next": 1}, "extra": true}',
        b'{"action": "step", "symbol": "NOPE"}',
    ]
    for raw in bad:
        async with http.post(url, data=raw, headers={**auth, "Content-Type": "application/json"}) as resp:
            assert resp.status == 400, raw
            assert (await resp.json())["error"]
    assert paused_sim.faults.rate_limit_next == 0 and paused_sim.faults.ban_next == 0
    async with http.post(url, json={"action": "step", "symbol": "BTCUSDT"}, headers=auth) as resp:
        assert resp.status == 200


async def test_control_disabled_without_a_token(http) -> None:  # noqa: F811
    sim = SimServer(KEY, SECRET)
    await sim.start()
    try:
        async with http.post(f"{sim.base_url}/sim/control", json={"faults": {"stall": True}}) as resp:
            assert resp.status == 403
        assert sim.faults.stall is False
        async with http.get(f"{sim.base_url}/sim/state") as resp:  # read-only counters stay open
            assert resp.status == 200
    finally:
        await sim.stop()


def _run_sim(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["PYTHONPATH"] = SRC
    return subprocess.run(
        [sys.executable, "-m", "rampart_bot.sim.main", "--port", "0", *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=tmp_path,
    )


def test_cli_refuses_unreadable_or_empty_token_file(tmp_path: Path) -> None:
    missing = _run_sim(tmp_path, "--control-token-file", str(tmp_path / "absent"))
    assert missing.returncode == 3 and "absent" in missing.stderr and "Traceback" not in missing.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = _run_sim(tmp_path, "--control-token-file", str(empty))
    assert result.returncode == 3 and "empty" in result.stderr and "Traceback" not in result.stderr
    bad = _run_sim(tmp_path, "--weight-limit", "0")
    assert bad.returncode == 2 and "--weight-limit" in bad.stderr
