"""Order state machine, fill deduplication and positions. Pure: the engine persists and sends."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .model import ZERO, Fill, Order, OrderIntent, OrderStatus, Side

S = OrderStatus
_ALLOWED: dict[OrderStatus, frozenset[OrderStatus]] = {
    S.PENDING: frozenset(
        {
            S.UNKNOWN,
            S.NEW,
            S.PARTIALLY_FILLED,
            S.FILLED,
            S.REJECTED,
            S.CANCELED,
            S.EXPIRED,
            S.EXPIRED_IN_MATCH,
        }
    ),
    S.UNKNOWN: frozenset(
        {S.NEW, S.PARTIALLY_FILLED, S.FILLED, S.REJECTED, S.CANCELED, S.EXPIRED, S.EXPIRED_IN_MATCH}
    ),
    S.NEW: frozenset({S.NEW, S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED, S.EXPIRED_IN_MATCH}),
    S.PARTIALLY_FILLED: frozenset({S.PARTIALLY_FILLED, S.FILLED, S.CANCELED, S.EXPIRED, S.EXPIRED_IN_MATCH}),
}


class InvalidTransition(Exception):
    pass


class ClientIdGenerator:
    """Deterministic ids: prefix + boot stamp + sequence, within Binance's 36 chars of [A-Za-z0-9_-]."""

    def __init__(self, prefix: str, boot_ms: int, start: int = 0) -> None:
        self._base = f"{prefix}{boot_ms:x}-"
        self._seq = start

    def next(self) -> str:
        self._seq += 1
        return f"{self._base}{self._seq:x}"


@dataclass(slots=True)
class Position:
    qty: Decimal = ZERO
    avg_price: Decimal = ZERO
    realized: Decimal = ZERO
    fees_quote: Decimal = ZERO

    def apply(self, side: Side, price: Decimal, qty: Decimal) -> None:
        signed = qty if side is Side.BUY else -qty
        if self.qty == ZERO or (self.qty > 0) == (signed > 0):
            new_qty = self.qty + signed
            self.avg_price = (self.avg_price * abs(self.qty) + price * qty) / abs(new_qty)
            self.qty = new_qty
            return
        closing = min(qty, abs(self.qty))
        direction = 1 if self.qty > 0 else -1
        self.realized += (price - self.avg_price) * closing * direction
        self.qty += signed
        if self.qty == ZERO:
            self.avg_price = ZERO
        elif (self.qty > 0) != (direction > 0):
            self.avg_price = price  # flipped through zero: the remainder opened at this price

    def unrealized(self, mark: Decimal | None) -> Decimal:
        if mark is None or self.qty == ZERO:
            return ZERO
        return (mark - self.avg_price) * self.qty


class OrderTracker:
    """Tracks every order we created, the in-flight set, fills (deduplicated) and positions.

    Implements the views the strategy and the risk engine read.
    """

    def __init__(self, ids: ClientIdGenerator, quote_assets: dict[str, str] | None = None) -> None:
        self.ids = ids
        self.orders: dict[str, Order] = {}
        self.in_flight: set[str] = set()
        self.positions: dict[str, Position] = {}
        # A plain dict in unit tests; the engine swaps in BookMarks (reads the live books).
        self.marks: Any = {}
        self.seen_trades: set[tuple[str, int]] = set()
        self.max_trade_id: dict[str, int] = {}
        # Fills keyed by the venue's order id: a fill may arrive before we learn that id (in-flight ack).
        self.fills_by_order: dict[tuple[str, int], list[Fill]] = {}
        self._quote_assets = quote_assets or {}
        self._open: dict[str, set[str]] = {}
        self.by_exchange_id: dict[tuple[str, int], Order] = {}
        # Running totals over open orders, so a risk check costs O(1) however many orders rest.
        self._open_qty: dict[tuple[str, Side], Decimal] = {}
        self._open_notional = ZERO
        self._ref_price: dict[str, Decimal] = {}  # market orders: mark at creation, for exposure
        self._day_baseline = ZERO
        self.duplicate_fills = 0

    # -- creation and transitions ------------------------------------------------------------
    def _account(self, order: Order, sign: int) -> None:
        """Add (sign=1) or remove (sign=-1) an open order's contribution to the running totals."""
        if not order.status.is_open:
            return
        remaining = order.remaining
        key = (order.symbol, order.side)
        self._open_qty[key] = self._open_qty.get(key, ZERO) + sign * remaining
        price = order.price if order.price is not None else self._ref_price.get(order.client_order_id, ZERO)
        self._open_notional += sign * price * remaining

    def create(self, intent: OrderIntent, now_ms: int) -> Order:
        order = Order(
            client_order_id=self.ids.next(),
            symbol=intent.symbol,
            side=intent.side,
            order_type=intent.order_type,
            qty=intent.qty,
            price=intent.price,
            created_ms=now_ms,
            updated_ms=now_ms,
            time_in_force=intent.time_in_force,
            quote_qty=intent.quote_qty,
        )
        if order.price is None:
            self._ref_price[order.client_order_id] = self.marks.get(order.symbol, ZERO)
        self.add(order)
        return order

    def add(self, order: Order) -> None:
        """Register an order (new, loaded from the database, or adopted from the venue)."""
        previous = self.orders.get(order.client_order_id)
        if previous is not None:
            self.forget(previous)
        self.orders[order.client_order_id] = order
        self._account(order, 1)
        if order.exchange_order_id is not None:
            self.by_exchange_id[(order.symbol, order.exchange_order_id)] = order
        if order.status.is_open:
            self._open.setdefault(order.symbol, set()).add(order.client_order_id)

    def forget(self, order: Order) -> None:
        """Drop our copy of an order (reconciliation replaces it with the venue's version)."""
        if self.orders.get(order.client_order_id) is order:
            self._account(order, -1)
            del self.orders[order.client_order_id]
        self._open.get(order.symbol, set()).discard(order.client_order_id)

    def transition(
        self,
        order: Order,
        status: OrderStatus,
        now_ms: int,
        exchange_order_id: int | None = None,
        executed_qty: Decimal | None = None,
        reason: str = "",
    ) -> bool:
        """Move an order to `status`. Returns True if anything changed.

        Terminal orders ignore late updates (a stale query answer must not reopen them), except that
        the executed quantity may only grow: a cancel/fill race must never hide a fill.
        """
        tracked = self.orders.get(order.client_order_id) is order
        if tracked:
            self._account(order, -1)
        try:
            return self._transition(order, status, now_ms, exchange_order_id, executed_qty, reason)
        finally:
            if tracked:
                self._account(order, 1)

    def _transition(
        self,
        order: Order,
        status: OrderStatus,
        now_ms: int,
        exchange_order_id: int | None,
        executed_qty: Decimal | None,
        reason: str,
    ) -> bool:
        changed = False
        if executed_qty is not None and executed_qty > order.executed_qty:
            order.executed_qty = executed_qty
            changed = True
        if exchange_order_id is not None and order.exchange_order_id != exchange_order_id:
            order.exchange_order_id = exchange_order_id
            self.by_exchange_id[(order.symbol, exchange_order_id)] = order
            changed = True
        if status is not order.status:
            allowed = _ALLOWED.get(order.status, frozenset())
            if status not in allowed:
                if order.status.is_terminal:
                    if changed:
                        order.updated_ms = now_ms
                    return changed
                raise InvalidTransition(f"{order.client_order_id}: {order.status} -> {status}")
            order.status = status
            changed = True
            if reason:
                order.reason = reason
            if status.is_terminal:
                self._open.get(order.symbol, set()).discard(order.client_order_id)
                self.in_flight.discard(order.client_order_id)
        if changed:
            order.updated_ms = now_ms
        return changed

    # -- fills ---------------------------------------------------------------------------------
    def apply_fill(self, fill: Fill) -> bool:
        """Apply a fill once. Fills arrive from order queries, trade polling and reconciliation."""
        key = (fill.symbol, fill.trade_id)
        if key in self.seen_trades:
            self.duplicate_fills += 1
            return False
        self.seen_trades.add(key)
        pos = self.positions.setdefault(fill.symbol, Position())
        pos.apply(fill.side, fill.price, fill.qty)
        if fill.commission:
            if fill.commission_asset == self._quote_assets.get(fill.symbol):
                pos.fees_quote += fill.commission
            elif fill.commission_asset and fill.commission_asset != self._quote_assets.get(fill.symbol):
                pos.qty -= fill.commission  # fee taken in base: the holding really is smaller
        if fill.trade_id > self.max_trade_id.get(fill.symbol, -1):
            self.max_trade_id[fill.symbol] = fill.trade_id
        self.fills_by_order.setdefault((fill.symbol, fill.order_id), []).append(fill)
        return True

    def filled_qty(self, order: Order) -> Decimal:
        """Quantity covered by fills we have actually seen (deduplicated) for this order."""
        if order.exchange_order_id is None:
            return ZERO
        return sum(
            (f.qty for f in self.fills_by_order.get((order.symbol, order.exchange_order_id), ())), ZERO
        )

    def fills_complete(self, order: Order) -> bool:
        return self.filled_qty(order) >= order.executed_qty

    def load_fills(self, fills: Iterable[Fill]) -> None:
        for fill in fills:
            self.apply_fill(fill)

    # -- views ---------------------------------------------------------------------------------
    def open_orders(self, symbol: str | None = None) -> list[Order]:
        if symbol is None:
            return [self.orders[c] for ids in self._open.values() for c in ids]
        return [self.orders[c] for c in self._open.get(symbol, ())]

    def unresolved(self) -> list[Order]:
        return [o for o in self.open_orders() if o.status in (OrderStatus.PENDING, OrderStatus.UNKNOWN)]

    def open_order_count(self, symbol: str) -> int:
        return len(self._open.get(symbol, ()))

    def position(self, symbol: str) -> Decimal:
        pos = self.positions.get(symbol)
        return pos.qty if pos is not None else ZERO

    def open_qty(self, symbol: str, side: Side) -> Decimal:
        return self._open_qty.get((symbol, side), ZERO)

    def open_notional(self) -> Decimal:
        return self._open_notional

    def recount_open(self) -> tuple[dict[tuple[str, Side], Decimal], Decimal]:
        """Recompute the running totals from scratch (used by tests to check the bookkeeping)."""
        qty: dict[tuple[str, Side], Decimal] = {}
        notional = ZERO
        for o in self.open_orders():
            qty[(o.symbol, o.side)] = qty.get((o.symbol, o.side), ZERO) + o.remaining
            price = o.price if o.price is not None else self._ref_price.get(o.client_order_id, ZERO)
            notional += price * o.remaining
        return qty, notional

    def mark(self, symbol: str) -> Decimal | None:
        return self.marks.get(symbol)

    def position_notional(self) -> Decimal:
        total = ZERO
        for symbol, pos in self.positions.items():
            mark = self.marks.get(symbol, pos.avg_price)
            total += abs(pos.qty) * mark
        return total

    def total_pnl(self) -> Decimal:
        # A plain loop: the risk gate calls this for every order (a generator costs a frame per call).
        total = ZERO
        marks = self.marks
        for symbol, p in self.positions.items():
            total += p.realized - p.fees_quote + p.unrealized(marks.get(symbol))
        return total

    def daily_pnl(self) -> Decimal:
        return self.total_pnl() - self._day_baseline

    def start_day(self) -> None:
        self._day_baseline = self.total_pnl()
