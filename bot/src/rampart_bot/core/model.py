"""Plain value types shared by the pure core. No I/O lives here."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

import msgspec

ZERO = Decimal(0)


class Side(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class OrderType(enum.StrEnum):
    LIMIT = "LIMIT"  # with a time in force: GTC rests, IOC/FOK never rest (EXPIRED if not filled)
    MARKET = "MARKET"  # by base quantity, or by quote amount (quoteOrderQty)
    LIMIT_MAKER = "LIMIT_MAKER"  # post-only: the venue rejects it if it would take


class TimeInForce(enum.StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class OrderStatus(enum.StrEnum):
    # Local-only states first: PENDING = persisted, not yet known to the venue;
    # UNKNOWN = we sent it and do not know whether the venue accepted it.
    PENDING = "PENDING"
    UNKNOWN = "UNKNOWN"
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    EXPIRED = "EXPIRED"
    EXPIRED_IN_MATCH = "EXPIRED_IN_MATCH"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL

    @property
    def is_open(self) -> bool:
        """Could still create exposure (counts against limits)."""
        return self not in _TERMINAL


_TERMINAL = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.REJECTED,
        OrderStatus.EXPIRED,
        OrderStatus.EXPIRED_IN_MATCH,
    }
)


class TradingState(enum.IntEnum):
    # Ordered by severity so the effective state is simply the max of all inputs.
    ACTIVE = 0
    REDUCING = 1
    HALTED = 2


def _as_decimal(value: Decimal | str) -> Decimal:
    return value if type(value) is Decimal else Decimal(value)


class Trade(msgspec.Struct, gc=False, eq=False):
    """A public trade print. Quantity is kept as the venue's (validated) string until read:
    most strategies never look at it, and converting every size costs more than the rest of the tick.

    One is built per market-data frame: a msgspec Struct (a plain record type, constructed in C) is
    about a third of the cost of a Python __init__; eq=False keeps identity equality and hashing.
    """

    symbol: str
    trade_id: int
    price: Decimal
    _qty: Decimal | str
    trade_time_ms: int
    buyer_is_maker: bool

    @property
    def qty(self) -> Decimal:
        return _as_decimal(self._qty)

    def __repr__(self) -> str:
        return f"Trade({self.symbol} #{self.trade_id} {self.price} x {self._qty})"


class BookTicker(msgspec.Struct, gc=False, eq=False):
    """Best bid/ask. Prices are Decimals; sizes stay validated strings until read (see Trade)."""

    symbol: str
    update_id: int
    bid: Decimal
    _bid_qty: Decimal | str
    ask: Decimal
    _ask_qty: Decimal | str

    @property
    def bid_qty(self) -> Decimal:
        return _as_decimal(self._bid_qty)

    @property
    def ask_qty(self) -> Decimal:
        return _as_decimal(self._ask_qty)

    def __repr__(self) -> str:
        return f"BookTicker({self.symbol} u={self.update_id} {self.bid}/{self.ask})"


class OrderIntent(msgspec.Struct, frozen=True, gc=False):
    """What a strategy wants. The risk engine decides whether it may become an order.

    Built on the tick-to-order path: a frozen msgspec Struct is constructed in C, where a frozen
    dataclass runs object.__setattr__ per field (~1 µs warm, tens of µs in a process woken from idle).
    Same positional order, defaults, equality and hashing as the frozen dataclass it replaced.
    """

    symbol: str
    side: Side
    qty: Decimal
    price: Decimal | None = None  # None means a market order
    order_type: OrderType = OrderType.LIMIT
    time_in_force: TimeInForce = TimeInForce.GTC  # LIMIT only
    quote_qty: Decimal | None = None  # MARKET by quote amount: qty is then the estimate for risk


@dataclass(slots=True)
class Fill:
    symbol: str
    trade_id: int
    order_id: int
    client_order_id: str
    side: Side
    price: Decimal
    qty: Decimal
    commission: Decimal
    commission_asset: str
    time_ms: int


@dataclass(slots=True)
class Order:
    client_order_id: str
    symbol: str
    side: Side
    order_type: OrderType
    qty: Decimal
    price: Decimal | None
    status: OrderStatus = OrderStatus.PENDING
    exchange_order_id: int | None = None
    executed_qty: Decimal = ZERO
    created_ms: int = 0
    updated_ms: int = 0
    reason: str = ""
    submit_attempts: int = 0
    time_in_force: TimeInForce = TimeInForce.GTC
    quote_qty: Decimal | None = None

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.executed_qty
