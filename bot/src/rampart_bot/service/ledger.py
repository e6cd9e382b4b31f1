"""The local books: orders, fills and expected balances, moved by what the venue reports and persisted.

Every source of venue state (order answers, queries, open-order rows, myTrades, the user-data stream)
ends here, so a fill is applied once per trade id whichever source brought it. A database failure
halts trading (degradation "db") until the supervisor sees the database answer again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from decimal import Decimal
from typing import Any

from ..core.model import Fill, Order, OrderStatus, Side, TradingState
from ..core.venue import BalanceUpdate, OrderUpdate, VenueOrder
from .shared import Part, Shared

log = logging.getLogger("rampart_bot.engine")


class Ledger(Part):
    def __init__(self, shared: Shared) -> None:
        super().__init__(shared)
        self.store = shared.store
        self.rules = shared.rules
        self.db_breaker = shared.breakers["db"]
        self.expected_balances: dict[str, Decimal] = {}
        self.venue_balances: dict[str, Decimal] = {}  # latest pushed balances (informational)
        # Pulls an order's missing fills from the venue; the reconciler provides it.
        self.fetch_fills: Callable[[Order], Coroutine[Any, Any, None]] | None = None

    def load(self) -> None:
        """Rebuild orders, fills and positions from the database (the source of truth across restarts)."""
        for order in self.store.load_orders():
            self.tracker.add(order)
        self.tracker.load_fills(self.store.load_fills())
        self.metrics.fills = len(self.tracker.seen_trades)
        for asset, (free, locked) in self.store.load_balances().items():
            self.expected_balances[asset] = free + locked
        self.tracker.start_day()

    # -- orders --------------------------------------------------------------------------------
    def transition(self, order: Order, status: OrderStatus, **kw: Any) -> None:
        try:
            changed = self.tracker.transition(order, status, int(self.clock() * 1000), **kw)
        except Exception:  # InvalidTransition: log, keep state, never crash the pipeline
            log.exception("invalid order transition", extra={"client_order_id": order.client_order_id})
            return
        if changed:
            self.save(order)
            self.shared.poke()

    def apply_venue_order(self, order: Order, resp: VenueOrder) -> None:
        status = resp.status
        if status is None:
            # An ACK answer (ids only): the venue has it; the stream or a query brings the state.
            status = (
                OrderStatus.NEW
                if order.status in (OrderStatus.PENDING, OrderStatus.UNKNOWN)
                else order.status
            )
        self.transition(
            order, status, exchange_order_id=resp.exchange_order_id, executed_qty=resp.executed_qty
        )
        if resp.fills and order.exchange_order_id is not None:
            now_ms = int(self.clock() * 1000)
            for fill in resp.fills:
                if not fill.time_ms:
                    fill.time_ms = now_ms
                self.apply_fill(fill, order)
            self.check_loss_limit()
        if not self.tracker.fills_complete(order) and self.fetch_fills is not None:
            self.shared.spawn(self.fetch_fills(order))

    def on_update(self, update: OrderUpdate | BalanceUpdate) -> None:
        """A pushed event: execution reports move orders and bring fills."""
        if type(update) is BalanceUpdate:
            for asset, (free, locked) in update.balances.items():
                self.venue_balances[asset] = free + locked
            return
        assert type(update) is OrderUpdate
        order = self.tracker.orders.get(update.client_order_id) or self.tracker.by_exchange_id.get(
            (update.symbol, update.exchange_order_id)
        )
        fill = update.fill
        if fill is not None:
            if order is not None and order.exchange_order_id is None:
                self.transition(order, order.status, exchange_order_id=update.exchange_order_id)
            self.apply_trade(fill, order)
            self.check_loss_limit()
        if order is None:
            return  # not ours (or not yet known): reconciliation adopts or ignores it
        if update.status is None:
            self.shared.parse_stats.drop("user_event_bad_status", update)
            return
        self.transition(
            order, update.status, exchange_order_id=update.exchange_order_id, executed_qty=update.executed_qty
        )

    def save(self, order: Order) -> None:
        self._write(self.store.save_order, order)

    # -- fills ---------------------------------------------------------------------------------
    def apply_trade(self, fill: Fill, order: Order | None = None) -> bool:
        """A trade the venue reported without our client id: find the order it belongs to."""
        if order is None:
            order = self.tracker.by_exchange_id.get((fill.symbol, fill.order_id))
        fill.client_order_id = order.client_order_id if order else ""
        return self.apply_fill(fill, order)

    def apply_fill(self, fill: Fill, order: Order | None) -> bool:
        """Apply a fill once, whichever source brought it (order answer, user-data stream, myTrades)."""
        if not self.tracker.apply_fill(fill):
            return False
        symbol = fill.symbol
        self.metrics.fills += 1
        if order is None:
            self.metrics.mismatch("fill_for_unknown_order")
        try:
            self.store.insert_fill(fill)
            self.store.save_position(symbol, self.tracker.positions[symbol])
        except Exception as exc:  # noqa: BLE001
            self.db_failed(exc)
        rules = self.rules.get(symbol)
        expected = self.expected_balances
        if rules is not None and rules.base_asset in expected:
            signed = fill.qty if fill.side is Side.BUY else -fill.qty
            expected[rules.base_asset] += signed
            expected[rules.quote_asset] = expected.get(rules.quote_asset, Decimal(0)) - (signed * fill.price)
            if fill.commission_asset in expected:
                expected[fill.commission_asset] -= fill.commission
            # Persist what we now expect, so a restart compares the venue with *this*, not with the
            # balances of the last reconciliation (which would be a false mismatch on every deploy).
            self.save_expected_balances()
        self.shared.poke()
        return True

    def check_loss_limit(self) -> None:
        if self.risk.manual_state is not TradingState.HALTED and self.risk.loss_limit_breached(self.tracker):
            self.shared.request_kill("daily_loss_limit")

    # -- persistence ---------------------------------------------------------------------------
    def _write(self, call: Callable[..., Any], *args: Any) -> Any:
        """One database call behind the breaker: a failure halts trading (db_failed) and gives None."""
        if not self.db_breaker.allow():
            return None
        try:
            return call(*args)
        except Exception as exc:  # noqa: BLE001
            self.db_failed(exc)
            return None

    def save_expected_balances(self) -> None:
        self._write(self.store.save_balances, {a: (v, Decimal(0)) for a, v in self.expected_balances.items()})

    def orders_through(self) -> dict[str, int]:
        """Per symbol, the exchange order id up to which the database has every order (a reconciliation's
        mark)."""
        return self._write(self.store.load_orders_through) or {}

    def save_orders_through(self, symbol: str, exchange_order_id: int) -> None:
        self._write(self.store.save_orders_through, symbol, exchange_order_id)

    def persist_event(self, kind: str, detail: dict[str, Any]) -> None:
        self._write(self.store.log_event, kind, detail)

    def db_failed(self, exc: BaseException) -> None:
        self.db_breaker.failure()
        self.shared.db_ok = False
        self.risk.degrade("db", TradingState.HALTED)
        log.error("database failure; trading halted until it recovers", extra={"error": repr(exc)[:300]})
