from __future__ import annotations

from decimal import Decimal as D
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from rampart_bot.adapters.binance_rest import (
    BinanceRest,
    ClockSkew,
    OrderNotFound,
    VenueError,
    encode_query,
    fmt_decimal,
    sign,
)
from rampart_bot.adapters.secrets import Secret
from rampart_bot.sim.server import SimServer

from .conftest import API_KEY, API_SECRET


def test_binance_published_signature_example() -> None:
    secret = b"NhqPtmdSJYdKjVHjA7PZj4Mge3R5YNiP1e3UZjInClVN65XAbvqqM6A7H5fATj0j"
    payload = (
        "symbol=LTCBTC&side=BUY&type=LIMIT&timeInForce=GTC&quantity=1&price=0.1"
        "&recvWindow=5000&timestamp=1499827319559"
    )
    assert sign(secret, payload) == "c8db56825ae71d6d79447849e617115f4a920fa2acdcab2b053c4b2838bd6b71"


def test_encode_query_is_urlencode() -> None:
    cases: list[dict[str, Any]] = [
        {"symbol": "BTCUSDT", "side": "BUY", "newClientOrderId": "rb-18f3_a.b~c", "quantity": D("0.001")},
        {"newClientOrderId": "abc:def", "symbol": "BTCUSDT"},  # Binance-legal id that must be escaped
        {"q": "a b&c=d/é", "n": 5, "flag": True},
        {"bytes": b"x y", "empty": ""},
        {"k y": "v", 7: "int key"},
        {},
    ]
    for params in cases:
        assert encode_query(params) == urlencode(params)


def test_fmt_decimal_has_no_exponent() -> None:
    from decimal import Decimal

    assert fmt_decimal(Decimal("1E-5")) == "0.00001"
    assert fmt_decimal(Decimal("30000.10")) == "30000.1"
    assert fmt_decimal(Decimal("3E+4")) == "30000"


@pytest.mark.asyncio
async def test_signed_requests_accepted_and_bad_signature_refused(sim: SimServer) -> None:
    async with aiohttp.ClientSession() as session:
        good = BinanceRest(session, sim.base_url, Secret(API_KEY), Secret(API_SECRET))
        account = await good.account()
        assert any(b["asset"] == "USDT" for b in account["balances"])
        bad = BinanceRest(session, sim.base_url, Secret(API_KEY), Secret("wrong"))
        with pytest.raises(VenueError) as err:
            await bad.account()
        assert err.value.code == -1022


@pytest.mark.asyncio
async def test_clock_skew_is_corrected_by_resync(sim: SimServer) -> None:
    sim.set_faults(clock_skew_ms=120_000)  # venue clock two minutes ahead
    async with aiohttp.ClientSession() as session:
        rest = BinanceRest(session, sim.base_url, Secret(API_KEY), Secret(API_SECRET))
        # First request is refused with -1021, the client resyncs its offset and retries once.
        await rest.account()
        assert abs(rest.offset_ms - 120_000) < 1000


@pytest.mark.asyncio
async def test_clock_skew_error_mapped_when_resync_impossible(sim: SimServer) -> None:
    async with aiohttp.ClientSession() as session:
        rest = BinanceRest(session, sim.base_url, Secret(API_KEY), Secret(API_SECRET))
        rest.offset_ms = -300_000

        async def no_sync() -> int:
            return rest.offset_ms

        rest.sync_time = no_sync  # type: ignore[method-assign]
        with pytest.raises(ClockSkew):
            await rest.account()


@pytest.mark.asyncio
async def test_query_unknown_order_maps_to_not_found(sim: SimServer) -> None:
    async with aiohttp.ClientSession() as session:
        rest = BinanceRest(session, sim.base_url, Secret(API_KEY), Secret(API_SECRET))
        with pytest.raises(OrderNotFound):
            await rest.query_order("BTCUSDT", "nope")
        # cancel-all with nothing open is a no-op for us (-2011 swallowed)
        assert await rest.cancel_all("BTCUSDT") == []


@pytest.mark.asyncio
async def test_rate_limit_and_ban_block_sending_until_retry_after(sim: SimServer) -> None:
    from rampart_bot.adapters.binance_rest import IpBanned, RateLimited

    async with aiohttp.ClientSession() as session:
        rest = BinanceRest(session, sim.base_url, Secret(API_KEY), Secret(API_SECRET))
        sim.set_faults(ban_next=1, retry_after_s=120)
        with pytest.raises(IpBanned):
            await rest.account()
        sent = rest.request_count
        with pytest.raises(IpBanned):  # refused locally: a banned client must not keep knocking
            await rest.account()
        assert rest.request_count == sent
        rest.blocked_until = 0
        sim.set_faults(rate_limit_next=1, retry_after_s=120)
        with pytest.raises(RateLimited) as err:
            await rest.account()
        assert not isinstance(err.value, IpBanned) and err.value.retry_after_s == 120
