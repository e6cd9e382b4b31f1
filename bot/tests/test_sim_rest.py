"""REST fidelity of the simulator: signatures over the raw query, reference data, weights, errors."""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import quote

import pytest
import yarl

from rampart_bot.sim.server import SimServer

from .test_sim_support import KEY, SECRET, call, http, order, paused_sim  # noqa: F401

pytestmark = pytest.mark.asyncio


async def test_signature_is_checked_over_the_percent_encoded_query(paused_sim: SimServer, http) -> None:  # noqa: F811
    # ':' is legal in a client order id; signed as sent (%3A) it must verify.
    params = order(
        type="LIMIT", timeInForce="GTC", quantity="0.01", price="29000.00", newClientOrderId="abc:def"
    )
    status, body, _ = await call(http, paused_sim, "POST", "/api/v3/order", params)
    assert status == 200, body
    assert body["clientOrderId"] == "abc:def"
    # Signing the decoded text while sending the encoded one is a different payload: refused.
    ts = int(time.time() * 1000)
    decoded = f"symbol=BTCUSDT&origClientOrderId=abc:def&timestamp={ts}"
    sig = hmac.new(SECRET.encode(), decoded.encode(), hashlib.sha256).hexdigest()
    sent = f"symbol=BTCUSDT&origClientOrderId={quote('abc:def', safe='')}&timestamp={ts}&signature={sig}"
    url = yarl.URL(f"{paused_sim.base_url}/api/v3/order?{sent}", encoded=True)
    async with http.get(url, headers={"X-MBX-APIKEY": KEY}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == -1022


async def test_signature_over_query_and_body_and_case_insensitive(paused_sim: SimServer, http) -> None:  # noqa: F811
    ts = int(time.time() * 1000)
    query = "symbol=BTCUSDT&side=BUY&type=LIMIT"
    body = f"timeInForce=GTC&quantity=0.01&price=29000.00&newClientOrderId=a%2Fb&timestamp={ts}"
    sig = hmac.new(SECRET.encode(), (query + body).encode(), hashlib.sha256).hexdigest().upper()
    url = yarl.URL(f"{paused_sim.base_url}/api/v3/order?{query}", encoded=True)
    headers = {"X-MBX-APIKEY": KEY, "Content-Type": "application/x-www-form-urlencoded"}
    async with http.post(url, data=f"{body}&signature={sig}", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["clientOrderId"] == "a/b"


async def test_duplicate_parameter_and_missing_key(paused_sim: SimServer, http) -> None:  # noqa: F811
    ts = int(time.time() * 1000)
    payload = f"symbol=BTCUSDT&symbol=ETHUSDT&timestamp={ts}"
    sig = hmac.new(SECRET.encode(), payload.encode(), hashlib.sha256).hexdigest()
    url = yarl.URL(f"{paused_sim.base_url}/api/v3/openOrders?{payload}&signature={sig}", encoded=True)
    async with http.get(url, headers={"X-MBX-APIKEY": KEY}) as resp:
        assert resp.status == 400 and (await resp.json())["code"] == -1101
    status, body, _ = await call(http, paused_sim, "GET", "/api/v3/account", key=None)
    assert (status, body["code"]) == (401, -2014)


async def test_unknown_paths_and_methods_answer_json(paused_sim: SimServer, http) -> None:  # noqa: F811
    for method, path in (("GET", "/api/v3/nope"), ("GET", "/whatever"), ("PATCH", "/api/v3/order")):
        async with http.request(method, f"{paused_sim.base_url}{path}") as resp:
            assert resp.status in (404, 405) and resp.content_type == "application/json"
            body = await resp.json()
            assert body["code"] == -1020 and body["msg"]


async def test_exchange_info_filters_symbols_and_carries_limits(paused_sim: SimServer, http) -> None:  # noqa: F811
    status, info, headers = await call(http, paused_sim, "GET", "/api/v3/exchangeInfo", signed=False)
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "20"
    assert abs(info["serverTime"] - time.time() * 1000) < 5000
    kinds = {(r["rateLimitType"], r["interval"], r["intervalNum"]) for r in info["rateLimits"]}
    assert ("REQUEST_WEIGHT", "MINUTE", 1) in kinds and ("ORDERS", "SECOND", 10) in kinds
    assert [s["symbol"] for s in info["symbols"]] == ["BTCUSDT", "ETHUSDT"]
    btc = info["symbols"][0]
    assert btc["baseAssetPrecision"] == 8 and btc["quotePrecision"] == 8
    assert btc["orderTypes"] == ["LIMIT", "LIMIT_MAKER", "MARKET"]
    filters = {f["filterType"]: f for f in btc["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.01000000"
    assert filters["LOT_SIZE"]["stepSize"] == "0.00001000"
    assert filters["NOTIONAL"]["minNotional"] == "5.00000000"
    status, one, _ = await call(
        http, paused_sim, "GET", "/api/v3/exchangeInfo", {"symbol": "ETHUSDT"}, signed=False
    )
    assert [s["symbol"] for s in one["symbols"]] == ["ETHUSDT"]
    status, some, _ = await call(
        http, paused_sim, "GET", "/api/v3/exchangeInfo", {"symbols": '["ETHUSDT"]'}, signed=False
    )
    assert [s["symbol"] for s in some["symbols"]] == ["ETHUSDT"]
    status, bad, _ = await call(
        http, paused_sim, "GET", "/api/v3/exchangeInfo", {"symbol": "XYZ"}, signed=False
    )
    assert (status, bad["code"]) == (400, -1121)
    status, bad, _ = await call(
        http, paused_sim, "GET", "/api/v3/exchangeInfo", {"symbols": "BTCUSDT"}, signed=False
    )
    assert (status, bad["code"]) == (400, -1100)


async def test_ticker_price_book_ticker_and_depth(paused_sim: SimServer, http) -> None:  # noqa: F811
    status, one, headers = await call(
        http, paused_sim, "GET", "/api/v3/ticker/price", {"symbol": "BTCUSDT"}, signed=False
    )
    assert status == 200 and one == {"symbol": "BTCUSDT", "price": "30000.00000000"}
    assert headers["X-MBX-USED-WEIGHT-1M"] == "2"
    status, rows, headers = await call(http, paused_sim, "GET", "/api/v3/ticker/price", signed=False)
    assert [r["symbol"] for r in rows] == ["BTCUSDT", "ETHUSDT"] and headers["X-MBX-USED-WEIGHT-1M"] == "6"
    # A trade moves the last price.
    await call(http, paused_sim, "POST", "/api/v3/order", order(type="MARKET", quantity="0.01"))
    status, one, _ = await call(
        http, paused_sim, "GET", "/api/v3/ticker/price", {"symbol": "BTCUSDT"}, signed=False
    )
    assert one["price"] == "30000.01000000"
    status, bt, _ = await call(
        http, paused_sim, "GET", "/api/v3/ticker/bookTicker", {"symbols": '["ETHUSDT"]'}, signed=False
    )
    assert [r["symbol"] for r in bt] == ["ETHUSDT"]
    status, book, headers = await call(
        http, paused_sim, "GET", "/api/v3/depth", {"symbol": "BTCUSDT", "limit": 3}, signed=False
    )
    assert status == 200 and book["bids"][0] == ["29999.99000000", "1.50000000"]
    assert [a[0] for a in book["asks"]] == ["30000.01000000", "30000.02000000", "30000.03000000"]
    assert isinstance(book["lastUpdateId"], int)
    status, bad, _ = await call(http, paused_sim, "GET", "/api/v3/depth", signed=False)
    assert (status, bad["code"]) == (400, -1102)


async def test_weight_header_and_429_past_the_limit(paused_sim: SimServer, http) -> None:  # noqa: F811
    paused_sim.weight_limit = 50
    status, _, headers = await call(http, paused_sim, "GET", "/api/v3/account")
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "20"
    status, _, headers = await call(
        http, paused_sim, "GET", "/api/v3/order", {"symbol": "BTCUSDT", "orderId": 9}
    )
    assert headers["X-MBX-USED-WEIGHT-1M"] == "24"
    status, _, headers = await call(http, paused_sim, "GET", "/api/v3/myTrades", {"symbol": "BTCUSDT"})
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "44"
    status, body, headers = await call(http, paused_sim, "GET", "/api/v3/account")
    assert status == 429 and body["code"] == -1003 and "50 request weight per 1 MINUTE" in body["msg"]
    assert 1 <= int(headers["Retry-After"]) <= 60


async def test_order_count_headers_and_orders_limit(paused_sim: SimServer, http) -> None:  # noqa: F811
    paused_sim.order_limits["10S"] = (10, 2)
    params = order(type="LIMIT", timeInForce="GTC", quantity="0.01", price="29000.00")
    _, _, headers = await call(http, paused_sim, "POST", "/api/v3/order", params)
    assert headers["X-MBX-ORDER-COUNT-10S"] == "1" and headers["X-MBX-ORDER-COUNT-1D"] == "1"
    await call(http, paused_sim, "POST", "/api/v3/order", params)
    status, body, headers = await call(http, paused_sim, "POST", "/api/v3/order", params)
    assert (status, body["code"]) == (429, -1015) and "Retry-After" in headers
    assert paused_sim.exchange.accepted_orders == 2


async def test_fault_injection_still_works(paused_sim: SimServer, http) -> None:  # noqa: F811
    paused_sim.set_faults(rate_limit_next=1, retry_after_s=7)
    status, body, headers = await call(http, paused_sim, "GET", "/api/v3/account")
    assert status == 429 and headers["Retry-After"] == "7"
    paused_sim.set_faults(order_5xx_after_accept_next=1)
    status, _, _ = await call(
        http, paused_sim, "POST", "/api/v3/order", order(type="MARKET", quantity="0.01")
    )
    assert status == 504 and paused_sim.exchange.accepted_orders == 1
    with pytest.raises(ValueError, match="needs a int"):
        paused_sim.set_faults(rate_limit_next=2, ban_next="x")
    assert paused_sim.faults.rate_limit_next == 0  # all or nothing
