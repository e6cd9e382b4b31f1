"""HTTP surface, metrics names, the simulator's control/load endpoints and the one-command demo."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rampart_bot.adapters.binance_ws import ParseStats, parse_market_message
from rampart_bot.service.runtime import BotRuntime
from rampart_bot.sim.server import SimServer

from .conftest import OPERATOR_TOKEN

DOCUMENTED_METRICS = {
    "rampart_bot_md_messages",
    "rampart_bot_md_trades",
    "rampart_bot_md_book_updates",
    "rampart_bot_md_dropped",
    "rampart_bot_md_connected",
    "rampart_bot_md_staleness_seconds",
    "rampart_bot_md_reconnects",
    "rampart_bot_order_ack_seconds",
    "rampart_bot_tick_to_order_seconds",
    "rampart_bot_orders_submitted",
    "rampart_bot_orders_in_flight",
    "rampart_bot_orders_unknown",
    "rampart_bot_orders_open",
    "rampart_bot_risk_rejects",
    "rampart_bot_venue_errors",
    "rampart_bot_fills",
    "rampart_bot_fills_duplicate",
    "rampart_bot_trading_state",
    "rampart_bot_trading_state_code",
    "rampart_bot_exposure_quote",
    "rampart_bot_position",
    "rampart_bot_pnl_quote",
    "rampart_bot_circuit_breaker_state",
    "rampart_bot_reconciliations",
    "rampart_bot_reconcile_mismatches",
    "rampart_bot_ready_check",
    "rampart_bot_ready",
    "rampart_bot_kill_switch",
    "rampart_bot_clock_offset_ms",
    "rampart_bot_secrets_loaded",
}


@pytest.mark.asyncio
async def test_health_ready_metrics_and_auth(bot: BotRuntime, sim: SimServer) -> None:
    base = f"http://127.0.0.1:{bot.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200, body
            assert body["checks"] == {
                "feed_fresh": True,
                "reconciled": True,
                "db_reachable": True,
                "secrets_loaded": True,
            }
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
        names = {fam.name for fam in text_string_to_metric_families(text)}
        assert names >= DOCUMENTED_METRICS, DOCUMENTED_METRICS - names
        assert all(n.startswith("rampart_bot_") for n in names)
        readme = (os.path.dirname(__file__) + "/../README.md").replace("tests/../", "")
        with open(readme) as f:
            documented = f.read()
        assert all(n in documented for n in DOCUMENTED_METRICS), "README must list every metric"
        for path in ("/api/v1/state", "/api/v1/resume"):
            async with http.get(f"{base}{path}", headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status in (401, 405)
        async with http.get(f"{base}/api/v1/state", headers={"Authorization": "Bearer wrong"}) as resp:
            assert resp.status == 401
        async with http.get(
            f"{base}/api/v1/state", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        ) as resp:
            state = await resp.json()
            assert state["state"] == "ACTIVE"
        async with http.post(
            f"{base}/api/v1/reducing", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}
        ) as resp:
            assert (await resp.json())["state"] == "REDUCING"
        sim.set_faults(stall=True)
        await bot.engine.wait_for(lambda: not bot.engine.ready(), timeout=5)
        async with http.get(f"{base}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503 and body["checks"]["feed_fresh"] is False


@pytest.mark.asyncio
async def test_sim_plain_stream_subscribe_and_load_mode(sim: SimServer) -> None:
    stats = ParseStats()
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{sim.ws_url}/ws/btcusdt@bookTicker") as ws:
            msg = await ws.receive_str()  # raw (unwrapped) stream
            assert "stream" not in orjson.loads(msg)
            await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":3}')
            while True:
                reply = orjson.loads(await ws.receive_str())
                if reply.get("id") == 3:
                    assert reply["result"] == ["btcusdt@bookTicker"]
                    break
        async with http.ws_connect(f"{sim.ws_url}/stream?load=1000", max_msg_size=0) as ws:
            for _ in range(1000):
                parse_market_message(await ws.receive_str(), stats)
    # Every load frame is valid market data: none may be dropped.
    assert stats.books == 500 and stats.trades == 500
    assert not stats.dropped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.asyncio
async def test_one_command_paper_mode_with_simulator(tmp_path) -> None:  # noqa: ANN001
    port = _free_port()
    cfg = tmp_path / "bot.toml"
    cfg.write_text(f'[http]\nport = {port}\n[database]\nurl = "sqlite:///{tmp_path}/paper.sqlite3"\n')
    proc = subprocess.Popen(
        [sys.executable, "-m", "rampart_bot.service.main", "--paper-with-sim", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            ready = False
            for _ in range(300):  # poll the real process until it reports ready (bounded)
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            ready = True
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
            assert ready, proc.stderr.read1().decode() if proc.poll() is not None else "not ready"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    lines = [orjson.loads(line) for line in out.splitlines() if line.strip()]
    assert any(entry["msg"] == "rampart-bot stopped" for entry in lines)
    assert b"demo-secret" not in out and b"demo-operator-token" not in out
