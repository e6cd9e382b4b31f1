"""Order rules of the simulator, as Binance Spot documents them (issue 13, items 7 and 8)."""

from __future__ import annotations

from decimal import Decimal

import aiohttp
import pytest

from rampart_bot.sim.server import SimServer

from .test_sim_support import call, http, order, paused_sim  # noqa: F401

pytestmark = pytest.mark.asyncio
BID, ASK = "29999.99", "30000.01"


async def place(session: aiohttp.ClientSession, sim: SimServer, **params: object) -> tuple[int, dict]:
    status, body, _ = await call(session, sim, "POST", "/api/v3/order", params)
    return status, body


async def test_client_order_id_unique_only_among_open_orders(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    rest = order(type="LIMIT", timeInForce="GTC", quantity="0.01", price="29000.00", newClientOrderId="dup-1")
    status, first = await place(http, sim, **rest)
    assert status == 200 and first["status"] == "NEW"
    status, body = await place(http, sim, **rest)
    assert (status, body) == (400, {"code": -2010, "msg": "Duplicate order sent."})
    status, _, _ = await call(
        http, sim, "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "dup-1"}
    )
    assert status == 200
    # Closed: the same id now names a NEW order, as on Binance.
    status, second = await place(http, sim, **rest)
    assert status == 200 and second["orderId"] != first["orderId"]
    assert sim.exchange.accepted_orders == 2
    # A filled order frees its id too.
    taker = order(type="MARKET", quantity="0.01", newClientOrderId="dup-2")
    status, filled = await place(http, sim, **taker)
    assert filled["status"] == "FILLED"
    status, again = await place(http, sim, **taker)
    assert status == 200 and again["orderId"] != filled["orderId"]
    # A query by origClientOrderId finds the newest order holding the id.
    status, found, _ = await call(
        http, sim, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "origClientOrderId": "dup-1"}
    )
    assert found["orderId"] == second["orderId"] and found["status"] == "NEW"


async def test_limit_needs_time_in_force(paused_sim: SimServer, http) -> None:  # noqa: F811
    status, body = await place(http, paused_sim, **order(type="LIMIT", quantity="0.01", price="29000.00"))
    assert status == 400 and body["code"] == -1102 and "timeInForce" in body["msg"]
    status, body = await place(
        http, paused_sim, **order(type="LIMIT", timeInForce="GTD", quantity="0.01", price="29000.00")
    )
    assert (status, body["code"]) == (400, -1115)
    assert paused_sim.exchange.accepted_orders == 0


@pytest.mark.parametrize("tif", ["IOC", "FOK"])
async def test_ioc_fok_that_cannot_trade_expire(paused_sim: SimServer, http, tif: str) -> None:  # noqa: F811
    status, body = await place(
        http, paused_sim, **order(type="LIMIT", timeInForce=tif, quantity="0.01", price="29000.00")
    )
    assert status == 200 and body["status"] == "EXPIRED" and body["executedQty"] == "0.00000000"
    assert body["fills"] == []
    assert not paused_sim.exchange.open["BTCUSDT"]
    # Nothing stays locked.
    assert paused_sim.exchange.balances["USDT"][1] == 0


async def test_fok_is_all_or_nothing_and_ioc_keeps_the_part_it_got(paused_sim: SimServer, http) -> None:  # noqa: F811
    # Up to the ask there is 1.5 on offer: 2 at the ask cannot fill completely.
    status, fok = await place(
        http, paused_sim, **order(type="LIMIT", timeInForce="FOK", quantity="2", price=ASK)
    )
    assert fok["status"] == "EXPIRED" and fok["fills"] == []
    status, ioc = await place(
        http, paused_sim, **order(type="LIMIT", timeInForce="IOC", quantity="2", price=ASK)
    )
    assert ioc["status"] == "EXPIRED" and ioc["executedQty"] == "1.50000000"
    assert [(f["price"], f["qty"]) for f in ioc["fills"]] == [("30000.01000000", "1.50000000")]
    ex = paused_sim.exchange
    assert ex.balances["USDT"][1] == 0 and ex.balances["BTC"][0] == Decimal("11.5")


async def test_taker_walks_the_book_and_gtc_rests_the_remainder(paused_sim: SimServer, http) -> None:  # noqa: F811
    status, body = await place(
        http, paused_sim, **order(type="LIMIT", timeInForce="GTC", quantity="4", price="30000.02")
    )
    assert body["status"] == "PARTIALLY_FILLED" and body["executedQty"] == "3.00000000"
    assert [f["price"] for f in body["fills"]] == ["30000.01000000", "30000.02000000"]
    assert list(paused_sim.exchange.open["BTCUSDT"]) == [body["orderId"]]


async def test_limit_maker_rejected_when_it_would_take(paused_sim: SimServer, http) -> None:  # noqa: F811
    status, body = await place(http, paused_sim, **order(type="LIMIT_MAKER", quantity="0.01", price=ASK))
    assert (status, body) == (400, {"code": -2010, "msg": "Order would immediately match and take."})
    status, body = await place(http, paused_sim, **order(type="LIMIT_MAKER", quantity="0.01", price=BID))
    # LIMIT_MAKER answers ACK unless asked otherwise.
    assert status == 200 and set(body) == {
        "symbol",
        "orderId",
        "orderListId",
        "clientOrderId",
        "transactTime",
    }
    status, body = await place(
        http, paused_sim, **order(type="LIMIT_MAKER", timeInForce="GTC", quantity="0.01", price=BID)
    )
    assert (status, body["code"]) == (400, -1106)


async def test_market_by_quantity_reports_zero_price_and_fills(paused_sim: SimServer, http) -> None:  # noqa: F811
    status, body = await place(http, paused_sim, **order(side="SELL", type="MARKET", quantity="2"))
    assert status == 200 and body["status"] == "FILLED" and body["type"] == "MARKET"
    assert body["price"] == "0.00000000"
    assert [(f["price"], f["qty"]) for f in body["fills"]] == [
        ("29999.99000000", "1.50000000"),
        ("29999.98000000", "0.50000000"),
    ]
    assert all(isinstance(f["tradeId"], int) for f in body["fills"])
    assert (
        Decimal(body["cummulativeQuoteQty"]) == Decimal("29999.99") * Decimal("1.5") + Decimal("29999.98") / 2
    )
    status, queried, _ = await call(
        http, paused_sim, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": body["orderId"]}
    )
    assert queried["price"] == "0.00000000"


async def test_market_by_quote_order_qty(paused_sim: SimServer, http) -> None:  # noqa: F811
    status, body = await place(http, paused_sim, **order(type="MARKET", quoteOrderQty="1000"))
    assert status == 200 and body["status"] == "FILLED"
    assert body["origQuoteOrderQty"] == "1000.00000000"
    assert body["executedQty"] == "0.03333000"  # 1000 / 30000.01, rounded down to the 0.00001 step
    assert Decimal(body["cummulativeQuoteQty"]) <= 1000
    status, body = await place(http, paused_sim, **order(type="MARKET", quoteOrderQty="1000", quantity="0.1"))
    assert (status, body["code"]) == (400, -1106)
    status, body = await place(http, paused_sim, **order(type="MARKET"))
    assert (status, body["code"]) == (400, -1102)
    status, body = await place(http, paused_sim, **order(type="MARKET", quantity="0.1", price="30000"))
    assert (status, body["code"]) == (400, -1106)


ACK = {"symbol", "orderId", "orderListId", "clientOrderId", "transactTime"}
RESULT = ACK | {
    "price",
    "origQty",
    "executedQty",
    "origQuoteOrderQty",
    "cummulativeQuoteQty",
    "status",
    "timeInForce",
    "type",
    "side",
    "workingTime",
    "selfTradePreventionMode",
}
FULL = RESULT | {"fills"}


@pytest.mark.parametrize(
    ("params", "keys"),
    [
        ({"type": "LIMIT", "timeInForce": "GTC", "price": "29000.00"}, FULL),  # default for LIMIT
        ({"type": "MARKET"}, FULL),  # default for MARKET
        ({"type": "LIMIT", "timeInForce": "GTC", "price": "29000.00", "newOrderRespType": "RESULT"}, RESULT),
        ({"type": "MARKET", "newOrderRespType": "ACK"}, ACK),
    ],
)
async def test_new_order_resp_type(paused_sim: SimServer, http, params: dict, keys: set) -> None:  # noqa: F811
    status, body = await place(http, paused_sim, **order(quantity="0.01", **params))
    assert status == 200 and set(body) == keys


async def test_bad_values_are_refused_with_binance_codes(paused_sim: SimServer, http) -> None:  # noqa: F811
    base = order(type="LIMIT", timeInForce="GTC", quantity="0.01", price="29000.00")
    cases = [
        ({**base, "quantity": "1e-2"}, -1100),
        ({**base, "quantity": "-1"}, -1100),
        ({**base, "price": "29000.001"}, -1013),
        ({**base, "quantity": "0.000001"}, -1013),
        ({**base, "quantity": "0.0001", "price": "100.00"}, -1013),  # notional 0.01 < 5
        ({**base, "newClientOrderId": "has space"}, -1100),
        ({**base, "newOrderRespType": "ALL"}, -1100),
        ({**base, "type": "STOP_LOSS"}, -2010),
        ({**base, "type": "BOGUS"}, -1116),
        ({**base, "symbol": "NOPE"}, -1121),
        ({**base, "quantity": "100"}, -2010),  # 100 BTC at 29000 > the account's USDT
    ]
    for params, code in cases:
        status, body = await place(http, paused_sim, **params)
        assert (status, body["code"]) == (400, code), params
    assert paused_sim.exchange.accepted_orders == 0


async def test_all_orders_and_order_test(paused_sim: SimServer, http) -> None:  # noqa: F811
    sim = paused_sim
    for price in ("29000.00", "29001.00", "29002.00"):
        await place(http, sim, **order(type="LIMIT", timeInForce="GTC", quantity="0.01", price=price))
    await call(http, sim, "DELETE", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 1})
    status, rows, headers = await call(http, sim, "GET", "/api/v3/allOrders", {"symbol": "BTCUSDT"})
    assert status == 200 and [(r["orderId"], r["status"]) for r in rows] == [
        (1, "CANCELED"),
        (2, "NEW"),
        (3, "NEW"),
    ]
    status, rows, _ = await call(
        http, sim, "GET", "/api/v3/allOrders", {"symbol": "BTCUSDT", "orderId": 2, "limit": 1}
    )
    assert [r["orderId"] for r in rows] == [2]
    status, rows, _ = await call(http, sim, "GET", "/api/v3/allOrders", {"symbol": "BTCUSDT", "limit": 2})
    assert [r["orderId"] for r in rows] == [2, 3]
    # order/test validates but never places.
    test = order(type="LIMIT", timeInForce="GTC", quantity="0.01", price="29000.00")
    status, body, _ = await call(http, sim, "POST", "/api/v3/order/test", test)
    assert (status, body) == (200, {})
    status, body, _ = await call(http, sim, "POST", "/api/v3/order/test", {**test, "timeInForce": ""})
    assert (status, body["code"]) == (400, -1102)
    status, body, _ = await call(
        http, sim, "POST", "/api/v3/order/test", {**test, "computeCommissionRates": "true"}
    )
    assert status == 200 and "standardCommissionForOrder" in body
    assert sim.exchange.accepted_orders == 3


async def test_cancel_reply_names_cancel_id_and_original(paused_sim: SimServer, http) -> None:  # noqa: F811
    await place(
        http,
        paused_sim,
        **order(
            type="LIMIT", timeInForce="GTC", quantity="0.01", price="29000.00", newClientOrderId="keep-me"
        ),
    )
    status, body, _ = await call(
        http,
        paused_sim,
        "DELETE",
        "/api/v3/order",
        {"symbol": "BTCUSDT", "origClientOrderId": "keep-me", "newClientOrderId": "cx-1"},
    )
    assert status == 200 and body["status"] == "CANCELED"
    assert body["origClientOrderId"] == "keep-me" and body["clientOrderId"] == "cx-1"
    assert paused_sim.exchange.balances["USDT"][1] == 0
