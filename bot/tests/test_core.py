"""The pure core: no network, no database."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from rampart_bot.core.breaker import BreakerState, CircuitBreaker
from rampart_bot.core.market import TopOfBook, TradeTape
from rampart_bot.core.model import (
    BookTicker,
    Fill,
    OrderIntent,
    OrderStatus,
    OrderType,
    Side,
    Trade,
    TradingState,
)
from rampart_bot.core.orders import ClientIdGenerator, InvalidTransition, OrderTracker, Position
from rampart_bot.core.risk import RiskEngine, RiskLimits, SymbolRules
from rampart_bot.core.strategy import MeanReversion, Pinger, round_to_step

RULES = SymbolRules("BTCUSDT", "BTC", "USDT", D("0.01"), D("0.001"), D("0.001"), D("10"), D("5"), D("100000"))


def make(limits: RiskLimits | None = None) -> tuple[RiskEngine, OrderTracker]:
    limits = limits or RiskLimits(D("1"), D("50000"), D("100"), 5)
    tracker = OrderTracker(ClientIdGenerator("t", 1), {"BTCUSDT": "USDT"})
    tracker.marks["BTCUSDT"] = D("30000")
    return RiskEngine({"BTCUSDT": RULES}, limits), tracker


def buy(qty: str = "0.01", price: str | None = "30000.00") -> OrderIntent:
    return OrderIntent("BTCUSDT", Side.BUY, D(qty), D(price) if price else None)


def fill(tid: int, side: Side, price: str, qty: str, oid: int = 1, cid: str = "c") -> Fill:
    return Fill("BTCUSDT", tid, oid, cid, side, D(price), D(qty), D(0), "USDT", 0)


@pytest.mark.parametrize(
    ("intent", "reason"),
    [
        (OrderIntent("ETHUSDT", Side.BUY, D("1"), D("1")), "unknown_symbol"),
        (buy(qty="0.0105"), "qty_precision"),
        (buy(price="30000.005"), "price_precision"),
        (buy(qty="20"), "qty_above_max"),
        (buy(qty="0.001", price="1000.00"), "notional_below_min"),
        (buy(qty="5", price="30000.00"), "notional_above_max"),
        (buy(qty="0"), "qty_not_positive"),
        (OrderIntent("BTCUSDT", Side.BUY, D("0.01"), None, OrderType.LIMIT), "price_missing"),
    ],
)
def test_risk_denies_with_reason(intent: OrderIntent, reason: str) -> None:
    risk, tracker = make()
    decision = risk.check(intent, tracker, 0.0)
    assert not decision.approved
    assert decision.reason == reason


def test_risk_max_position_counts_open_orders() -> None:
    risk, tracker = make()
    first = tracker.create(buy(qty="0.9", price="100.00"), 0)
    tracker.transition(first, OrderStatus.NEW, 0)
    assert risk.check(buy(qty="0.1", price="100.00"), tracker, 0.0).approved
    assert risk.check(buy(qty="0.2", price="100.00"), tracker, 0.0).reason == "max_position"


def test_risk_exposure_cap() -> None:
    risk, tracker = make(RiskLimits(D("10"), D("1000"), D("100"), 100))
    tracker.apply_fill(fill(1, Side.BUY, "30000", "0.03"))  # 900 notional held
    assert risk.check(buy(qty="0.01", price="30000.00"), tracker, 0.0).reason == "max_exposure"


def test_risk_order_rate_throttle_sliding_window() -> None:
    risk, tracker = make()
    for i in range(5):
        assert risk.check(buy(), tracker, 10.0 + i * 0.01).approved
    assert risk.check(buy(), tracker, 10.5).reason == "order_rate"
    assert risk.check(buy(), tracker, 11.01).approved  # first one aged out


def test_reducing_state_allows_only_reducing_orders() -> None:
    risk, tracker = make()
    tracker.apply_fill(fill(1, Side.BUY, "30000", "0.05"))
    risk.degrade("feed", TradingState.REDUCING)
    assert risk.state is TradingState.REDUCING
    assert risk.check(buy(), tracker, 0.0).reason == "reducing_only"
    sell = OrderIntent("BTCUSDT", Side.SELL, D("0.05"), D("30000.00"))
    assert risk.check(sell, tracker, 0.0).approved
    too_much = OrderIntent("BTCUSDT", Side.SELL, D("0.06"), D("30000.00"))
    assert risk.check(too_much, tracker, 1.0).reason == "reducing_only"
    risk.recover("feed")
    assert risk.state is TradingState.ACTIVE


def test_halted_denies_everything_and_halt_is_idempotent() -> None:
    risk, tracker = make()
    assert risk.halt("test") is True
    assert risk.halt("again") is False
    assert risk.halt_reason == "test"
    assert risk.check(buy(), tracker, 0.0).reason == "halted"


def test_daily_loss_limit_blocks_new_risk() -> None:
    risk, tracker = make(RiskLimits(D("10"), D("10000000"), D("100"), 100))
    tracker.apply_fill(fill(1, Side.BUY, "30000", "1"))
    tracker.marks["BTCUSDT"] = D("29800")  # -200 unrealized
    assert risk.loss_limit_breached(tracker)
    assert risk.check(buy(), tracker, 0.0).reason == "daily_loss_limit"
    sell = OrderIntent("BTCUSDT", Side.SELL, D("1"), D("29800.00"))
    assert risk.check(sell, tracker, 0.0).approved  # reducing is still allowed


def test_order_state_machine_and_terminal_guard() -> None:
    _, tracker = make()
    order = tracker.create(buy(), 0)
    assert order.status is OrderStatus.PENDING
    assert tracker.transition(order, OrderStatus.UNKNOWN, 1)
    assert tracker.transition(order, OrderStatus.NEW, 2, exchange_order_id=7)
    assert tracker.transition(order, OrderStatus.FILLED, 3, executed_qty=D("0.01"))
    assert tracker.open_orders() == []
    # Late, stale answers never reopen a terminal order ...
    assert not tracker.transition(order, OrderStatus.NEW, 4)
    assert order.status is OrderStatus.FILLED
    fresh = tracker.create(buy(), 0)
    tracker.transition(fresh, OrderStatus.NEW, 1)
    with pytest.raises(InvalidTransition):
        tracker.transition(fresh, OrderStatus.PENDING, 2)


def test_cancel_fill_race_never_hides_executed_qty() -> None:
    _, tracker = make()
    order = tracker.create(buy(), 0)
    tracker.transition(order, OrderStatus.CANCELED, 1, exchange_order_id=3)
    assert tracker.transition(order, OrderStatus.CANCELED, 2, executed_qty=D("0.004"))
    assert order.executed_qty == D("0.004")


def test_fills_deduplicated_by_trade_id() -> None:
    _, tracker = make()
    order = tracker.create(buy(qty="0.02"), 0)
    tracker.transition(order, OrderStatus.FILLED, 1, exchange_order_id=1, executed_qty=D("0.02"))
    assert tracker.apply_fill(fill(10, Side.BUY, "30000", "0.01", cid=order.client_order_id))
    assert not tracker.apply_fill(fill(10, Side.BUY, "30000", "0.01", cid=order.client_order_id))
    assert not tracker.fills_complete(order)
    assert tracker.apply_fill(fill(11, Side.BUY, "30000", "0.01", cid=order.client_order_id))
    assert tracker.fills_complete(order)
    assert tracker.position("BTCUSDT") == D("0.02")
    assert tracker.duplicate_fills == 1


def test_position_average_cost_and_realized_pnl() -> None:
    pos = Position()
    pos.apply(Side.BUY, D("100"), D("2"))
    pos.apply(Side.BUY, D("110"), D("2"))
    assert pos.avg_price == D("105")
    pos.apply(Side.SELL, D("120"), D("3"))
    assert pos.realized == D("45")
    pos.apply(Side.SELL, D("90"), D("2"))  # flips short through zero
    assert pos.qty == D("-1")
    assert pos.avg_price == D("90")
    assert pos.realized == D("30")


def test_client_ids_are_unique_and_venue_safe() -> None:
    gen = ClientIdGenerator("rb", 1_700_000_000_000)
    ids = {gen.next() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) <= 36 and i.replace("-", "").isalnum() for i in ids)


def test_book_ignores_older_updates_and_crossed_books() -> None:
    book = TopOfBook("BTCUSDT")
    assert book.apply(BookTicker("BTCUSDT", 5, D("1"), D("1"), D("2"), D("1")), 0)
    assert not book.apply(BookTicker("BTCUSDT", 4, D("1.5"), D("1"), D("2"), D("1")), 0)
    assert not book.apply(BookTicker("BTCUSDT", 6, D("3"), D("1"), D("2"), D("1")), 0)
    assert book.mid == D("1.5")
    tape = TradeTape("BTCUSDT", maxlen=2)
    for tid in (1, 2, 2, 3):
        tape.apply(Trade("BTCUSDT", tid, D("1"), D("1"), 0, False))
    assert [t.trade_id for t in tape.trades] == [2, 3]


def test_strategies_emit_valid_intents() -> None:
    _, tracker = make()
    book = TopOfBook("BTCUSDT")
    ping = Pinger(D("0.001"), D("0.01"), every=2, offset_ticks=10)
    book.apply(BookTicker("BTCUSDT", 1, D("100.00"), D("1"), D("100.02"), D("1")), 0)
    assert ping.on_book(book, tracker) is None
    intent = ping.on_book(book, tracker)
    assert intent is not None and intent.price == D("99.90")
    mr = MeanReversion(D("0.001"), D("0.01"), threshold=D("0.001"), alpha=D("0.5"))
    assert mr.on_book(book, tracker) is None  # seeds the average
    book.apply(BookTicker("BTCUSDT", 2, D("90.00"), D("1"), D("90.02"), D("1")), 0)
    intent = mr.on_book(book, tracker)
    assert intent is not None and intent.side is Side.BUY
    assert round_to_step(D("1.23456"), D("0.01")) == D("1.23")


def test_circuit_breaker_opens_half_opens_and_closes() -> None:
    now = [0.0]
    br = CircuitBreaker("x", lambda: now[0], failure_threshold=2, reset_after_s=5)
    br.failure()
    assert br.state is BreakerState.CLOSED
    br.failure()
    assert br.state is BreakerState.OPEN and not br.allow()
    now[0] = 5.0
    assert br.state is BreakerState.HALF_OPEN and br.allow()
    br.failure()  # a failed probe reopens immediately
    assert br.state is BreakerState.OPEN
    now[0] = 10.0
    br.success()
    assert br.state is BreakerState.CLOSED


def _normalized(qty: dict) -> dict:
    return {k: v for k, v in qty.items() if v != 0}


def test_open_order_running_totals_match_a_full_recount() -> None:
    """Exposure is kept incrementally for O(1) risk checks; it must always equal a recount."""
    import random

    rng = random.Random(5)
    _, tracker = make()
    statuses = [OrderStatus.NEW, OrderStatus.PARTIALLY_FILLED, OrderStatus.FILLED, OrderStatus.CANCELED,
                OrderStatus.UNKNOWN, OrderStatus.REJECTED]  # fmt: skip
    for step in range(2000):
        if rng.random() < 0.3 or not tracker.orders:
            side = rng.choice([Side.BUY, Side.SELL])
            price = None if rng.random() < 0.2 else D(rng.randint(100, 200))
            otype = OrderType.MARKET if price is None else OrderType.LIMIT
            tracker.create(OrderIntent("BTCUSDT", side, D(rng.randint(1, 9)) / 100, price, otype), step)
        else:
            order = rng.choice(list(tracker.orders.values()))
            executed = min(order.qty, order.executed_qty + D(rng.randint(0, 3)) / 100)
            try:
                tracker.transition(order, rng.choice(statuses), step, executed_qty=executed)
            except InvalidTransition:
                pass
        qty, notional = tracker.recount_open()
        assert _normalized(tracker._open_qty) == _normalized(qty)
        assert tracker.open_notional() == notional
