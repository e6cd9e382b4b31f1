"""Top of book and a bounded trade tape per symbol, each guarding itself against a corrupt feed.

A frame that survived parsing can still be wrong for *this* market: a crossed book, a price far from
anything seen before, or a sequence id that jumps by billions. Such a frame is a feed fault: it is
refused (with a reason the engine counts and logs) and never becomes the new truth.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal

from .model import ZERO, BookTicker, Trade

# Plausibility limits; the engine passes its configured values.
DEFAULT_MAX_SEQ_JUMP = 1_000_000_000  # one message never advances an update/trade id this far
DEFAULT_PRICE_BAND = Decimal("0.25")  # a price more than 25 % from the last good one is refused
DEFAULT_MAX_PRICE = Decimal("10000000")  # absolute ceiling, before any reference price exists
# After this many refused frames in a row the feed disagrees with *us*: forget the sequence baseline
# (an earlier frame may have poisoned it), or ask for a REST resync of the reference price.
REBASELINE_AFTER = 5


class PriceBand:
    """The last good price of one symbol and the band a new price must fall in.

    `lo` is never negative, so `lo < price` alone also proves the price positive. The book and the
    tape read `lo`/`hi` and the inner band directly: on every tick that is cheaper than method calls.
    """

    __slots__ = ("band", "max_price", "ref", "lo", "hi", "in_lo", "in_hi", "refused_in_row")

    def __init__(self, band: Decimal = DEFAULT_PRICE_BAND, max_price: Decimal = DEFAULT_MAX_PRICE) -> None:
        self.band = band
        self.max_price = max_price
        self.refused_in_row = 0
        self.clear()

    def clear(self) -> None:
        self.ref: Decimal | None = None
        self.lo = ZERO
        self.hi = self.max_price
        self.in_lo = self.in_hi = ZERO  # inner band: no recompute while prices stay near ref

    def allows(self, price: Decimal) -> bool:
        return self.lo < price <= self.hi

    def accept(self, price: Decimal) -> None:
        self.refused_in_row = 0
        if self.in_lo <= price <= self.in_hi:
            return  # bounds still centred closely enough: skip two Decimal multiplications
        self.ref = price
        self.lo = max(price * (1 - self.band), ZERO)
        self.hi = min(price * (1 + self.band), self.max_price)
        quarter = self.band / 4
        self.in_lo = price * (1 - quarter)
        self.in_hi = price * (1 + quarter)


class TopOfBook:
    __slots__ = (
        "symbol", "update_id", "bid", "ask", "tick", "received_ns", "_mid", "band", "max_jump",
        "reject", "refused_in_row",
    )  # fmt: skip

    def __init__(
        self, symbol: str, band: PriceBand | None = None, max_jump: int = DEFAULT_MAX_SEQ_JUMP
    ) -> None:
        self.symbol = symbol
        self.update_id = -1
        self.bid: Decimal | None = None
        self.ask: Decimal | None = None
        self.tick: BookTicker | None = None
        self._mid: Decimal | None = None
        self.received_ns = 0
        self.band = band if band is not None else PriceBand()
        self.max_jump = max_jump
        self.reject = ""  # why the last apply() returned False: "stale" or a feed-fault reason
        self.refused_in_row = 0

    def apply(self, tick: BookTicker, now_ns: int) -> bool:
        """Apply a book ticker. False (with `self.reject` set) if it is stale or a feed fault.

        A REST snapshot carries no usable update id: callers `reset()` and apply it with update_id -1.
        """
        u = tick.update_id
        last = self.update_id
        bid = tick.bid
        ask = tick.ask
        if last >= 0:
            if u < last:
                return self._refuse("stale")
            if u - last > self.max_jump:
                return self._refuse("seq_jump")
        band = self.band
        # One chained comparison on the hot path: lo >= 0 and bid < ask put both prices in the band.
        if not band.lo < bid < ask <= band.hi:
            if not (0 < bid < ask):
                return self._refuse("crossed_or_nonpositive")  # includes ask 0 and a 0/0 book
            band.refused_in_row += 1
            return self._refuse("price_out_of_band")
        self.refused_in_row = 0
        self.update_id = u
        self.bid = bid
        self.ask = ask
        self.tick = tick  # sizes are read lazily from the tick
        self._mid = None
        self.received_ns = now_ns
        if band.in_lo <= bid <= band.in_hi:
            band.refused_in_row = 0
        else:
            band.accept(bid)
        return True

    def _refuse(self, reason: str) -> bool:
        self.reject = reason
        self.refused_in_row += 1
        if self.refused_in_row >= REBASELINE_AFTER and reason in ("stale", "seq_jump"):
            # Every recent update disagrees with our baseline: the baseline is the outlier.
            self.update_id = -1
            self.refused_in_row = 0
        return False

    def reset(self) -> None:
        self.update_id = -1
        self.refused_in_row = 0

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
    __slots__ = ("symbol", "trades", "last_trade_id", "band", "max_jump", "reject", "refused_in_row")

    def __init__(
        self,
        symbol: str,
        maxlen: int = 1000,
        band: PriceBand | None = None,
        max_jump: int = DEFAULT_MAX_SEQ_JUMP,
    ) -> None:
        self.symbol = symbol
        self.trades: deque[Trade] = deque(maxlen=maxlen)
        self.last_trade_id = -1
        self.band = band if band is not None else PriceBand()
        self.max_jump = max_jump
        self.reject = ""
        self.refused_in_row = 0

    def apply(self, trade: Trade) -> bool:
        """False (with `self.reject`) for a replayed trade ("stale") or a feed fault."""
        t = trade.trade_id
        last = self.last_trade_id
        if last >= 0:
            if t <= last:
                return self._refuse("stale")  # replay after reconnect: already seen
            if t - last > self.max_jump:
                return self._refuse("seq_jump")
        band = self.band
        price = trade.price
        if not band.lo < price <= band.hi:
            band.refused_in_row += 1
            return self._refuse("price_out_of_band")
        self.refused_in_row = 0
        self.last_trade_id = t
        self.trades.append(trade)
        if band.in_lo <= price <= band.in_hi:
            band.refused_in_row = 0
        else:
            band.accept(price)
        return True

    def _refuse(self, reason: str) -> bool:
        self.reject = reason
        self.refused_in_row += 1
        if self.refused_in_row >= REBASELINE_AFTER and reason in ("stale", "seq_jump"):
            self.last_trade_id = -1
            self.refused_in_row = 0
        return False

    def reset(self) -> None:
        """After a reconnect the venue's ids are the truth again; keep the prices for strategies."""
        self.last_trade_id = -1
        self.refused_in_row = 0

    @property
    def last_price(self) -> Decimal | None:
        return self.trades[-1].price if self.trades else None
