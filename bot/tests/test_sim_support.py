"""Helpers for the simulator tests: a paused simulator and a minimal Binance-style signed client.

The client signs exactly what it sends (urlencode, as Binance's own connector does), so the tests
exercise the simulator's verification over the raw, percent-encoded query string.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson
import pytest_asyncio
import yarl

from rampart_bot.sim.server import SimServer

KEY = "sim-test-key"
SECRET = "sim-test-secret"
CONTROL_TOKEN = "sim-control-token-for-tests"


@pytest_asyncio.fixture
async def paused_sim() -> AsyncIterator[SimServer]:
    """No price ticks: BTCUSDT stays at bid 29999.99 / ask 30000.01, 1.5 a level."""
    server = SimServer(KEY, SECRET, tick_interval_s=0, control_token=CONTROL_TOKEN)
    server.clock = lambda: 1_800_000_000.0  # start of a minute: no rate-limit window rolls over
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def signed_query(params: dict[str, Any], secret: str = SECRET) -> str:
    params = {**params, "timestamp": int(time.time() * 1000)}
    query = urlencode(params)
    signature = hmac.new(secret.encode(), query.encode(), hashlib.sha256).hexdigest()
    return f"{query}&signature={signature}"


async def call(
    http: aiohttp.ClientSession,
    sim: SimServer,
    method: str,
    path: str,
    params: dict[str, Any] | None = None,
    signed: bool = True,
    key: str | None = KEY,
    secret: str = SECRET,
) -> tuple[int, Any, dict[str, str]]:
    query = signed_query(params or {}, secret) if signed else urlencode(params or {})
    headers = {"X-MBX-APIKEY": key} if key else {}
    # yarl must not re-encode what was signed (it would turn %3A back into ':'): pass it as encoded.
    url = yarl.URL(f"{sim.base_url}{path}?{query}" if query else f"{sim.base_url}{path}", encoded=True)
    async with http.request(method, url, headers=headers) as resp:
        body = await resp.read()
        return resp.status, orjson.loads(body) if body else None, dict(resp.headers)


def order(symbol: str = "BTCUSDT", side: str = "BUY", **extra: Any) -> dict[str, Any]:
    return {"symbol": symbol, "side": side, **extra}
