"""Regression tests for issue 13 (bot side): one section per defect, plus the new venue features.

Each defect test failed on the code before the fix (noted per test)."""

from __future__ import annotations

import asyncio
import logging
import time
from decimal import Decimal as D

import aiohttp
import msgspec
import orjson
import pytest
from aiohttp import web

from rampart_bot.adapters import venue_types
from rampart_bot.adapters.binance_rest import OrderNotFound, TransportError
from rampart_bot.adapters.binance_ws import Backoff, MarketDataClient, ParseStats
from rampart_bot.adapters.persistence import Store
from rampart_bot.core.model import OrderIntent, OrderStatus, OrderType, Side, TradingState
from rampart_bot.service.config import parse_config
from rampart_bot.service.engine import Engine
from rampart_bot.service.runtime import BotRuntime
from rampart_bot.sim.server import SimServer

from .conftest import OPERATOR_TOKEN, SECRETS, bot_config
from .test_faults import assert_invariants, market, place, wait_settled

SYM = "BTCUSDT"


# -- helpers -------------------------------------------------------------------------------------
class Spy:
    name = "spy"

    def __init__(self) -> None:
        self.books: list[D] = []
        self.trades: list[D] = []

    def on_book(self, book, view):  # type: ignore[no-untyped-def]
        self.books.append(book.mid)

    def on_trade(self, tape, view):  # type: ignore[no-untyped-def]
        self.trades.append(tape.last_price)


class NoRest:
    offset_ms = 0

    def weight_ratio(self) -> float:
        return 0.0


def offline_engine() -> tuple[Engine, Spy]:
    cfg = parse_config({"database": {"url": "sqlite://"}})
    store = Store(cfg.database_url)
    store.migrate()
    spy = Spy()
    return Engine(cfg, store, NoRest(), strategy=spy), spy  # type: ignore[arg-type]


def book(u: int, b: str, a: str) -> bytes:
    return orjson.dumps({"u": u, "s": SYM, "b": b, "B": "1", "a": a, "A": "1"})


def trade(t: int, p: str, m: object = True) -> bytes:
    return orjson.dumps({"e": "trade", "E": 1, "s": SYM, "t": t, "p": p, "q": "0.5", "T": 1, "m": m})


# -- 1. corrupt market data never reaches the strategy ------------------------------------------
def test_1_corrupt_values_are_refused_before_the_strategy() -> None:
    engine, spy = offline_engine()
    engine.on_raw(book(1, "30000.00", "30000.02"))
    engine.on_raw(trade(1, "30000.01"))
    assert len(spy.books) == 1 and len(spy.trades) == 1
    hostile = [
        book(2, "29999.99", "0"),  # ask 0: was accepted and answered with a BUY
        book(3, "0", "0"),
        book(4, "30000.02", "30000.00"),  # crossed
        book(5, "10000000000000000000", "10000000000000000001"),  # ~1e19
        book(6, "60000.00", "60000.02"),  # outside the band around the last good price
        trade(2, "99999999999999999999.99999999999999999999"),
        trade(3, "30000.01", m="true"),  # a string, was silently read as False
        trade(4, "0"),
    ]
    for raw in hostile:
        engine.on_raw(raw)
    assert len(spy.books) == 1 and len(spy.trades) == 1
    assert sum(engine.parse_stats.dropped.values()) == len(hostile)
    engine.on_raw(book(7, "30000.01", "30000.03"))  # the feed goes on
    assert len(spy.books) == 2


# -- 2. one message cannot freeze the book or the tape ------------------------------------------
@pytest.mark.parametrize("price", ["0.5\n", "0.5\r", " 0.5", "0.5 ", "-0.5", "5e-1", ""])
def test_1_a_rest_decimal_with_anything_around_it_is_refused(price: str) -> None:
    """The REST and user-data shapes take only a plain decimal string; a trailing newline once slipped
    through (the pattern ended in $, which also matches before a final newline)."""
    body = {"symbol": "BTCUSDT", "bidPrice": price, "bidQty": "1", "askPrice": "30000.01", "askQty": "1"}
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(orjson.dumps(body), type=venue_types.BookTickerRest)
    good = msgspec.json.decode(orjson.dumps({**body, "bidPrice": "29999.99"}),
                               type=venue_types.BookTickerRest)
    assert good.bidPrice == "29999.99"


def test_2_sequence_jumps_are_feed_faults_and_reconnect_resets_the_tape() -> None:
    engine, spy = offline_engine()
    engine.on_raw(book(100, "30000.00", "30000.02"))
    engine.on_raw(book(2**63 - 1, "30000.00", "30000.02"))  # was the new truth: froze the book
    engine.on_raw(book(101, "30000.01", "30000.03"))
    assert len(spy.books) == 2
    engine.on_raw(trade(50, "30000.01"))
    engine.on_raw(trade(2**64 - 1, "30000.01"))  # not a 64-bit signed id: refused at decode
    engine.on_raw(trade(2**63 - 1, "30000.01"))  # a jump: refused by the tape
    engine.on_raw(trade(51, "30000.02"))
    assert len(spy.trades) == 2
    assert engine.parse_stats.dropped["seq_jump"] == 2
    # After a reconnect the venue's ids start afresh: the tape must not stay frozen on old ids.
    asyncio.run(engine._on_connected())
    engine.on_raw(trade(7, "30000.02"))
    assert len(spy.trades) == 3


def test_2_a_poisoned_baseline_recovers_after_a_few_frames() -> None:
    from rampart_bot.core.market import REBASELINE_AFTER

    engine, spy = offline_engine()
    engine.on_raw(book(2**62, "30000.00", "30000.02"))  # first frame after a reset is the baseline
    for u in range(1, REBASELINE_AFTER + 2):
        engine.on_raw(book(u, "30000.00", "30000.02"))
    assert len(spy.books) >= 2


# -- 3. reconnect storm, connection cap, bounded close ------------------------------------------
async def _serve(handler) -> tuple[web.AppRunner, str]:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_get("/stream", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"ws://127.0.0.1:{port}"


@pytest.mark.asyncio
async def test_3_ack_then_close_does_not_reset_backoff() -> None:
    connects = 0

    async def ack_and_close(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        connects += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        await ws.send_str('{"result":null,"id":1}')  # any text frame used to reset the backoff
        await ws.close()
        return ws

    runner, url = await _serve(ack_and_close)
    try:
        md = MarketDataClient(url, [SYM], lambda raw: None, backoff=Backoff(0.05, 0.4), healthy_after_s=30)
        task = asyncio.create_task(md.run())
        await asyncio.sleep(1.5)
        md._stopping = True
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await runner.cleanup()
    # Exponential: 0.025-0.05, 0.05-0.1, 0.1-0.2, 0.2-0.4, ... -> at most ~8 in 1.5 s (was ~40).
    assert 2 <= connects <= 10, connects


@pytest.mark.asyncio
async def test_3_connection_attempts_are_capped() -> None:
    from rampart_bot.adapters.binance_ws import ConnectLimiter

    connects = 0

    async def close_now(request: web.Request) -> web.WebSocketResponse:
        nonlocal connects
        connects += 1
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    runner, url = await _serve(close_now)
    try:
        md = MarketDataClient(
            url, [SYM], lambda raw: None, backoff=Backoff(0.001, 0.002),
            limiter=ConnectLimiter(3, 300.0),
        )  # fmt: skip
        task = asyncio.create_task(md.run())
        await asyncio.sleep(0.8)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    finally:
        await runner.cleanup()
    assert connects == 3


@pytest.mark.asyncio
async def test_3_close_is_bounded_when_the_peer_never_answers() -> None:
    async def stream_forever(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoclose=False)
        await ws.prepare(request)
        frame = book(1, "30000.00", "30000.02").decode()
        try:
            while True:  # never reads, so never answers our close frame
                await ws.send_str(frame)
                await asyncio.sleep(0.001)
        except (ConnectionError, RuntimeError):
            pass
        return ws

    runner, url = await _serve(stream_forever)
    try:
        md = MarketDataClient(url, [SYM], lambda raw: None, close_timeout_s=0.3)
        task = asyncio.create_task(md.run())
        while not md.frames:
            await asyncio.sleep(0.01)
        t0 = time.monotonic()
        await asyncio.wait_for(md.stop(), 5)
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - t0 < 3
    finally:
        await runner.cleanup()


# -- 4. every dropped frame is logged (rate-limited) with reason and sample ----------------------
def test_4_drops_are_logged_rate_limited_with_reason_and_truncated_sample(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from rampart_bot.adapters.binance_ws import parse_market_message

    now = [0.0]
    stats = ParseStats(clock=lambda: now[0], shared_log_limit=False)
    bad = '{"u":1,"s":"BTCUSDT","b":"x","B":"1","a":"2","A":"1","pad":"' + "z" * 500 + '"}'
    with caplog.at_level(logging.WARNING, logger="rampart_bot.adapters.binance_ws"):
        for _ in range(50):
            parse_market_message(bad, stats)
        now[0] = 11.0
        parse_market_message(bad, stats)
    lines = [r for r in caplog.records if r.getMessage() == "market data frame dropped"]
    assert stats.dropped == {"bad_field": 51}
    assert len(lines) == 2
    assert lines[0].reason == "bad_field" and lines[0].sample.startswith('{"u":1')  # type: ignore[attr-defined]
    assert len(lines[0].sample) <= 170  # type: ignore[attr-defined]
    assert lines[1].suppressed_since_last == 49  # type: ignore[attr-defined]


# -- 5. the kill switch is fail-safe ------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status"),
    [(b"[1]", 400), (b'"stop"', 400), (b"not json", 400), (b"x" * 100_000, 413), (b'{"reason": 5}', 400)],
)
@pytest.mark.asyncio
async def test_5_any_authenticated_kill_halts_whatever_the_body(
    bot: BotRuntime, sim: SimServer, body: bytes, status: int
) -> None:
    url = f"http://127.0.0.1:{bot.port}/api/v1/kill"
    async with aiohttp.ClientSession() as http:
        headers = {"Authorization": f"Bearer {OPERATOR_TOKEN}", "Content-Type": "application/json"}
        async with http.post(url, data=body, headers=headers) as resp:
            assert resp.status == status
            answer = await resp.json()
    assert answer["state"] == "HALTED" and answer["error"]
    assert bot.engine.risk.state is TradingState.HALTED


@pytest.mark.asyncio
async def test_5_bearer_scheme_is_case_insensitive(bot: BotRuntime, sim: SimServer) -> None:
    url = f"http://127.0.0.1:{bot.port}/api/v1/state"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Authorization": f"bearer {OPERATOR_TOKEN}"}) as resp:
            assert resp.status == 200
        async with http.get(url, headers={"Authorization": f"Basic {OPERATOR_TOKEN}"}) as resp:
            assert resp.status == 401


# -- 6. a clean restart reconciles without a false balance mismatch ------------------------------
@pytest.mark.asyncio
async def test_6_clean_restart_has_no_balance_mismatch(sim: SimServer, bot_db_url: str) -> None:
    cfg = bot_config(sim, bot_db_url)
    first = await BotRuntime.start(cfg, SECRETS, http_port=0)
    await first.engine.wait_for(first.engine.ready)
    place(first, market())
    place(first, market(Side.SELL, "0.005"))
    await wait_settled(first, sim)
    await first.stop()
    second = await BotRuntime.start(bot_config(sim, bot_db_url), SECRETS, http_port=0)
    try:
        await second.engine.wait_for(second.engine.ready)
        assert "balance" not in second.engine.metrics.mismatches
    finally:
        await second.stop()


# -- 7. an unknown outcome is resolved by query before any resend --------------------------------
@pytest.mark.asyncio
async def test_7_lagging_query_never_causes_a_resend(bot: BotRuntime, sim: SimServer) -> None:
    real_query = bot.engine.rest.query_order
    lagging = [2]

    async def lag(symbol: str, cid: str):  # type: ignore[no-untyped-def]
        if lagging[0]:
            lagging[0] -= 1
            raise OrderNotFound(400, -2013, "Order does not exist.")  # the venue has not caught up
        return await real_query(symbol, cid)

    bot.engine.rest.query_order = lag  # type: ignore[method-assign]
    sim.set_faults(order_5xx_after_accept_next=1)
    order = place(bot, market())
    await wait_settled(bot, sim)
    assert order.status is OrderStatus.FILLED and order.submit_attempts == 1
    assert sim.exchange.accepted_orders == 1  # was 2: the resend created a second order
    assert_invariants(bot, sim)


@pytest.mark.asyncio
async def test_7_failing_query_leaves_order_unknown_never_resent(bot: BotRuntime, sim: SimServer) -> None:
    real_query = bot.engine.rest.query_order

    async def down(symbol: str, cid: str):  # type: ignore[no-untyped-def]
        raise TransportError("connection reset")

    bot.engine.rest.query_order = down  # type: ignore[method-assign]
    sim.set_faults(order_5xx_after_accept_next=1)
    order = place(bot, market())
    await bot.engine.wait_for(lambda: bot.engine.metrics.venue_errors.get("query_failed", 0) >= 5)
    posts = [p for m, path, p in sim.request_log if m == "POST" and path == "/api/v3/order"]
    assert len(posts) == 1 and order.submit_attempts == 1
    bot.engine.rest.query_order = real_query  # type: ignore[method-assign]
    await wait_settled(bot, sim)
    assert order.status is OrderStatus.FILLED
    assert sim.exchange.accepted_orders == 1
    assert_invariants(bot, sim)


# -- new venue features --------------------------------------------------------------------------
@pytest.mark.asyncio
async def test_fills_arrive_on_the_user_data_stream(sim: SimServer, bot_db_url: str) -> None:
    cfg = bot_config(sim, bot_db_url, fill_poll_interval_s=30.0)  # polling far too slow to matter
    cfg.venue.order_resp_type = "ACK"  # no fills in the order answer either
    bot = await BotRuntime.start(cfg, SECRETS, http_port=0)
    try:
        await bot.engine.wait_for(lambda: bot.engine.ready() and bot.engine.user_stream.connected)
        order = place(bot, market())
        await bot.engine.wait_for(lambda: order.status is OrderStatus.FILLED, timeout=5)
        await bot.engine.wait_for(lambda: bot.engine.tracker.position(SYM) == D("0.01"), timeout=5)
        assert bot.engine.user_stream.events >= 1
        assert bot.engine.venue_balances  # outboundAccountPosition
    finally:
        await bot.stop()


@pytest.mark.asyncio
async def test_rules_come_from_exchange_info_and_config_overrides(sim: SimServer, bot_db_url: str) -> None:
    cfg = bot_config(sim, bot_db_url)
    cfg.symbol_overrides = {SYM: {"max_qty": D("0.5")}}
    sim.exchange.symbols[SYM].step_size = D("0.001")
    bot = await BotRuntime.start(cfg, SECRETS, http_port=0)
    try:
        await bot.engine.wait_for(bot.engine.ready)
        rules = bot.engine.risk.rules[SYM]
        assert rules.step_size == D("0.001")  # from the venue (config default was 0.00001)
        assert rules.max_qty == D("0.5")  # the config override wins
        assert bot.engine.submit_intent(market(qty="0.0105")) is None
        assert bot.engine.metrics.rejects["qty_precision"] == 1
    finally:
        await bot.stop()


@pytest.mark.asyncio
async def test_request_weight_slows_down_before_a_429(bot: BotRuntime, sim: SimServer) -> None:
    rest = bot.engine.rest
    assert rest.used_weight > 0  # read from X-MBX-USED-WEIGHT-1M
    rest.used_weight = int(rest.weight_limit * 0.95)
    assert bot.engine.submit_intent(market()) is None
    assert bot.engine.metrics.rejects["weight_budget"] == 1


@pytest.mark.asyncio
async def test_order_types_ioc_fok_limit_maker_and_quote_qty(bot: BotRuntime, sim: SimServer) -> None:
    from rampart_bot.core.model import TimeInForce

    sim.paused = True
    bid, ask = sim.exchange.top(SYM)
    far = (bid * D("0.9")).quantize(D("0.01"))
    ioc = place(bot, OrderIntent(SYM, Side.BUY, D("0.01"), far, OrderType.LIMIT, TimeInForce.IOC))
    fok = place(bot, OrderIntent(SYM, Side.BUY, D("0.01"), far, OrderType.LIMIT, TimeInForce.FOK))
    maker_taking = place(bot, OrderIntent(SYM, Side.BUY, D("0.01"), ask, OrderType.LIMIT_MAKER))
    by_quote = place(bot, OrderIntent(SYM, Side.BUY, D("0.01"), None, OrderType.MARKET, quote_qty=D("100")))
    await wait_settled(bot, sim)
    assert ioc.status is OrderStatus.EXPIRED and fok.status is OrderStatus.EXPIRED
    assert maker_taking.status is OrderStatus.REJECTED
    assert by_quote.status is OrderStatus.FILLED and by_quote.executed_qty > 0
    assert_invariants(bot, sim)
