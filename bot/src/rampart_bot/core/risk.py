"""The risk engine: a synchronous gate every order passes before it may be sent.

It decides; it does not act. The engine that owns I/O performs the kill switch's cancel-all.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import msgspec

from .model import ZERO, OrderIntent, OrderType, Side, TradingState


@dataclass(slots=True, frozen=True)
class SymbolRules:
    symbol: str
    base_asset: str
    quote_asset: str
    tick_size: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    max_notional: Decimal


@dataclass(slots=True, frozen=True)
class RiskLimits:
    max_position: Decimal  # per symbol, in base units, worst case including open orders
    max_exposure: Decimal  # all symbols, in quote units, positions plus open orders
    daily_loss_limit: Decimal  # positive number in quote units
    max_orders_per_second: int = 10


class RiskDecision(msgspec.Struct, frozen=True, gc=False):
    # A msgspec Struct is built in C; a frozen dataclass sets each field through object.__setattr__,
    # and the gate builds one per denied intent (a strategy may ask on every tick).
    approved: bool
    reason: str = ""


APPROVED = RiskDecision(True)


class ExposureView(Protocol):
    def position(self, symbol: str) -> Decimal: ...

    def open_qty(self, symbol: str, side: Side) -> Decimal: ...

    def open_notional(self) -> Decimal: ...

    def mark(self, symbol: str) -> Decimal | None: ...

    def position_notional(self) -> Decimal: ...

    def daily_pnl(self) -> Decimal: ...


class RiskEngine:
    def __init__(self, rules: Mapping[str, SymbolRules], limits: RiskLimits) -> None:
        self.rules = dict(rules)
        self.limits = limits
        self.manual_state = TradingState.ACTIVE
        self.halt_reason = ""
        # Automatic degradations (feed stale, breaker open, ...) each hold a floor on the state.
        self._degradations: dict[str, TradingState] = {}
        self._recent: deque[float] = deque()

    # -- trading state -------------------------------------------------------------------------
    @property
    def state(self) -> TradingState:
        worst = self.manual_state
        for s in self._degradations.values():
            if s > worst:
                worst = s
        return worst

    @property
    def degradations(self) -> dict[str, TradingState]:
        return dict(self._degradations)

    def degrade(self, cause: str, state: TradingState) -> None:
        if state is TradingState.ACTIVE:
            self._degradations.pop(cause, None)
        else:
            self._degradations[cause] = state

    def recover(self, cause: str) -> None:
        self._degradations.pop(cause, None)

    def halt(self, reason: str) -> bool:
        """Enter HALTED. Returns False if already halted (the kill switch is idempotent)."""
        if self.manual_state is TradingState.HALTED:
            return False
        self.manual_state = TradingState.HALTED
        self.halt_reason = reason
        return True

    def set_manual_state(self, state: TradingState, reason: str = "") -> None:
        self.manual_state = state
        self.halt_reason = reason if state is TradingState.HALTED else ""

    # -- the gate ------------------------------------------------------------------------------
    def check(self, intent: OrderIntent, view: ExposureView, now_s: float) -> RiskDecision:
        rules = self.rules.get(intent.symbol)
        if rules is None:
            return RiskDecision(False, "unknown_symbol")
        state = self.state
        if state is TradingState.HALTED:
            return RiskDecision(False, "halted")

        qty = intent.qty
        kind = intent.order_type
        by_quote = kind is OrderType.MARKET and intent.quote_qty is not None
        if by_quote:
            # MARKET by quote amount: the venue derives the quantity; judge it at the mark price.
            mark = view.mark(intent.symbol)
            if mark is None or mark <= ZERO:
                return RiskDecision(False, "no_mark_price")
            if intent.quote_qty <= ZERO:  # type: ignore[operator]
                return RiskDecision(False, "qty_not_positive")
            qty = intent.quote_qty / mark  # type: ignore[operator]
        if qty <= ZERO:
            return RiskDecision(False, "qty_not_positive")
        if not by_quote and qty % rules.step_size:
            return RiskDecision(False, "qty_precision")
        if qty < rules.min_qty:
            return RiskDecision(False, "qty_below_min")
        if qty > rules.max_qty:
            return RiskDecision(False, "qty_above_max")

        if kind is OrderType.LIMIT or kind is OrderType.LIMIT_MAKER:
            if intent.price is None or intent.price <= ZERO:
                return RiskDecision(False, "price_missing")
            if intent.price % rules.tick_size:
                return RiskDecision(False, "price_precision")
            price = intent.price
        else:
            mark = view.mark(intent.symbol)
            if mark is None:
                return RiskDecision(False, "no_mark_price")
            price = mark
        notional = intent.quote_qty if by_quote else price * qty  # type: ignore[assignment]
        if notional < rules.min_notional:
            return RiskDecision(False, "notional_below_min")
        if notional > rules.max_notional:
            return RiskDecision(False, "notional_above_max")

        pos = view.position(intent.symbol)
        reduces = self._reduces(intent, qty, pos, view)
        if state is TradingState.REDUCING and not reduces:
            return RiskDecision(False, "reducing_only")

        if view.daily_pnl() <= -self.limits.daily_loss_limit and not reduces:
            return RiskDecision(False, "daily_loss_limit")

        if not reduces:
            if intent.side is Side.BUY:
                worst = pos + view.open_qty(intent.symbol, Side.BUY) + qty
            else:
                worst = pos - view.open_qty(intent.symbol, Side.SELL) - qty
            if abs(worst) > self.limits.max_position:
                return RiskDecision(False, "max_position")
            exposure = view.position_notional() + view.open_notional() + notional
            if exposure > self.limits.max_exposure:
                return RiskDecision(False, "max_exposure")

        # Throttle last, so only orders that would otherwise be sent consume rate budget.
        window_start = now_s - 1.0
        recent = self._recent
        while recent and recent[0] <= window_start:
            recent.popleft()
        if len(recent) >= self.limits.max_orders_per_second:
            return RiskDecision(False, "order_rate")
        recent.append(now_s)
        return APPROVED

    @staticmethod
    def _reduces(intent: OrderIntent, qty: Decimal, pos: Decimal, view: ExposureView) -> bool:
        if pos > ZERO and intent.side is Side.SELL:
            return qty + view.open_qty(intent.symbol, Side.SELL) <= pos
        if pos < ZERO and intent.side is Side.BUY:
            return qty + view.open_qty(intent.symbol, Side.BUY) <= -pos
        return False

    def loss_limit_breached(self, view: ExposureView) -> bool:
        return view.daily_pnl() <= -self.limits.daily_loss_limit
