"""Keep-warm (service/keep_warm.py): the tick-to-order path runs on scratch data between ticks and
leaves no trace in trading state, counters or the database, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import copy
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from rampart_bot.adapters.persistence import Store, orders
from rampart_bot.core.model import Order, OrderType, Side
from rampart_bot.service.config import ConfigError, parse_config
from rampart_bot.service.engine import Engine
from rampart_bot.service.keep_warm import KeepWarm

BOOK = (
    b'{"stream":"btcusdt@bookTicker",'
    b'"data":{"u":7,"s":"BTCUSDT","b":"30000.00","B":"1","a":"30000.02","A":"1"}}'
)


class AckingVenue:
    offset_ms = 0

    def weight_ratio(self) -> float:
        return 0.0


def engine_on(db_url: str) -> Engine:
    cfg = parse_config({"database": {"url": db_url}, "strategy": {"name": "idle"}}, "<test>")
    store = Store(db_url)
    store.migrate()
    engine = Engine(cfg, store, None, venue=AckingVenue())  # type: ignore[arg-type]
    engine.reconciled = True
    return engine


def order_rows(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(orders)).scalar_one())


def state_of(engine: Engine) -> dict[str, object]:
    book = engine.books["BTCUSDT"]
    return {
        "orders": dict(engine.tracker.orders),
        "rate_window": list(engine.risk._recent),
        "messages": engine.parse_stats.messages,
        "books": engine.parse_stats.books,
        "dropped": dict(engine.parse_stats.dropped),
        "book": (book.update_id, book.bid, book.ask),
        "rejects": dict(engine.metrics.rejects),
        "submitted": engine.metrics.orders_submitted,
    }


def test_a_rehearsal_leaves_no_trace(db_url: str) -> None:
    engine = engine_on(db_url)
    engine.on_raw(BOOK)  # a mark price, so the scratch risk check runs to its end
    resting = Order("rb-1", "BTCUSDT", Side.BUY, OrderType.LIMIT, Decimal("0.001"), Decimal("29000.00"))
    engine.store.insert_order(resting)
    engine.tracker.add(resting)
    before = copy.deepcopy(state_of(engine))
    rows = order_rows(engine.store)
    warm = KeepWarm(engine.shared)
    for _ in range(200):
        warm.run_once()
    assert warm.runs == 200
    assert state_of(engine) == before
    assert order_rows(engine.store) == rows == 1
    # The database path still works, and the rehearsal left no transaction open behind it.
    engine.store.insert_order(Order("rb-2", "BTCUSDT", Side.SELL, OrderType.MARKET, Decimal("0.001"), None))
    assert order_rows(engine.store) == 2
    engine.store.close()


def test_the_insert_is_rehearsed_on_sqlite_only(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    order = Order("rb-warm", "BTCUSDT", Side.BUY, OrderType.MARKET, Decimal("0.001"), None)
    ran = store.rehearse_insert(order)
    assert ran is (store.dialect == "sqlite")  # PostgreSQL: no round trip to the server per tick
    assert order_rows(store) == 0
    store.insert_order(order)  # the id was never taken
    assert order_rows(store) == 1
    store.close()


@pytest.mark.asyncio
async def test_a_failing_rehearsal_stops_warming_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_on("sqlite://")
    warm = KeepWarm(engine.shared)

    def broken() -> None:
        raise RuntimeError("boom")

    warm.run_once = broken  # type: ignore[method-assign]
    await asyncio.wait_for(warm.run(0.001), 2)  # returns instead of raising or spinning
    assert any(r.getMessage() == "keep-warm stopped" for r in caplog.records)


@pytest.mark.parametrize("value", [-1, 0.1, 5000])
def test_keep_warm_interval_is_validated(value: float) -> None:
    with pytest.raises(ConfigError, match="runtime.keep_warm_ms"):
        parse_config({"runtime": {"keep_warm_ms": value}}, "<test>")
    assert parse_config({"runtime": {"keep_warm_ms": 0}}, "<test>").runtime.keep_warm_ms == 0
