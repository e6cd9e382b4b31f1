"""The venue as the bot sees it: its answers in the bot's own types, the errors a call can end in,
and the `Venue` interface an adapter implements.

No wire format lives here. The Binance adapter (adapters/binance_rest.py, binance_user.py) translates
the venue's JSON into these types, so the engine's parts never read a venue field name, and a test
can stand in for the venue with a plain in-memory object.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from .model import ZERO, BookTicker, Fill, Order, OrderStatus, OrderType, Side

# Request-weight budget, as a share of the venue's per-minute limit. Slow down before the venue's
# 429, not after: above SOFT the poller skips rounds, above HARD new orders are refused locally.
WEIGHT_SOFT = 0.7
WEIGHT_HARD = 0.9


# -- errors ---------------------------------------------------------------------------------------
# The most orders one orders_from answer holds (Binance's allOrders limit).
ORDERS_PAGE = 1000


class VenueError(Exception):
    def __init__(self, status: int, code: int | None, msg: str) -> None:
        super().__init__(f"HTTP {status} code={code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg


class ClockSkew(VenueError):
    """The request's timestamp was outside the venue's receive window."""


class OrderRejected(VenueError):
    """The venue refused the new order (it does not exist there)."""


class DuplicateOrder(OrderRejected):
    """Refused because the venue already has an open order with this client id (an earlier attempt
    landed): the order exists, its state must be queried."""


class CancelRejected(VenueError):
    """Cancel refused (usually: already closed or unknown)."""


class OrderNotFound(VenueError):
    """No such order."""


class RateLimited(VenueError):
    """Back off until `retry_after_s` has passed."""

    def __init__(self, status: int, code: int | None, msg: str, retry_after_s: float) -> None:
        super().__init__(status, code, msg)
        self.retry_after_s = retry_after_s


class IpBanned(RateLimited):
    """We ignored rate limits; stop sending entirely."""


class ServerError(VenueError):
    """The venue failed (5xx): its state is unknown for this request."""


class TransportError(Exception):
    """No answer at all (timeout, connection reset)."""


class BadResponse(TransportError):
    """An answer that does not have the venue's documented shape: treated like no answer at all
    (for an order submit that means the outcome is unknown, never that it failed)."""


class UnknownOutcome(Exception):
    """A submit whose result we cannot know; resolve it by query or reconciliation."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"order outcome unknown: {cause!r}")
        self.cause = cause


# Any of these means "this call did not work"; callers that only retry later catch them together.
CALL_FAILED = (VenueError, TransportError)


# -- answers --------------------------------------------------------------------------------------
@dataclass(slots=True, frozen=True)
class VenueOrder:
    """One order as the venue reports it: a new-order, query or cancel answer, an open-order row."""

    client_order_id: str
    symbol: str
    exchange_order_id: int | None = None
    status: OrderStatus | None = None  # None: an ACK answer (ids only) or a status the bot does not model
    executed_qty: Decimal | None = ZERO  # None: unreadable
    side: Side | None = None
    order_type: OrderType = OrderType.LIMIT  # venue types the bot does not place rest like a limit
    qty: Decimal = ZERO
    price: Decimal | None = None  # None: a market order
    time_ms: int = 0  # created at the venue
    fills: tuple[Fill, ...] = ()  # trades the answer carries; time_ms 0 when the venue gave none


@dataclass(slots=True, frozen=True)
class OrderUpdate:
    """A pushed order event (user-data stream): a state change, possibly with the trade behind it."""

    client_order_id: str  # the order's own id (for a cancel, not the cancel request's id)
    symbol: str
    exchange_order_id: int
    status: OrderStatus | None  # None: a status the bot does not model
    executed_qty: Decimal
    fill: Fill | None = None  # client_order_id "": the receiver knows whose order it is


@dataclass(slots=True, frozen=True)
class BalanceUpdate:
    """Pushed account balances: asset -> (free, locked)."""

    balances: dict[str, tuple[Decimal, Decimal]]


@dataclass(slots=True, frozen=True)
class SymbolInfo:
    """A symbol's trading rules as the venue states them."""

    symbol: str
    trading: bool  # False: the venue currently refuses orders for it
    status: str  # the venue's word for it, for the log
    rules: dict[str, Any]  # SymbolRules fields the venue sets (base/quote asset, sizes, notionals)
    max_price: Decimal | None = None


# -- the interface --------------------------------------------------------------------------------
class Venue(Protocol):
    """What the engine's parts need from a venue. Every call may raise the errors above; `submit`
    raises UnknownOutcome when the venue may or may not have accepted the order."""

    def weight_ratio(self) -> float:
        """Share of the current window's request budget already used."""
        ...

    def backing_off(self) -> bool:
        """True while the venue told us to pause (rate limit or ban)."""
        ...

    async def sync_time(self) -> int: ...

    async def submit(self, order: Order) -> VenueOrder: ...

    async def query_order(self, symbol: str, client_order_id: str) -> VenueOrder: ...

    async def query_order_by_id(self, symbol: str, exchange_order_id: int) -> VenueOrder: ...

    async def cancel_order(self, symbol: str, client_order_id: str) -> VenueOrder: ...

    async def cancel_all(self, symbol: str) -> list[VenueOrder]: ...

    async def open_orders(self, symbol: str) -> list[VenueOrder]: ...

    async def orders_from(self, symbol: str, exchange_order_id: int) -> list[VenueOrder]:
        """Our orders of any status with an exchange id >= exchange_order_id, oldest first, one page
        (Binance's allOrders): fewer than ORDERS_PAGE means there are no more."""
        ...

    async def trades(
        self, symbol: str, from_id: int | None = None, order_id: int | None = None
    ) -> list[Fill]:
        """Our trades, oldest first; client_order_id is "" (the venue's rows do not carry it)."""
        ...

    async def balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        """asset -> (free, locked)."""
        ...

    async def book(self, symbol: str) -> BookTicker:
        """Top of book snapshot (update_id -1: it has no place in the stream's sequence)."""
        ...

    async def symbols(self, symbols: list[str]) -> dict[str, SymbolInfo]: ...
