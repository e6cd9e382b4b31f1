"""Top of book and a bounded trade tape per symbol."""

from __future__ import annotations

from collections import deque
from decimal import Decimal

from .model import BookTicker, Trade


class TopOfBook:
    __slots__ = ("symbol", "update_id", "bid", "ask", "tick", "received_ns", "_mid")

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.update_id = -1
        self.bid: Decimal | None = None
        self.ask: Decimal | None = None
        self.tick: BookTicker | None = None
        self._mid: Decimal | None = None
        self.received_ns = 0

    def apply(self, tick: BookTicker, now_ns: int) -> bool:
        """Apply a book ticker; stale (older update id) ticks are ignored.

        A REST snapshot after a reconnect may carry any update id, so callers reset with `force=True`
        semantics by calling `reset()` first.
        """
        if tick.update_id < self.update_id:
            return False
        if tick.bid > tick.ask and tick.ask > 0:
            return False  # crossed book from a corrupt message: never let it reach a strategy
        self.update_id = tick.update_id
        self.bid = tick.bid
        self.ask = tick.ask
        self.tick = tick  # sizes are read lazily from the tick
        self._mid = None
        self.received_ns = now_ns
        return True

    def reset(self) -> None:
        self.update_id = -1

    @property
    def bid_qty(self) -> Decimal | None:
        return self.tick.bid_qty if self.tick is not None else None

    @property
    def ask_qty(self) -> Decimal | None:
        return self.tick.ask_qty if self.tick is not None else None

    @property
    def mid(self) -> Decimal | None:
        # Computed at most once per update: the engine, strategy and risk all read it.
        mid = self._mid
        if mid is None:
            if self.bid is None or self.ask is None:
                return None
            mid = self._mid = (self.bid + self.ask) / 2
        return mid


class BookMarks:
    """Read-only mark prices straight from the books (no per-tick copy into another dict)."""

    __slots__ = ("_books",)

    def __init__(self, books: dict[str, TopOfBook]) -> None:
        self._books = books

    def get(self, symbol: str, default: Decimal | None = None) -> Decimal | None:
        book = self._books.get(symbol)
        mid = book.mid if book is not None else None
        return mid if mid is not None else default

    def __getitem__(self, symbol: str) -> Decimal:
        mid = self.get(symbol)
        if mid is None:
            raise KeyError(symbol)
        return mid


class TradeTape:
    __slots__ = ("symbol", "trades", "last_trade_id")

    def __init__(self, symbol: str, maxlen: int = 1000) -> None:
        self.symbol = symbol
        self.trades: deque[Trade] = deque(maxlen=maxlen)
        self.last_trade_id = -1

    def apply(self, trade: Trade) -> bool:
        if trade.trade_id <= self.last_trade_id:
            return False  # replay after reconnect: already seen
        self.last_trade_id = trade.trade_id
        self.trades.append(trade)
        return True

    @property
    def last_price(self) -> Decimal | None:
        return self.trades[-1].price if self.trades else None
