"""Several API keys at once: add and retire them through /sim/control while orders stay the account's."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from typing import Any

import aiohttp
import orjson
import pytest

from rampart_bot.sim.server import SimServer

from .test_sim_support import CONTROL_TOKEN, KEY, SECRET, call, http, order, paused_sim  # noqa: F401

pytestmark = pytest.mark.asyncio
AUTH = {"Authorization": f"Bearer {CONTROL_TOKEN}"}
NEW_KEY = "sim-test-key-2"
NEW_SECRET = "sim-test-secret-2"
UNKNOWN_KEY = f"{NEW_KEY}-never-added"
INVALID_KEY = {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action."}


async def control(
    session: aiohttp.ClientSession, sim: SimServer, body: Any, headers: dict[str, str] = AUTH
) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(
        f"{sim.base_url}/sim/control", data=raw, headers={**headers, "Content-Type": "application/json"}
    ) as resp:
        return resp.status, await resp.json()


async def add(session: aiohttp.ClientSession, sim: SimServer, key: str, secret: str) -> tuple[int, Any]:
    return await control(session, sim, {"action": "add_api_key", "api_key": key, "api_secret": secret})


async def retire(session: aiohttp.ClientSession, sim: SimServer, key: str) -> tuple[int, Any]:
    return await control(session, sim, {"action": "retire_api_key", "api_key": key})


async def account(session: aiohttp.ClientSession, sim: SimServer, key: str, secret: str) -> tuple[int, Any]:
    status, body, _ = await call(session, sim, "GET", "/api/v3/account", key=key, secret=secret)
    return status, body


async def test_a_new_key_signs_and_is_never_logged(paused_sim: SimServer, http, caplog) -> None:  # noqa: F811
    sim = paused_sim
    assert (await account(http, sim, NEW_KEY, NEW_SECRET))[1] == INVALID_KEY
    with caplog.at_level(logging.DEBUG):
        status, body = await add(http, sim, NEW_KEY, NEW_SECRET)
    assert status == 200 and body["result"] == {"added": True, "active_keys": 2}
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "API key added" in logged and NEW_KEY not in logged and NEW_SECRET not in logged
    assert (await account(http, sim, NEW_KEY, NEW_SECRET))[0] == 200
    assert (await account(http, sim, KEY, SECRET))[0] == 200
    # The key is checked with its own secret, not with any active one.
    status, body = await account(http, sim, NEW_KEY, SECRET)
    assert (status, body["code"]) == (400, -1022)
    # The same pair again changes nothing (a rotation playbook may run twice).
    status, body = await add(http, sim, NEW_KEY, NEW_SECRET)
    assert status == 200 and body["result"] == {"added": False, "active_keys": 2}
    async with http.get(f"{sim.base_url}/sim/state") as resp:
        state = await resp.text()
    assert orjson.loads(state)["api_keys"] == 2
    assert not any(s in state for s in (KEY, SECRET, NEW_KEY, NEW_SECRET))


async def test_retired_key_refused_its_order_cancelled_with_new(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    resting = order(
        type="LIMIT", timeInForce="GTC", quantity="0.01", price="29000.00", newClientOrderId="rot-1"
    )
    status, placed, _ = await call(http, sim, "POST", "/api/v3/order", resting)
    assert status == 200 and placed["status"] == "NEW"
    assert (await add(http, sim, NEW_KEY, NEW_SECRET))[0] == 200
    status, body = await retire(http, sim, KEY)
    assert status == 200 and body["result"] == {"active_keys": 1}
    for method, path, params in (
        ("GET", "/api/v3/account", {}),
        ("GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}),
        ("DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": placed["orderId"]}),
    ):
        status, body, _ = await call(http, sim, method, path, params)
        assert (status, body) == (401, INVALID_KEY), path
    status, body, _ = await call(http, sim, "POST", "/api/v3/userDataStream", signed=False)
    assert (status, body) == (401, INVALID_KEY)
    new = {"key": NEW_KEY, "secret": NEW_SECRET}
    status, open_orders, _ = await call(http, sim, "GET", "/api/v3/openOrders", {"symbol": "BTCUSDT"}, **new)
    assert status == 200 and [o["orderId"] for o in open_orders] == [placed["orderId"]]
    status, cancelled, _ = await call(
        http, sim, "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "rot-1"}, **new
    )
    assert status == 200 and cancelled["status"] == "CANCELED" and cancelled["orderId"] == placed["orderId"]
    assert sim.exchange.open_orders("BTCUSDT") == []


async def test_listen_key_outlives_the_key_that_made_it(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    status, body, _ = await call(http, sim, "POST", "/api/v3/userDataStream", signed=False)
    listen_key = body["listenKey"]
    assert (await add(http, sim, NEW_KEY, NEW_SECRET))[0] == 200
    assert (await retire(http, sim, KEY))[0] == 200
    new = {"key": NEW_KEY, "secret": NEW_SECRET, "signed": False}
    # One listen key per account: the new key is handed the same one, and may keep it alive.
    status, body, _ = await call(http, sim, "POST", "/api/v3/userDataStream", **new)
    assert (status, body) == (200, {"listenKey": listen_key})
    status, _, _ = await call(http, sim, "PUT", "/api/v3/userDataStream", {"listenKey": listen_key}, **new)
    assert status == 200
    status, _, _ = await call(http, sim, "DELETE", "/api/v3/userDataStream", {"listenKey": listen_key}, **new)
    assert status == 200 and sim.listen_keys == {}


async def test_websocket_api_subscription_takes_any_active_key(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    assert (await add(http, sim, NEW_KEY, NEW_SECRET))[0] == 200
    assert (await retire(http, sim, KEY))[0] == 200

    def subscribe(req_id: str, key: str, secret: str) -> str:
        params: dict[str, Any] = {"apiKey": key, "timestamp": int(time.time() * 1000)}
        payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
        params["signature"] = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        return orjson.dumps(
            {"id": req_id, "method": "userDataStream.subscribe.signature", "params": params}
        ).decode()

    async with http.ws_connect(f"{sim.ws_url}/ws-api/v3") as ws:
        await ws.send_str(subscribe("old", KEY, SECRET))
        reply = orjson.loads(await asyncio.wait_for(ws.receive_str(), timeout=5))
        assert reply == {"id": "old", "status": 401, "error": INVALID_KEY}
        await ws.send_str(subscribe("new", NEW_KEY, NEW_SECRET))
        reply = orjson.loads(await asyncio.wait_for(ws.receive_str(), timeout=5))
        assert reply == {"id": "new", "status": 200, "result": {"subscriptionId": 0}}


async def test_bad_key_requests_are_400_and_change_nothing(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    echoed = (KEY, NEW_KEY, NEW_SECRET, UNKNOWN_KEY)  # replies name fields, never values
    refusals = {
        # The only key cannot be retired: the account would be locked out.
        "last active key": {"action": "retire_api_key", "api_key": KEY},
        "not an active key": {"action": "retire_api_key", "api_key": NEW_KEY},
        "needs 'api_secret'": {"action": "add_api_key", "api_key": NEW_KEY},
        "needs 'api_key'": {"action": "add_api_key", "api_secret": NEW_SECRET},
        "visible ASCII": {
            "action": "add_api_key",
            "api_key": NEW_KEY.replace("-", " "),
            "api_secret": NEW_SECRET,
        },
        "1 to 512": {"action": "add_api_key", "api_key": "k" * 513, "api_secret": NEW_SECRET},
        "needs 'api_secret': 1": {"action": "add_api_key", "api_key": NEW_KEY, "api_secret": ""},
        "needs 'api_key': 1": {"action": "retire_api_key", "api_key": 7},
        "only for action(s) 'add_api_key'": {
            "action": "retire_api_key",
            "api_key": KEY,
            "api_secret": NEW_SECRET,
        },
        "only for action(s) 'add_api_key', 'retire_api_key'": {"action": "step", "api_key": NEW_KEY},
        "different secret": {"action": "add_api_key", "api_key": KEY, "api_secret": NEW_SECRET},
        # A bad fault beside a good key change stops both, and a bad key change stops the faults.
        "unknown fault 'nope'": {
            "action": "add_api_key",
            "api_key": NEW_KEY,
            "api_secret": NEW_SECRET,
            "faults": {"nope": 1},
        },
        "'api_key' is not an active key": {
            "action": "retire_api_key",
            "api_key": UNKNOWN_KEY,
            "faults": {"ban_next": 1},
        },
    }
    for words, body in refusals.items():
        status, reply = await control(http, sim, body)
        assert status == 400 and words in reply["error"], (words, reply)
        assert not any(v in reply["error"] for v in echoed), reply
    assert sim.active_api_keys == 1 and sim.faults.ban_next == 0
    assert (await account(http, sim, KEY, SECRET))[0] == 200
    assert (await account(http, sim, NEW_KEY, NEW_SECRET))[1] == INVALID_KEY


async def test_key_actions_need_the_token(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    for headers in ({}, {"Authorization": "Bearer nope"}):
        status, _ = await control(
            http, sim, {"action": "add_api_key", "api_key": NEW_KEY, "api_secret": NEW_SECRET}, headers
        )
        assert status == 401
        status, _ = await control(http, sim, {"action": "retire_api_key", "api_key": KEY}, headers)
        assert status == 401
    assert sim.active_api_keys == 1
    assert (await account(http, sim, NEW_KEY, NEW_SECRET))[1] == INVALID_KEY
    assert (await account(http, sim, KEY, SECRET))[0] == 200
