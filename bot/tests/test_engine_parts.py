"""The engine's parts against an in-memory venue: no HTTP, no simulator, no Binance JSON.

`FakeVenue` implements `core.venue.Venue` with a few dicts; the tests script what it answers and
read back what the bot asked, so each rule is checked on the exact sequence of venue calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal as D

import pytest

from rampart_bot.adapters.persistence import Store, orders
from rampart_bot.core.model import BookTicker, Fill, Order, OrderIntent, OrderStatus, Side, TradingState
from rampart_bot.core.venue import (
    CancelRejected,
    OrderNotFound,
    ServerError,
    SymbolInfo,
    UnknownOutcome,
    Venue,
    VenueOrder,
)
from rampart_bot.service.config import parse_config
from rampart_bot.service.engine import Engine

SYM = "BTCUSDT"
PRICE = D("30000.00")


class Clock:
    """Wall clock the test moves by hand (the gateway's landing deadline reads it)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeVenue:
    """An in-memory venue. Orders are kept by client id, trades in one list, balances per asset."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.orders: dict[str, VenueOrder] = {}
        self.trades_list: list[Fill] = []
        self.wallet = {"BTC": (D(0), D(0)), "USDT": (D(100_000), D(0))}
        self.calls: list[tuple[str, str]] = []  # (call, client id or symbol), in order
        # Scripted faults: the next submit is accepted but answered with a 5xx (outcome unknown),
        # or refused with a 5xx before acceptance; the next N queries answer "not found" (venue lag).
        self.accept_then_fail = 0
        self.fail_before_accept = 0
        self.lagging_queries = 0
        self.query_advances_s = 0.0  # each query moves the wall clock (a slow venue)
        self._next_id = 100

    # -- what the test does at the venue while the bot is not looking ---------------------------
    def fill(self, cid: str) -> Fill:
        """Fill a resting order completely (e.g. while the bot is offline)."""
        o = self.orders[cid]
        assert o.side is not None and o.exchange_order_id is not None and o.price is not None
        trade = Fill(
            SYM, 1000 + len(self.trades_list), o.exchange_order_id, "", o.side, o.price, o.qty, D(0), "", 1
        )
        self.trades_list.append(trade)
        self.orders[cid] = dataclasses.replace(o, status=OrderStatus.FILLED, executed_qty=o.qty)
        signed = o.qty if o.side is Side.BUY else -o.qty
        self.wallet["BTC"] = (self.wallet["BTC"][0] + signed, D(0))
        self.wallet["USDT"] = (self.wallet["USDT"][0] - signed * o.price, D(0))
        return trade

    def open_ids(self) -> set[str]:
        return {c for c, o in self.orders.items() if o.status is OrderStatus.NEW}

    # -- core.venue.Venue --------------------------------------------------------------------------
    def weight_ratio(self) -> float:
        return 0.0

    def backing_off(self) -> bool:
        return False

    async def sync_time(self) -> int:
        return 0

    async def submit(self, order: Order) -> VenueOrder:
        self.calls.append(("submit", order.client_order_id))
        if self.fail_before_accept:
            self.fail_before_accept -= 1
            raise UnknownOutcome(ServerError(503, None, "before accept"))
        if order.client_order_id in self.open_ids():
            raise AssertionError("a second order with an open client id")
        self._next_id += 1
        accepted = VenueOrder(
            order.client_order_id,
            order.symbol,
            self._next_id,
            OrderStatus.NEW,
            D(0),
            order.side,
            order.order_type,
            order.qty,
            order.price,
            int(self.clock() * 1000),
        )
        self.orders[order.client_order_id] = accepted
        if self.accept_then_fail:
            self.accept_then_fail -= 1
            raise UnknownOutcome(ServerError(502, None, "after accept"))
        return accepted

    async def query_order(self, symbol: str, client_order_id: str) -> VenueOrder:
        self.calls.append(("query", client_order_id))
        self.clock.now += self.query_advances_s
        if self.lagging_queries:
            self.lagging_queries -= 1
            raise OrderNotFound(400, None, "not yet")
        if client_order_id not in self.orders:
            raise OrderNotFound(400, None, "no such order")
        return self.orders[client_order_id]

    async def query_order_by_id(self, symbol: str, exchange_order_id: int) -> VenueOrder:
        self.calls.append(("query_by_id", str(exchange_order_id)))
        for order in self.orders.values():
            if order.exchange_order_id == exchange_order_id:
                return order
        raise OrderNotFound(400, None, "no such order")

    async def cancel_order(self, symbol: str, client_order_id: str) -> VenueOrder:
        self.calls.append(("cancel", client_order_id))
        if client_order_id not in self.open_ids():
            raise CancelRejected(400, None, "not open")
        self.orders[client_order_id] = dataclasses.replace(
            self.orders[client_order_id], status=OrderStatus.CANCELED
        )
        return self.orders[client_order_id]

    async def cancel_all(self, symbol: str) -> list[VenueOrder]:
        self.calls.append(("cancel_all", symbol))
        out = []
        for cid in sorted(self.open_ids()):
            self.orders[cid] = dataclasses.replace(self.orders[cid], status=OrderStatus.CANCELED)
            out.append(self.orders[cid])
        return out

    async def open_orders(self, symbol: str) -> list[VenueOrder]:
        return [self.orders[c] for c in sorted(self.open_ids())]

    async def orders_from(self, symbol: str, exchange_order_id: int) -> list[VenueOrder]:
        self.calls.append(("orders_from", str(exchange_order_id)))
        rows = [o for o in self.orders.values() if (o.exchange_order_id or 0) >= exchange_order_id]
        return sorted(rows, key=lambda o: o.exchange_order_id or 0)

    async def trades(
        self, symbol: str, from_id: int | None = None, order_id: int | None = None
    ) -> list[Fill]:
        self.calls.append(("trades", symbol))
        rows = [t for t in self.trades_list if order_id is None or t.order_id == order_id]
        rows = [t for t in rows if from_id is None or t.trade_id >= from_id]
        # A fresh object per answer, as a real venue would send: the bot must dedup by trade id.
        return [dataclasses.replace(t) for t in rows]

    async def balances(self) -> dict[str, tuple[D, D]]:
        return dict(self.wallet)

    async def book(self, symbol: str) -> BookTicker:
        return BookTicker(symbol, -1, PRICE, "1", PRICE + D("0.02"), "1")

    async def symbols(self, symbols: list[str]) -> dict[str, SymbolInfo]:
        return {
            s: SymbolInfo(s, True, "TRADING", {"base_asset": "BTC", "quote_asset": "USDT"}) for s in symbols
        }


def make_engine(store: Store | None = None, venue: FakeVenue | None = None) -> tuple[Engine, FakeVenue]:
    cfg = parse_config({"database": {"url": "sqlite://"}, "strategy": {"name": "idle"}})
    if store is None:
        store = Store(cfg.database_url)
        store.migrate()
    venue = venue or FakeVenue(Clock())
    _: Venue = venue  # the fake satisfies the Protocol the parts are written against
    return Engine(cfg, store, None, clock=venue.clock, venue=venue), venue


async def settle(engine: Engine) -> None:
    """Let every task the parts spawned (senders, fill fetches, notifications) finish."""
    while engine._tasks:
        await asyncio.gather(*list(engine._tasks))


def buy(qty: str = "0.01") -> OrderIntent:
    return OrderIntent(SYM, Side.BUY, D(qty), PRICE)


async def ready_engine(
    store: Store | None = None, venue: FakeVenue | None = None
) -> tuple[Engine, FakeVenue]:
    engine, venue = make_engine(store, venue)
    engine.load_state()
    await engine.reconciler.reconcile()
    assert engine.reconciled
    return engine, venue


# -- 1. an unknown outcome is settled by query before any resend -----------------------------------
@pytest.mark.asyncio
async def test_unknown_outcome_resolved_by_query_never_resent() -> None:
    engine, venue = await ready_engine()
    venue.accept_then_fail = 1  # the venue took the order, the answer was a 502
    venue.lagging_queries = 1  # and the first query does not see it yet
    order = engine.gateway.submit_intent(buy())
    assert order is not None
    await settle(engine)
    cid = order.client_order_id
    assert [c for c in venue.calls if c[1] == cid] == [("submit", cid), ("query", cid), ("query", cid)]
    assert order.status is OrderStatus.NEW and order.submit_attempts == 1
    assert engine.metrics.venue_errors["unknown_outcome"] == 1


@pytest.mark.asyncio
async def test_unknown_outcome_resent_only_once_proven_absent() -> None:
    engine, venue = await ready_engine()
    venue.fail_before_accept = 1  # a 503 before the venue took it: the order does not exist there
    venue.query_advances_s = 4.0  # recv window 5 s + 1 s margin: the second "not found" is proof
    order = engine.gateway.submit_intent(buy())
    assert order is not None
    await settle(engine)
    cid = order.client_order_id
    assert [c for c in venue.calls if c[1] == cid] == [
        ("submit", cid),
        ("query", cid),
        ("query", cid),
        ("submit", cid),
    ]
    assert order.status is OrderStatus.NEW and order.submit_attempts == 2
    assert venue.open_ids() == {cid}  # exactly one order at the venue


# -- 2. a fill made while the bot was offline is applied exactly once --------------------------------
@pytest.mark.asyncio
async def test_reconcile_applies_offline_fill_exactly_once() -> None:
    first, venue = await ready_engine()
    order = first.gateway.submit_intent(buy())
    assert order is not None
    await settle(first)
    assert order.status is OrderStatus.NEW
    # The process dies here (no shutdown, nothing cancelled), and the order fills while no bot runs.
    trade = venue.fill(order.client_order_id)

    # A new process on the same database and venue.
    second, _ = await ready_engine(first.store, venue)
    await settle(second)
    local = second.tracker.orders[order.client_order_id]
    assert local.status is OrderStatus.FILLED and local.executed_qty == D("0.01")
    assert second.tracker.position(SYM) == D("0.01")
    assert second.metrics.fills == 1
    assert "balance" not in second.metrics.mismatches  # expected balances followed the fill

    # Every other source that can bring the same trade again: another reconcile, the per-order fetch,
    # the next poll round. None of them counts it twice, in memory or in the database.
    await second.reconciler.reconcile()
    await second.reconciler.fetch_order_fills(local)
    await second.reconciler.poll()
    await settle(second)
    assert second.tracker.position(SYM) == D("0.01")
    assert second.metrics.fills == 1
    assert [(f.symbol, f.trade_id) for f in second.store.load_fills()] == [(SYM, trade.trade_id)]


# -- 3. the kill switch cancels what rests at the venue ----------------------------------------------
@pytest.mark.asyncio
async def test_kill_switch_cancels_open_orders() -> None:
    engine, venue = await ready_engine()
    orders = [engine.gateway.submit_intent(buy("0.01")) for _ in range(2)]
    await settle(engine)
    assert all(o is not None and o.status is OrderStatus.NEW for o in orders)
    assert len(venue.open_ids()) == 2

    result = await engine.supervisor.kill("test")
    await settle(engine)
    assert result == {"state": "HALTED", "newly_halted": True, "cancelled": 2}
    assert venue.open_ids() == set()
    assert all(o.status is OrderStatus.CANCELED for o in orders)  # type: ignore[union-attr]
    assert engine.risk.state is TradingState.HALTED
    assert engine.gateway.submit_intent(buy()) is None
    assert engine.metrics.rejects["halted"] == 1

    again = await engine.supervisor.kill("test")  # idempotent: nothing left to cancel
    assert again == {"state": "HALTED", "newly_halted": False, "cancelled": 0}
    assert engine.metrics.kill_switch == 1


# -- 4. an order resting too long is cancelled, so a one-order-per-symbol strategy trades again -----------
@pytest.mark.asyncio
async def test_orders_older_than_max_age_are_cancelled() -> None:
    engine, venue = await ready_engine()
    order = engine.gateway.submit_intent(buy())
    assert order is not None
    await settle(engine)
    assert await engine.supervisor.cancel_aged() == 0  # off by default
    engine.cfg.runtime.order_max_age_s = 10.0
    assert await engine.supervisor.cancel_aged() == 0  # younger than 10 s
    venue.clock.now += 11
    assert await engine.supervisor.cancel_aged() == 1
    assert order.status is OrderStatus.CANCELED and venue.open_ids() == set()
    assert ("cancel", order.client_order_id) in venue.calls


# -- 5. a database restored from a backup older than an order gets that order back from the venue ----------
@pytest.mark.asyncio
async def test_an_order_missing_from_a_restored_database_is_recovered_with_its_fill() -> None:
    first, venue = await ready_engine()
    order = first.gateway.submit_intent(buy())
    assert order is not None
    await settle(first)
    trade = venue.fill(order.client_order_id)

    # The database is restored from a backup taken before the order: a new process starts on an empty one.
    restored = Store("sqlite://")
    restored.migrate()
    second, _ = await ready_engine(restored, venue)
    await settle(second)
    local = second.tracker.orders.get(order.client_order_id)
    assert local is not None and local.status is OrderStatus.FILLED and local.reason == "recovered"
    assert [o.client_order_id for o in second.store.load_orders()] == [order.client_order_id]
    fills = second.store.load_fills()
    assert [(f.trade_id, f.client_order_id) for f in fills] == [(trade.trade_id, order.client_order_id)]
    assert second.metrics.mismatches["unknown_closed_order"] == 1
    assert "fill_for_unknown_order" not in second.metrics.mismatches


@pytest.mark.asyncio
async def test_an_order_cancelled_after_the_backup_is_recovered_too() -> None:
    """Neither openOrders nor the fills show an order placed and cancelled after the backup: the
    reconciliation reads the venue's orders after the newest one the restored database knows."""
    first, venue = await ready_engine()
    kept = first.gateway.submit_intent(buy())
    await settle(first)
    assert kept is not None and kept.exchange_order_id is not None
    backup = Store("sqlite://")
    backup.migrate()
    backup.insert_order(kept)  # the backup: taken when only this order existed
    cancelled = first.gateway.submit_intent(buy())
    filled = first.gateway.submit_intent(buy())
    await settle(first)
    assert cancelled is not None and filled is not None
    await venue.cancel_order(SYM, cancelled.client_order_id)
    trade = venue.fill(filled.client_order_id)

    second, _ = await ready_engine(backup, venue)  # the database is restored from the backup
    await settle(second)
    assert ("orders_from", str(kept.exchange_order_id + 1)) in venue.calls
    got = {o.client_order_id: o for o in second.store.load_orders()}
    assert set(got) == {kept.client_order_id, cancelled.client_order_id, filled.client_order_id}
    assert got[cancelled.client_order_id].status is OrderStatus.CANCELED
    assert got[cancelled.client_order_id].reason == "recovered"
    assert got[filled.client_order_id].status is OrderStatus.FILLED
    assert [(f.trade_id, f.client_order_id) for f in second.store.load_fills()] == [
        (trade.trade_id, filled.client_order_id)
    ]
    assert second.tracker.position(SYM) == D("0.01")
    assert second.metrics.mismatches["unknown_closed_order"] == 2

    # A reconciliation on a database that knows everything records nothing again.
    await second.reconciler.reconcile()
    assert len(second.store.load_orders()) == 3
    assert second.metrics.mismatches["unknown_closed_order"] == 2


async def test_a_gap_below_orders_saved_into_the_restored_database_is_recovered() -> None:
    """The bot kept running while its database was restored and saved a new order into it before it was
    restarted: the restored database then knows an order newer than the ones it lost. The reconciliation
    reads the venue's orders from the mark restored with the backup, not from the newest order known."""
    first, venue = await ready_engine()
    kept = first.gateway.submit_intent(buy())
    await settle(first)
    await first.reconciler.reconcile()  # the mark moves up to `kept`
    assert kept is not None and first.store.load_orders_through() == {SYM: kept.exchange_order_id}
    backup = Store("sqlite://")
    backup.migrate()
    backup.insert_order(kept)  # the backup: taken after that reconciliation
    backup.save_orders_through(SYM, kept.exchange_order_id)
    cancelled = first.gateway.submit_intent(buy())
    await settle(first)
    assert cancelled is not None
    await venue.cancel_order(SYM, cancelled.client_order_id)
    later = first.gateway.submit_intent(buy())  # after the restore, before the restart
    await settle(first)
    assert later is not None and later.exchange_order_id > cancelled.exchange_order_id
    backup.insert_order(later)

    second, _ = await ready_engine(backup, venue)
    await settle(second)
    assert ("orders_from", str(kept.exchange_order_id + 1)) in venue.calls
    got = {o.client_order_id: o for o in second.store.load_orders()}
    assert set(got) == {kept.client_order_id, cancelled.client_order_id, later.client_order_id}
    assert got[cancelled.client_order_id].status is OrderStatus.CANCELED
    assert got[cancelled.client_order_id].reason == "recovered"
    assert second.store.load_orders_through() == {SYM: later.exchange_order_id}


async def test_orders_known_in_memory_are_saved_again_into_a_restored_database() -> None:
    """The running bot reconciles against a database restored under it: orders it knows but the database
    lost are written back, and the mark moves past them only then."""
    engine, _ = await ready_engine()
    first = engine.gateway.submit_intent(buy())
    await settle(engine)
    await engine.reconciler.reconcile()
    lost = engine.gateway.submit_intent(buy())
    await settle(engine)
    assert first is not None and lost is not None
    with engine.store.engine.begin() as conn:  # the restore: the database is back to before `lost`
        conn.execute(orders.delete().where(orders.c.client_order_id == lost.client_order_id))
    await engine.reconciler.reconcile()
    assert lost.client_order_id in {o.client_order_id for o in engine.store.load_orders()}
    assert engine.store.load_orders_through() == {SYM: lost.exchange_order_id}
