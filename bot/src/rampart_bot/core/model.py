"""Plain value types shared by the pure core. No I/O lives here."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

ZERO = Decimal(0)


class Side(enum.StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class OrderType(enum.StrEnum):
    LIMIT = "LIMIT"
    MARKET = "MARKET"


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


@dataclass(slots=True)
class Trade:
    symbol: str
    trade_id: int
    price: Decimal
    qty: Decimal
    trade_time_ms: int
    buyer_is_maker: bool


@dataclass(slots=True)
class BookTicker:
    symbol: str
    update_id: int
    bid: Decimal
    bid_qty: Decimal
    ask: Decimal
    ask_qty: Decimal


@dataclass(slots=True, frozen=True)
class OrderIntent:
    """What a strategy wants. The risk engine decides whether it may become an order."""

    symbol: str
    side: Side
    qty: Decimal
    price: Decimal | None = None  # None means a market order
    order_type: OrderType = OrderType.LIMIT


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

    @property
    def remaining(self) -> Decimal:
        return self.qty - self.executed_qty
