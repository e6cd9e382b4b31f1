"""Strategy interface and two small strategies.

A strategy only sees market state and a read-only view of its own position; it returns intents.
It never talks to the venue: the risk engine decides what may be sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import ROUND_DOWN, Decimal
from typing import Any, Protocol

from .market import TopOfBook, TradeTape
from .model import ZERO, OrderIntent, Side


class StrategyView(Protocol):
    def position(self, symbol: str) -> Decimal: ...

    def open_order_count(self, symbol: str) -> int: ...


class Strategy(Protocol):
    name: str

    def on_book(self, book: TopOfBook, view: StrategyView) -> OrderIntent | None: ...

    def on_trade(self, tape: TradeTape, view: StrategyView) -> OrderIntent | None: ...


def round_to_step(value: Decimal, step: Decimal) -> Decimal:
    """Round down to a multiple of step, so a strategy's orders pass the precision check."""
    return (value / step).to_integral_value(rounding=ROUND_DOWN) * step


class MeanReversion:
    """Buys below a slow moving average, sells above it, with one order at a time per symbol.

    Deliberately simple: it exists to exercise the pipeline, not to make money.
    """

    name = "mean_reversion"

    def __init__(
        self,
        qty: Decimal,
        tick_size: Decimal,
        threshold: Decimal = Decimal("0.001"),
        alpha: Decimal = Decimal("0.05"),
        max_position: Decimal = Decimal("1"),
    ) -> None:
        self.qty = qty
        self.tick_size = tick_size
        self.threshold = threshold
        self.alpha = alpha
        self.max_position = max_position
        # The signal is float math (it only decides *whether* to trade, on every tick); prices and
        # quantities that go into orders stay Decimal.
        self._ema: dict[str, float] = {}
        self._lo = 1 - float(threshold)
        self._hi = 1 + float(threshold)
        self._alpha = float(alpha)

    def on_book(self, book: TopOfBook, view: StrategyView) -> OrderIntent | None:
        bid = book.bid
        ask = book.ask
        if bid is None or ask is None:
            return None
        mid = (float(bid) + float(ask)) * 0.5
        symbol = book.symbol
        ema = self._ema.get(symbol)
        if ema is None:
            self._ema[symbol] = mid
            return None
        ema += self._alpha * (mid - ema)
        self._ema[symbol] = ema
        if mid >= ema * self._lo and mid <= ema * self._hi:
            return None
        if view.open_order_count(symbol):
            return None
        pos = view.position(symbol)
        if mid < ema * self._lo and pos + self.qty <= self.max_position:
            return OrderIntent(symbol, Side.BUY, self.qty, round_to_step(bid, self.tick_size))
        if mid > ema * self._hi and pos >= self.qty:
            return OrderIntent(symbol, Side.SELL, self.qty, round_to_step(ask, self.tick_size))
        return None

    def on_trade(self, tape: TradeTape, view: StrategyView) -> OrderIntent | None:
        return None


class Pinger:
    """Places a passive limit buy far below the bid every `every` book ticks.

    Used by the benchmark and tests: it makes tick-to-order latency measurable on every tick.
    """

    name = "pinger"

    def __init__(self, qty: Decimal, tick_size: Decimal, every: int = 1, offset_ticks: int = 100) -> None:
        self.qty = qty
        self.tick_size = tick_size
        self.every = max(1, every)
        self.offset = tick_size * offset_ticks
        self._count = 0

    def on_book(self, book: TopOfBook, view: StrategyView) -> OrderIntent | None:
        self._count += 1
        if self._count % self.every or book.bid is None:
            return None
        price = round_to_step(book.bid - self.offset, self.tick_size)
        if price <= ZERO:
            return None
        return OrderIntent(book.symbol, Side.BUY, self.qty, price)

    def on_trade(self, tape: TradeTape, view: StrategyView) -> OrderIntent | None:
        return None


class Idle:
    """Never trades: for running the service for market data and operations only."""

    name = "idle"

    def on_book(self, book: TopOfBook, view: StrategyView) -> OrderIntent | None:
        return None

    def on_trade(self, tape: TradeTape, view: StrategyView) -> OrderIntent | None:
        return None


def build_strategy(name: str, params: Mapping[str, Any], tick_size: Decimal) -> Strategy:
    if name == "mean_reversion":
        return MeanReversion(
            qty=Decimal(str(params.get("qty", "0.001"))),
            tick_size=tick_size,
            threshold=Decimal(str(params.get("threshold", "0.001"))),
            alpha=Decimal(str(params.get("alpha", "0.05"))),
            max_position=Decimal(str(params.get("max_position", "1"))),
        )
    if name == "pinger":
        return Pinger(
            qty=Decimal(str(params.get("qty", "0.001"))),
            tick_size=tick_size,
            every=int(params.get("every", 1)),
            offset_ticks=int(params.get("offset_ticks", 100)),
        )
    if name == "idle":
        return Idle()
    raise ValueError(f"unknown strategy {name!r} (known: mean_reversion, pinger, idle)")
