"""WebSocket fidelity of the simulator: raw, bare and combined streams, refusals, user data."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from decimal import Decimal
from typing import Any

import aiohttp
import orjson
import pytest

from rampart_bot.sim.server import SimServer

from .test_sim_support import KEY, SECRET, call, http, order, paused_sim  # noqa: F401

pytestmark = pytest.mark.asyncio


async def recv(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return orjson.loads(await asyncio.wait_for(ws.receive_str(), timeout=5))


async def until(ws: aiohttp.ClientWebSocketResponse, pred: Any) -> Any:
    while True:
        msg = await recv(ws)
        if pred(msg):
            return msg


async def test_bare_ws_path_then_subscribe(paused_sim: SimServer, http) -> None:  # noqa: F811
    async with http.ws_connect(f"{paused_sim.ws_url}/ws") as ws:
        await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}')
        assert await recv(ws) == {"result": None, "id": 1}
        await paused_sim.step("BTCUSDT")
        trade = await recv(ws)
        assert trade["e"] == "trade" and "stream" not in trade
        await ws.send_str('{"method":"SET_PROPERTY","params":["combined",true],"id":2}')
        assert await recv(ws) == {"result": None, "id": 2}
        await paused_sim.step("BTCUSDT")
        wrapped = await recv(ws)
        assert wrapped["stream"] == "btcusdt@trade"


async def test_raw_stream_path_serves_only_its_stream(paused_sim: SimServer, http) -> None:  # noqa: F811
    async with http.ws_connect(f"{paused_sim.ws_url}/ws/ethusdt@bookTicker") as ws:
        await paused_sim.step("ETHUSDT")
        book = await recv(ws)
        assert book["s"] == "ETHUSDT" and "stream" not in book
        await ws.send_str('{"method":"SUBSCRIBE","params":["ethusdt@depth"],"id":1}')
        assert (await recv(ws))["error"]["msg"] == "Invalid request: invalid stream"


@pytest.mark.parametrize(
    "path", ["/ws/btcusdt@nope", "/ws/BTCUSDT@trade", "/stream?streams=btcusdt@trade/xyz@trade"]
)
async def test_unknown_streams_refused_at_connect(paused_sim: SimServer, http, path: str) -> None:  # noqa: F811
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        async with http.ws_connect(f"{paused_sim.ws_url}{path}"):
            pass
    assert err.value.status == 400
    assert paused_sim.connections == 0


async def test_unknown_streams_refused_on_subscribe(paused_sim: SimServer, http) -> None:  # noqa: F811
    async with http.ws_connect(f"{paused_sim.ws_url}/stream?streams=btcusdt@trade") as ws:
        await ws.send_str('{"method":"SUBSCRIBE","params":["btcusdt@bookTicker","foo@bar"],"id":7}')
        assert await recv(ws) == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 7}
        await ws.send_str('{"method":"LIST_SUBSCRIPTIONS","id":8}')
        assert await recv(ws) == {"result": ["btcusdt@trade"], "id": 8}  # nothing half-applied
        await ws.send_str("not json")
        assert (await recv(ws))["code"] == 3
        await ws.send_str('{"method":"NOPE","id":9}')
        reply = await recv(ws)
        assert reply["error"]["code"] == 2 and reply["id"] == 9


async def listen_key(session: aiohttp.ClientSession, sim: SimServer) -> str:
    before = sim.used_weight
    status, body, headers = await call(session, sim, "POST", "/api/v3/userDataStream", signed=False)
    assert status == 200 and int(headers["X-MBX-USED-WEIGHT-1M"]) == before + 2
    return body["listenKey"]


async def test_listen_key_lifecycle(paused_sim: SimServer, http) -> None:  # noqa: F811
    status, body, _ = await call(http, paused_sim, "POST", "/api/v3/userDataStream", signed=False, key=None)
    assert (status, body["code"]) == (401, -2014)
    key = await listen_key(http, paused_sim)
    assert len(key) == 60
    assert await listen_key(http, paused_sim) == key  # one key per account, extended
    status, body, _ = await call(
        http, paused_sim, "PUT", "/api/v3/userDataStream", {"listenKey": key}, signed=False
    )
    assert (status, body) == (200, {})
    status, body, _ = await call(
        http, paused_sim, "DELETE", "/api/v3/userDataStream", {"listenKey": key}, signed=False
    )
    assert (status, body) == (200, {})
    status, body, _ = await call(
        http, paused_sim, "PUT", "/api/v3/userDataStream", {"listenKey": key}, signed=False
    )
    assert (status, body["code"]) == (400, -1125)
    with pytest.raises(aiohttp.WSServerHandshakeError):
        async with http.ws_connect(f"{paused_sim.ws_url}/ws/{key}"):
            pass


async def test_user_stream_reports_every_change_and_fill(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    key = await listen_key(http, sim)
    async with http.ws_connect(f"{sim.ws_url}/ws/{key}") as ws:
        # A taker walking two levels: NEW, then one TRADE per fill, each followed by the balances.
        _, placed, _ = await call(
            http, sim, "POST", "/api/v3/order", order(type="MARKET", quantity="2", newClientOrderId="u-1")
        )
        events = [await recv(ws) for _ in range(6)]
        kinds = [(e["e"], e.get("x")) for e in events]
        assert kinds == [
            ("executionReport", "NEW"),
            ("outboundAccountPosition", None),
            ("executionReport", "TRADE"),
            ("outboundAccountPosition", None),
            ("executionReport", "TRADE"),
            ("outboundAccountPosition", None),
        ]
        new, trade1, trade2 = events[0], events[2], events[4]
        assert (
            new["c"] == "u-1" and new["i"] == placed["orderId"] and new["X"] == "NEW" and new["o"] == "MARKET"
        )
        assert new["p"] == "0.00000000" and new["t"] == -1
        assert (trade1["l"], trade1["L"], trade1["X"]) == ("1.50000000", "30000.01000000", "PARTIALLY_FILLED")
        assert (trade2["z"], trade2["X"]) == ("2.00000000", "FILLED")
        assert {trade1["t"], trade2["t"]} == {f["tradeId"] for f in placed["fills"]}
        balances = {b["a"]: b for b in events[5]["B"]}
        assert Decimal(balances["BTC"]["f"]) == Decimal("12")
        # A resting order, then its cancel: NEW (funds locked), CANCELED (funds back).
        params = order(
            type="LIMIT", timeInForce="GTC", quantity="0.1", price="29000.00", newClientOrderId="u-2"
        )
        await call(http, sim, "POST", "/api/v3/order", params)
        new = await recv(ws)
        locked = await recv(ws)
        assert new["x"] == "NEW" and new["w"] is True
        assert {b["a"]: b["l"] for b in locked["B"]}["USDT"] == "2900.00000000"
        await call(http, sim, "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "u-2"})
        cancel = await recv(ws)
        assert (cancel["x"], cancel["X"], cancel["C"]) == ("CANCELED", "CANCELED", "u-2")
        assert {b["a"]: b["l"] for b in (await recv(ws))["B"]}["USDT"] == "0.00000000"
        # An IOC that cannot trade: NEW then EXPIRED.
        params = order(type="LIMIT", timeInForce="IOC", quantity="0.1", price="29000.00")
        await call(http, sim, "POST", "/api/v3/order", params)
        expired = await until(ws, lambda e: e.get("x") == "EXPIRED")
        assert expired["X"] == "EXPIRED" and expired["eR"] == "UNFILLED_IOC_QUANTITY_EXPIRED"
        # A resting order filled by a price move is a maker TRADE.
        await call(
            http,
            sim,
            "POST",
            "/api/v3/order",
            order(type="LIMIT", timeInForce="GTC", quantity="0.1", price="29990.00"),
        )
        await until(ws, lambda e: e["e"] == "outboundAccountPosition")
        await until(ws, lambda e: e["e"] == "outboundAccountPosition")
        await sim.step("BTCUSDT", mid=Decimal("29980.00"))
        fill = await until(ws, lambda e: e.get("x") == "TRADE")
        assert fill["m"] is True and fill["L"] == "29990.00000000" and fill["X"] == "FILLED"


async def test_user_stream_on_combined_path_and_expiry(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    key = await listen_key(http, sim)
    async with http.ws_connect(f"{sim.ws_url}/stream?streams=btcusdt@trade/{key}") as ws:
        await call(http, sim, "POST", "/api/v3/order", order(type="MARKET", quantity="0.01"))
        first = await recv(ws)
        assert first["stream"] == key and first["data"]["e"] == "executionReport"
        sim.expire_listen_keys()
        expired = await until(ws, lambda m: m["data"].get("e") == "listenKeyExpired")
        assert expired["data"]["listenKey"] == key
        sent = sim.user_events_sent
        await call(http, sim, "POST", "/api/v3/order", order(type="MARKET", quantity="0.01"))
        assert sim.user_events_sent == sent


async def test_user_stream_stall_fault(paused_sim: SimServer, http) -> None:  # noqa: F811
    key = await listen_key(http, paused_sim)
    async with http.ws_connect(f"{paused_sim.ws_url}/ws/{key}"):
        paused_sim.set_faults(user_stream_stall=True)
        await call(http, paused_sim, "POST", "/api/v3/order", order(type="MARKET", quantity="0.01"))
        assert paused_sim.user_events_sent == 0
        assert paused_sim.exchange.accepted_orders == 1


async def test_websocket_api_user_data_subscription(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim

    def signed(**params: Any) -> dict[str, Any]:
        payload = "&".join(f"{k}={params[k]}" for k in sorted(params))
        return {
            **params,
            "signature": hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest(),
        }

    async with http.ws_connect(f"{sim.ws_url}/ws-api/v3") as ws:
        bad = {**signed(apiKey=KEY, timestamp=int(time.time() * 1000)), "signature": "0" * 64}
        await ws.send_str(
            orjson.dumps({"id": "a", "method": "userDataStream.subscribe.signature", "params": bad}).decode()
        )
        assert (await recv(ws))["error"]["code"] == -1022
        good = signed(apiKey=KEY, timestamp=int(time.time() * 1000))
        await ws.send_str(
            orjson.dumps({"id": "b", "method": "userDataStream.subscribe.signature", "params": good}).decode()
        )
        assert await recv(ws) == {"id": "b", "status": 200, "result": {"subscriptionId": 0}}
        await call(
            http,
            sim,
            "POST",
            "/api/v3/order",
            order(type="MARKET", quantity="0.01", newClientOrderId="wsapi-1"),
        )
        event = await recv(ws)
        assert event["subscriptionId"] == 0 and event["event"]["e"] == "executionReport"
        assert event["event"]["c"] == "wsapi-1"
        await until(ws, lambda m: m.get("event", {}).get("X") == "FILLED")
        await ws.send_str('{"id":"c","method":"userDataStream.unsubscribe"}')
        assert await until(ws, lambda m: m.get("id") == "c") == {"id": "c", "status": 200, "result": {}}
        sent = sim.user_events_sent
        await call(http, sim, "POST", "/api/v3/order", order(type="MARKET", quantity="0.01"))
        assert sim.user_events_sent == sent and sim.exchange.listener is None
