"""Binance's official Python connector (`binance-connector`, test-only, pinned) against the simulator.

The strongest evidence of format fidelity we can get offline: the venue's own client library signs,
sends and parses everything here, exactly as it would against Binance Spot.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal
from typing import Any

import orjson
import pytest

from rampart_bot.sim.server import SimServer

from .test_sim_support import KEY, SECRET, paused_sim  # noqa: F401

spot = pytest.importorskip("binance.spot")
error = pytest.importorskip("binance.error")
ws_stream = pytest.importorskip("binance.websocket.spot.websocket_stream")


def client(sim: SimServer) -> Any:
    return spot.Spot(api_key=KEY, api_secret=SECRET, base_url=sim.base_url, timeout=5, show_limit_usage=True)


async def test_connector_trades_against_the_simulator(paused_sim: SimServer) -> None:  # noqa: F811
    c = client(paused_sim)
    run = asyncio.to_thread
    info = (await run(c.exchange_info, symbols=["BTCUSDT"]))["data"]
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT"]
    # A client order id with ':' (legal on Binance), signed by the connector over %3A.
    placed = await run(
        c.new_order,
        symbol="BTCUSDT",
        side="BUY",
        type="LIMIT",
        timeInForce="GTC",
        quantity=0.01,
        price=29000,
        newClientOrderId="abc:def",
    )
    assert placed["data"]["clientOrderId"] == "abc:def" and placed["data"]["status"] == "NEW"
    assert int(placed["limit_usage"]["x-mbx-used-weight-1m"]) > 0
    assert placed["limit_usage"]["x-mbx-order-count-10s"] == "1"
    with pytest.raises(error.ClientError) as dup:
        await run(
            c.new_order, symbol="BTCUSDT", side="BUY", type="LIMIT", timeInForce="GTC",
            quantity=0.01, price=29000, newClientOrderId="abc:def",
        )  # fmt: skip
    assert dup.value.error_code == -2010 and dup.value.error_message == "Duplicate order sent."
    queried = (await run(c.get_order, "BTCUSDT", origClientOrderId="abc:def"))["data"]
    assert queried["orderId"] == placed["data"]["orderId"]
    canceled = (await run(c.cancel_order, "BTCUSDT", origClientOrderId="abc:def"))["data"]
    assert canceled["status"] == "CANCELED" and canceled["origClientOrderId"] == "abc:def"
    market = (await run(c.new_order, symbol="BTCUSDT", side="BUY", type="MARKET", quoteOrderQty=100))["data"]
    assert market["price"] == "0.00000000" and market["fills"]
    assert Decimal(market["cummulativeQuoteQty"]) <= 100
    assert (await run(c.new_order_test, symbol="BTCUSDT", side="SELL", type="MARKET", quantity=0.01))[
        "data"
    ] == {}
    orders = (await run(c.get_orders, "BTCUSDT"))["data"]
    assert [o["status"] for o in orders] == ["CANCELED", "FILLED"]
    trades = (await run(c.my_trades, "BTCUSDT"))["data"]
    assert {t["id"] for t in trades} == {f["tradeId"] for f in market["fills"]}
    price = (await run(c.ticker_price, symbol="BTCUSDT"))["data"]
    assert price["price"] == market["fills"][-1]["price"]
    depth = (await run(c.depth, "BTCUSDT", limit=5))["data"]
    assert len(depth["bids"]) == 5
    with pytest.raises(error.ClientError) as tif:
        await run(c.new_order, symbol="BTCUSDT", side="BUY", type="LIMIT", quantity=0.01, price=29000)
    assert tif.value.error_code == -1102


async def test_connector_streams_market_and_user_data(paused_sim: SimServer) -> None:  # noqa: F811
    sim = paused_sim
    c = client(sim)
    key = (await asyncio.to_thread(c.new_listen_key))["data"]["listenKey"]
    got: list[dict[str, Any]] = []
    seen = threading.Event()

    def on_message(_: Any, raw: str) -> None:
        msg = orjson.loads(raw)
        got.append(msg)
        if msg.get("e") == "executionReport" and msg.get("X") == "FILLED":
            seen.set()

    # The connector's stream client opens the bare /ws path and SUBSCRIBEs.
    stream = await asyncio.to_thread(
        ws_stream.SpotWebsocketStreamClient, stream_url=sim.ws_url, on_message=on_message
    )
    try:
        await asyncio.to_thread(stream.trade, "btcusdt", id=1)
        await asyncio.to_thread(stream.user_data, key, id=2)
        for _ in range(100):
            if len([m for m in got if "result" in m]) >= 2:
                break
            await asyncio.sleep(0.02)
        assert [m for m in got if "result" in m] == [{"result": None, "id": 1}, {"result": None, "id": 2}]
        await sim.step("BTCUSDT")
        await asyncio.to_thread(c.new_order, symbol="BTCUSDT", side="SELL", type="MARKET", quantity=0.01)
        assert await asyncio.to_thread(seen.wait, 5)
        kinds = {m.get("e") for m in got}
        assert {"trade", "executionReport", "outboundAccountPosition"} <= kinds
    finally:
        await asyncio.to_thread(stream.stop)
    assert (await asyncio.to_thread(c.close_listen_key, key))["data"] == {}
