"""Typed shapes of the venue's REST answers and user-data events (Binance Spot), decoded with msgspec.

Decoding against these types is the validation: a wrong type, a missing required field, a number
where the venue sends a decimal string, or a non-positive fill price fails here, at the edge, and
never reaches the engine. Unknown extra fields are ignored (the venue adds fields over time).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

# The venue writes every decimal as a plain string ("0.00100000"): no sign, exponent, NaN or number.
# \Z, not $: msgspec searches with the pattern, and $ also matches before a final newline ("0.5\n").
Dec = Annotated[str, Meta(pattern=r"^[0-9]{1,20}(\.[0-9]{1,20})?\Z")]
Id = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Ms = Annotated[int, Meta(ge=0)]
ClientId = Annotated[str, Meta(max_length=64)]


def _positive(value: str) -> bool:
    return bool(value.strip("0."))


class ServerTime(Struct):
    serverTime: Ms


class BookTickerRest(Struct):
    symbol: str
    bidPrice: Dec
    bidQty: Dec
    askPrice: Dec
    askQty: Dec


class OrderFill(Struct):
    price: Dec
    qty: Dec
    commission: Dec
    commissionAsset: str
    tradeId: Id

    def __post_init__(self) -> None:
        if not (_positive(self.price) and _positive(self.qty)):
            raise ValueError("fill price and qty must be positive")


class OrderResp(Struct):
    """POST/GET/DELETE /api/v3/order, openOrders rows; ACK answers carry only the ids."""

    symbol: str
    orderId: Id
    clientOrderId: ClientId
    status: str | UnsetType = UNSET
    price: Dec | UnsetType = UNSET
    origQty: Dec | UnsetType = UNSET
    executedQty: Dec | UnsetType = UNSET
    cummulativeQuoteQty: Dec | UnsetType = UNSET
    type: str | UnsetType = UNSET
    side: str | UnsetType = UNSET
    timeInForce: str | UnsetType = UNSET
    time: Ms | UnsetType = UNSET
    transactTime: Ms | UnsetType = UNSET
    origClientOrderId: ClientId | UnsetType = UNSET  # cancel answers: the cancelled order's id
    fills: list[OrderFill] | UnsetType = UNSET


class TradeRow(Struct):
    """GET /api/v3/myTrades."""

    symbol: str
    id: Id
    orderId: Id
    price: Dec
    qty: Dec
    commission: Dec
    commissionAsset: str
    time: Ms
    isBuyer: bool

    def __post_init__(self) -> None:
        if not (_positive(self.price) and _positive(self.qty)):
            raise ValueError("trade price and qty must be positive")


class BalanceRow(Struct):
    asset: str
    free: Dec
    locked: Dec


class Account(Struct):
    balances: list[BalanceRow]


class SymbolInfo(Struct):
    symbol: str
    status: str
    baseAsset: str
    quoteAsset: str
    filters: list[dict[str, Any]]
    orderTypes: list[str] | UnsetType = UNSET


class RateLimit(Struct):
    rateLimitType: str
    interval: str
    intervalNum: Annotated[int, Meta(ge=1)]
    limit: Annotated[int, Meta(ge=1)]


class ExchangeInfo(Struct):
    symbols: list[SymbolInfo]
    rateLimits: list[RateLimit] = []
    serverTime: Ms | UnsetType = UNSET


class ListenKey(Struct):
    listenKey: Annotated[str, Meta(min_length=1, max_length=128)]


# -- user-data stream events -------------------------------------------------------------------
class ExecutionReport(Struct, tag_field="e", tag="executionReport"):
    E: Ms
    s: str
    c: ClientId  # client id of the request (for a cancel: the cancel's own id, see C)
    S: str  # side
    o: str  # order type
    q: Dec
    p: Dec
    x: str  # execution type: NEW, CANCELED, REPLACED, REJECTED, TRADE, EXPIRED, TRADE_PREVENTION
    X: str  # order status
    i: Id
    l: Dec  # noqa: E741 - the venue's field name: last executed qty
    z: Dec  # cumulative executed qty
    L: Dec  # last executed price
    n: Dec | None = None  # commission (null when there is none)
    N: str | None = None  # commission asset
    T: Ms = 0
    t: int = -1  # trade id, -1 when not a trade
    C: str = ""  # original client id, for cancels
    r: str = "NONE"  # reject reason


class AccountBalance(Struct):
    a: str
    f: Dec
    l: Dec  # noqa: E741 - the venue's field name: locked


class OutboundAccountPosition(Struct, tag_field="e", tag="outboundAccountPosition"):
    E: Ms
    B: list[AccountBalance]


class ListenKeyExpired(Struct, tag_field="e", tag="listenKeyExpired"):
    E: Ms = 0


class BalanceUpdate(Struct, tag_field="e", tag="balanceUpdate"):
    E: Ms = 0


class ServerShutdownEvent(Struct, tag_field="e", tag="serverShutdown"):
    E: Ms = 0


UserEvent = ExecutionReport | OutboundAccountPosition | ListenKeyExpired | BalanceUpdate | ServerShutdownEvent


class _Wrapped(Struct):
    """The WebSocket API and combined streams wrap events as {"event"|"data": {...}}."""

    event: UserEvent | None = None
    data: UserEvent | None = None


_user_event = msgspec.json.Decoder(UserEvent).decode
_user_wrapped = msgspec.json.Decoder(_Wrapped).decode


def decode_user_event(raw: str | bytes) -> UserEvent:
    """Decode one user-data frame (bare or wrapped). Raises msgspec.MsgspecError if malformed."""
    try:
        return _user_event(raw)
    except msgspec.ValidationError:
        wrapped = _user_wrapped(raw)
        event = wrapped.event or wrapped.data
        if event is None:
            raise
        return event
