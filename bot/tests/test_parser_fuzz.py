"""Malformed, truncated, wrong-typed and huge frames never crash and never reach the strategy."""

from __future__ import annotations

from decimal import Decimal

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rampart_bot.adapters.binance_ws import (
    MAX_MESSAGE_BYTES,
    SERVER_SHUTDOWN,
    ParseStats,
    SubscribeAck,
    parse_market_message,
)
from rampart_bot.core.model import BookTicker, Trade

TRADE = {"e": "trade", "E": 1672515782136, "s": "BNBBTC", "t": 12345, "p": "0.001", "q": "100",
         "T": 1672515782136, "m": True, "M": True}  # fmt: skip
BOOK = {"u": 400900217, "s": "BNBUSDT", "b": "25.35190000", "B": "31.21000000", "a": "25.36520000",
        "A": "40.66000000"}  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=20,
)


def test_reference_messages_parse() -> None:
    stats = ParseStats()
    trade = parse_market_message(orjson.dumps(TRADE), stats)
    assert isinstance(trade, Trade)
    assert trade.price == Decimal("0.001") and trade.trade_id == 12345 and trade.buyer_is_maker
    book = parse_market_message(orjson.dumps({"stream": "bnbusdt@bookTicker", "data": BOOK}), stats)
    assert isinstance(book, BookTicker) and book.ask == Decimal("25.36520000")
    assert parse_market_message('{"e":"serverShutdown","E":1}', stats) is SERVER_SHUTDOWN
    assert isinstance(parse_market_message('{"result":null,"id":1}', stats), SubscribeAck)
    assert stats.dropped == {}


def _is_valid_event(result: object) -> bool:
    return (
        result is None or isinstance(result, (Trade, BookTicker, SubscribeAck)) or result is SERVER_SHUTDOWN
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_never_crash(raw: bytes) -> None:
    stats = ParseStats()
    assert _is_valid_event(parse_market_message(raw, stats))


@settings(max_examples=300)
@given(json_values)
def test_random_json_never_crash(value: object) -> None:
    stats = ParseStats()
    result = parse_market_message(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS), stats)
    assert _is_valid_event(result)


@settings(max_examples=400)
@given(
    base=st.sampled_from([TRADE, BOOK]),
    key=st.sampled_from(["s", "t", "p", "q", "T", "u", "b", "B", "a", "A", "e"]),
    value=json_values,
    wrap=st.booleans(),
)
def test_wrong_typed_fields_are_dropped_not_passed_on(
    base: dict, key: str, value: object, wrap: bool
) -> None:
    msg = dict(base)
    if key not in msg:
        return
    msg[key] = value
    if wrap:
        msg = {"stream": "x@trade", "data": msg}
    stats = ParseStats()
    result = parse_market_message(orjson.dumps(msg, option=orjson.OPT_NON_STR_KEYS), stats)
    if isinstance(result, Trade):
        # Only accepted if every field is still well-typed.
        assert isinstance(result.price, Decimal) and result.price.is_finite() and result.price >= 0
        assert type(result.trade_id) is int
    elif isinstance(result, BookTicker):
        assert all(isinstance(v, Decimal) and v.is_finite() for v in (result.bid, result.ask))
    else:
        assert result is None or result is SERVER_SHUTDOWN or isinstance(result, SubscribeAck)
        if result is None:
            assert sum(stats.dropped.values()) == 1


@settings(max_examples=200)
@given(cut=st.integers(min_value=0, max_value=150), which=st.sampled_from([TRADE, BOOK]))
def test_truncated_messages_are_dropped(cut: int, which: dict) -> None:
    raw = orjson.dumps(which)
    if cut >= len(raw):
        return
    stats = ParseStats()
    assert parse_market_message(raw[:cut], stats) is None
    assert sum(stats.dropped.values()) == 1


def test_huge_and_hostile_messages_are_dropped() -> None:
    stats = ParseStats()
    huge = orjson.dumps({**TRADE, "pad": "x" * MAX_MESSAGE_BYTES})
    assert parse_market_message(huge, stats) is None
    assert stats.dropped["too_large"] == 1
    for bad in ("NaN", "Infinity", "-1", "1e999999", "9" * 100):
        assert parse_market_message(orjson.dumps({**TRADE, "p": bad}), stats) is None
    assert parse_market_message(orjson.dumps({**TRADE, "t": True}), stats) is None
    assert parse_market_message("[" * 10000, stats) is None


@pytest.mark.asyncio
async def test_corrupt_frames_counted_in_engine_and_strategy_never_sees_them() -> None:
    """Through the engine's real dispatch: corrupt frames are counted, the strategy gets nothing."""
    from rampart_bot.adapters.persistence import Store
    from rampart_bot.adapters.secrets import Secret
    from rampart_bot.service.config import parse_config
    from rampart_bot.service.engine import Engine

    seen: list[object] = []

    class Spy:
        name = "spy"

        def on_book(self, book, view):  # type: ignore[no-untyped-def]
            seen.append(book.mid)

        def on_trade(self, tape, view):  # type: ignore[no-untyped-def]
            seen.append(tape.last_price)

    cfg = parse_config({"database": {"url": "sqlite://"}})
    store = Store(cfg.database_url)
    store.migrate()

    class NoRest:
        offset_ms = 0

    engine = Engine(cfg, store, NoRest(), strategy=Spy())  # type: ignore[arg-type]
    for raw in ('{"u":1,"s":"BTCUSDT","b":"x","B":"1","a":"2","A":"1"}', "{", '{"e":"trade"}', "null"):
        engine.on_raw(raw)
    assert seen == []
    assert sum(engine.parse_stats.dropped.values()) == 4
    engine.on_raw('{"u":2,"s":"BTCUSDT","b":"1.00","B":"1","a":"1.02","A":"1"}')
    assert seen == [Decimal("1.01")]
    _ = Secret("x")
