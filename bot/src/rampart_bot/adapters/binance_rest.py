"""Binance-Spot REST: signing, clock-offset correction and error mapping (`BinanceRest`), and the
`Venue` interface over it (`BinanceVenue`), which turns every answer into the bot's own types.

The key rule: a 5xx or a timeout on an order submit means the outcome is UNKNOWN (the venue may have
accepted it), never that it failed. Callers get `UnknownOutcome` and must resolve it by query.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import aiohttp
import msgspec
import orjson
from yarl import URL

from ..core.model import BookTicker, Fill, Order, OrderStatus, OrderType, Side
from ..core.venue import (
    ORDERS_PAGE,
    WEIGHT_HARD,
    WEIGHT_SOFT,
    BadResponse,
    CancelRejected,
    ClockSkew,
    DuplicateOrder,
    IpBanned,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    ServerError,
    SymbolInfo,
    TransportError,
    UnknownOutcome,
    VenueError,
    VenueOrder,
)
from . import venue_types as vt
from .secrets import Secret

# The errors are the core's (core/venue.py); they stay importable from here, where they are raised.
__all__ = [
    "WEIGHT_HARD",
    "WEIGHT_SOFT",
    "BadResponse",
    "BinanceRest",
    "BinanceVenue",
    "CancelRejected",
    "ClockSkew",
    "DuplicateOrder",
    "IpBanned",
    "OrderNotFound",
    "OrderRejected",
    "RateLimited",
    "ServerError",
    "TransportError",
    "UnknownOutcome",
    "VenueError",
    "encode_query",
    "fmt_decimal",
    "sign",
]
_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decode(body: bytes, schema: Any) -> Any:
    """Decode and validate against `schema`, then hand plain builtins to the caller."""
    dec = _DECODERS.get(schema)
    if dec is None:
        dec = _DECODERS[schema] = msgspec.json.Decoder(schema)
    try:
        return msgspec.to_builtins(dec.decode(body))
    except msgspec.MsgspecError as exc:
        raise BadResponse(f"malformed venue answer: {str(exc)[:200]}") from None


# Characters quote_plus leaves alone: a value made only of these is its own encoding.
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*").fullmatch


def encode_query(params: dict[str, Any]) -> str:
    """Exactly `urlencode(params)`, minus its per-character work for the plain symbols, ids and
    decimals an order carries (urlencode was a few microseconds of every order's pre-send path)."""
    parts = []
    for key, value in params.items():
        text = value if type(value) is str else str(value)
        if type(key) is not str or _UNRESERVED(key) is None or _UNRESERVED(text) is None:
            return urlencode(params)
        parts.append(f"{key}={text}")
    return "&".join(parts)


def sign(secret: bytes, payload: str) -> str:
    """HMAC-SHA256 over query string + body, hex encoded (Binance SIGNED endpoints)."""
    return hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()


_CODE_MAP: dict[int, type[VenueError]] = {
    -1021: ClockSkew,
    -2010: OrderRejected,
    -2011: CancelRejected,
    -2013: OrderNotFound,
}


def fmt_decimal(value: Decimal) -> str:
    """Plain notation without exponent or trailing zeros (the venue parses plain decimals)."""
    text = format(value.normalize(), "f")
    return text


class BinanceRest:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        api_key: Secret,
        api_secret: Secret,
        recv_window_ms: int = 5000,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self._headers = {"X-MBX-APIKEY": api_key.reveal()}
        self._secret = api_secret.reveal().encode()
        self.recv_window_ms = recv_window_ms
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self.offset_ms = 0
        self.blocked_until = 0.0  # monotonic; set by 429/418
        self.banned = False
        self.request_count = 0
        self.resp_type = "FULL"
        # Request weight as the venue reports it (X-MBX-USED-WEIGHT-1M) and its per-minute limit
        # (exchangeInfo rateLimits; Binance's documented default until we have read it).
        self.used_weight = 0
        self.weight_limit = 6000
        self._weight_minute = 0

    # -- plumbing ------------------------------------------------------------------------------
    def now_ms(self) -> int:
        return int(self._clock() * 1000) + self.offset_ms

    async def sync_time(self) -> int:
        t0 = self._clock()
        data = await self._request("GET", "/api/v3/time", None, signed=False, schema=vt.ServerTime)
        t1 = self._clock()
        local_mid_ms = int((t0 + t1) * 500)
        self.offset_ms = int(data["serverTime"]) - local_mid_ms
        return self.offset_ms

    def weight_ratio(self) -> float:
        """Share of this minute's request weight already used (0 once the minute has rolled over)."""
        if self._weight_minute != int(self._clock() * 1000 + self.offset_ms) // 60_000:
            return 0.0
        return self.used_weight / self.weight_limit

    def _note_weight(self, headers: Any) -> None:
        used = headers.get("X-MBX-USED-WEIGHT-1M")
        if used is not None and used.isdigit():
            self.used_weight = int(used)
            self._weight_minute = int(self._clock() * 1000 + self.offset_ms) // 60_000

    async def _request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        signed: bool = True,
        schema: Any = None,
        api_key: bool = False,
    ) -> Any:
        try:
            return await self._request_once(method, path, params, signed, schema, api_key)
        except ClockSkew:
            # The request was refused, so retrying with a corrected clock cannot duplicate anything.
            await self.sync_time()
            return await self._request_once(method, path, params, signed, schema, api_key)

    async def _request_once(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None,
        signed: bool,
        schema: Any = None,
        api_key: bool = False,
    ) -> Any:
        wait = self.blocked_until - time.monotonic()
        if wait > 0:
            # Sending during a back-off window is what turns a 429 into a 418 ban.
            if self.banned:
                raise IpBanned(418, None, "banned: not sending", wait)
            raise RateLimited(429, None, "backing off", wait)
        self.banned = False
        query = encode_query(params) if params else ""
        if signed:
            extra = f"recvWindow={self.recv_window_ms}&timestamp={self.now_ms()}"
            query = f"{query}&{extra}" if query else extra
            query = f"{query}&signature={sign(self._secret, query)}"
        url = URL(f"{self.base_url}{path}?{query}" if query else f"{self.base_url}{path}", encoded=True)
        self.request_count += 1
        try:
            async with self.session.request(method, url, headers=self._headers, timeout=self.timeout) as resp:
                body = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
                self._note_weight(resp.headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise TransportError(repr(exc)) from exc
        if status == 200:
            if schema is not None:
                return _decode(body, schema)
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                raise BadResponse("venue answer is not JSON") from None
        code: int | None = None
        msg = ""
        try:
            payload = orjson.loads(body)
            if isinstance(payload, dict):
                code = payload.get("code")
                msg = str(payload.get("msg", ""))
        except orjson.JSONDecodeError:
            msg = body[:200].decode(errors="replace")
        if status in (418, 429):
            delay = float(retry_after) if retry_after and retry_after.isdigit() else 1.0
            self.blocked_until = time.monotonic() + delay
            if status == 418:
                self.banned = True
                raise IpBanned(status, code, msg, delay)
            raise RateLimited(status, code, msg, delay)
        if status >= 500:
            raise ServerError(status, code, msg)
        cls = _CODE_MAP.get(code, VenueError) if code is not None else VenueError
        raise cls(status, code, msg)

    # -- endpoints -----------------------------------------------------------------------------
    async def new_order(self, order: Order) -> dict[str, Any]:
        params: dict[str, Any] = {
            "symbol": order.symbol,
            "side": order.side.value,
            "type": order.order_type.value,
            "newClientOrderId": order.client_order_id,
            # FULL: the answer carries the fills, so most fills are known without another request.
            "newOrderRespType": self.resp_type,
        }
        kind = order.order_type
        if kind is OrderType.MARKET and order.quote_qty is not None:
            params["quoteOrderQty"] = fmt_decimal(order.quote_qty)
        else:
            params["quantity"] = fmt_decimal(order.qty)
        if kind is OrderType.LIMIT:
            assert order.price is not None
            params["timeInForce"] = order.time_in_force.value  # Binance refuses a LIMIT without it
            params["price"] = fmt_decimal(order.price)
        elif kind is OrderType.LIMIT_MAKER:
            assert order.price is not None
            params["price"] = fmt_decimal(order.price)
        try:
            return await self._request("POST", "/api/v3/order", params, schema=vt.OrderResp)
        except (ServerError, TransportError) as exc:
            raise UnknownOutcome(exc) from exc

    async def query_order(self, symbol: str, client_order_id: str) -> dict[str, Any]:
        return await self._request(
            "GET",
            "/api/v3/order",
            {"symbol": symbol, "origClientOrderId": client_order_id},
            schema=vt.OrderResp,
        )

    async def query_order_by_id(self, symbol: str, order_id: int) -> dict[str, Any]:
        return await self._request(
            "GET", "/api/v3/order", {"symbol": symbol, "orderId": order_id}, schema=vt.OrderResp
        )

    async def cancel_order(self, symbol: str, client_order_id: str) -> dict[str, Any]:
        return await self._request(
            "DELETE",
            "/api/v3/order",
            {"symbol": symbol, "origClientOrderId": client_order_id},
            schema=vt.OrderResp,
        )

    async def cancel_all(self, symbol: str) -> list[dict[str, Any]]:
        try:
            rows = await self._request(
                "DELETE", "/api/v3/openOrders", {"symbol": symbol}, schema=list[dict[str, Any]]
            )
        except CancelRejected:
            return []  # nothing open: cancel-all is idempotent for us
        # Order lists (OCO) answer with another shape; only plain orders are ours.
        try:
            return [msgspec.to_builtins(msgspec.convert(r, vt.OrderResp)) for r in rows if "orderId" in r]
        except msgspec.MsgspecError as exc:
            raise BadResponse(f"malformed venue answer: {str(exc)[:200]}") from None

    async def open_orders(self, symbol: str | None = None) -> list[dict[str, Any]]:
        return await self._request(
            "GET", "/api/v3/openOrders", {"symbol": symbol} if symbol else None, schema=list[vt.OrderResp]
        )

    async def all_orders(self, symbol: str, order_id: int, limit: int = 1000) -> list[dict[str, Any]]:
        return await self._request(
            "GET",
            "/api/v3/allOrders",
            {"symbol": symbol, "orderId": order_id, "limit": limit},
            schema=list[vt.OrderResp],
        )

    async def my_trades(
        self, symbol: str, from_id: int | None = None, order_id: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"symbol": symbol, "limit": limit}
        if order_id is not None:
            params["orderId"] = order_id
        elif from_id is not None:
            params["fromId"] = from_id
        return await self._request("GET", "/api/v3/myTrades", params, schema=list[vt.TradeRow])

    async def account(self) -> dict[str, Any]:
        return await self._request("GET", "/api/v3/account", None, schema=vt.Account)

    async def book_ticker(self, symbol: str) -> dict[str, Any]:
        return await self._request(
            "GET", "/api/v3/ticker/bookTicker", {"symbol": symbol}, signed=False, schema=vt.BookTickerRest
        )

    async def exchange_info(self, symbols: list[str] | None = None) -> dict[str, Any]:
        params = None
        if symbols:
            params = {"symbols": orjson.dumps(symbols).decode()}
        info = await self._request(
            "GET", "/api/v3/exchangeInfo", params, signed=False, schema=vt.ExchangeInfo
        )
        for limit in info.get("rateLimits", []):
            if limit["rateLimitType"] == "REQUEST_WEIGHT" and limit["interval"] == "MINUTE":
                self.weight_limit = max(1, limit["limit"] // limit["intervalNum"])
        return info

    # -- user-data stream (listen key) ----------------------------------------------------------
    async def new_listen_key(self) -> str:
        data = await self._request(
            "POST", "/api/v3/userDataStream", None, signed=False, schema=vt.ListenKey, api_key=True
        )
        return str(data["listenKey"])

    async def keepalive_listen_key(self, key: str) -> None:
        await self._request("PUT", "/api/v3/userDataStream", {"listenKey": key}, signed=False, api_key=True)

    async def close_listen_key(self, key: str) -> None:
        await self._request(
            "DELETE", "/api/v3/userDataStream", {"listenKey": key}, signed=False, api_key=True
        )


# -- the Venue interface --------------------------------------------------------------------------
VENUE_STATUS = {s.value: s for s in OrderStatus}


def _order_type(value: Any) -> OrderType:
    try:
        return OrderType(value)
    except ValueError:
        return OrderType.LIMIT  # other venue types (STOP_LOSS_LIMIT, ...) rest like a limit


def venue_order(resp: dict[str, Any], order: Order | None = None) -> VenueOrder:
    """An order answer or open-order row. `order`: ours, for a new-order answer's fills."""
    try:
        executed: Decimal | None = Decimal(str(resp.get("executedQty", "0")))
    except ArithmeticError:
        executed = None
    exchange_id = resp.get("orderId")
    fills: tuple[Fill, ...] = ()
    if order is not None and resp.get("fills"):
        when = int(resp.get("transactTime", 0) or 0)
        fills = tuple(
            Fill(
                symbol=order.symbol,
                trade_id=int(f["tradeId"]),
                order_id=exchange_id,
                client_order_id=order.client_order_id,
                side=order.side,
                price=Decimal(f["price"]),
                qty=Decimal(f["qty"]),
                commission=Decimal(f["commission"]),
                commission_asset=f["commissionAsset"],
                time_ms=when,
            )
            for f in resp["fills"]
        )
    price = resp.get("price")
    side = resp.get("side")
    # A cancel answer names the cancel request's own id in clientOrderId and the order's in
    # origClientOrderId; VenueOrder always carries the order's.
    cid = resp.get("origClientOrderId") or resp.get("clientOrderId", order.client_order_id if order else "")
    return VenueOrder(
        client_order_id=cid,
        symbol=resp.get("symbol", order.symbol if order else ""),
        exchange_order_id=exchange_id,
        status=VENUE_STATUS.get(str(resp.get("status"))),
        executed_qty=executed,
        side=Side(side) if side in ("BUY", "SELL") else None,
        order_type=_order_type(resp.get("type", "LIMIT")),
        qty=Decimal(resp.get("origQty", "0")),
        price=Decimal(price) if price and Decimal(price) else None,
        time_ms=int(resp.get("time", 0)),
        fills=fills,
    )


def trade_fill(row: dict[str, Any]) -> Fill:
    """A myTrades row; whose order it is the caller knows (client_order_id is left empty)."""
    return Fill(
        symbol=row["symbol"],
        trade_id=int(row["id"]),
        order_id=int(row["orderId"]),
        client_order_id="",
        side=Side.BUY if row.get("isBuyer") else Side.SELL,
        price=Decimal(row["price"]),
        qty=Decimal(row["qty"]),
        commission=Decimal(row.get("commission", "0")),
        commission_asset=str(row.get("commissionAsset", "")),
        time_ms=int(row.get("time", 0)),
    )


_FILTER_FIELDS = {
    "PRICE_FILTER": (("tickSize", "tick_size"), ("maxPrice", "max_price")),
    "LOT_SIZE": (("stepSize", "step_size"), ("minQty", "min_qty"), ("maxQty", "max_qty")),
    "MIN_NOTIONAL": (("minNotional", "min_notional"),),
    "NOTIONAL": (("minNotional", "min_notional"), ("maxNotional", "max_notional")),
}


def symbol_info(row: dict[str, Any]) -> SymbolInfo:
    """exchangeInfo filters -> SymbolRules fields (a zero means "no limit" at Binance: skipped)."""
    out: dict[str, Any] = {"base_asset": row["baseAsset"], "quote_asset": row["quoteAsset"]}
    for f in row.get("filters", []):
        fields = _FILTER_FIELDS.get(f.get("filterType", ""))
        if fields is None:
            continue
        for venue_key, ours in fields:
            value = f.get(venue_key)
            if not isinstance(value, str):
                continue
            try:
                d = Decimal(value)
            except ArithmeticError:
                continue
            if d.is_finite() and d > 0:
                out[ours] = d.normalize() if ours in ("tick_size", "step_size") else d
    status = row.get("status")
    max_price = out.pop("max_price", None)
    return SymbolInfo(row["symbol"], status in (None, "TRADING"), str(status), out, max_price)


class BinanceVenue:
    """`core.venue.Venue` over a `BinanceRest`: Binance JSON stops here.

    Every call goes through `self.rest` at call time, so a test that swaps one of the client's
    methods sees the swap.
    """

    def __init__(self, rest: BinanceRest) -> None:
        self.rest = rest

    def weight_ratio(self) -> float:
        return self.rest.weight_ratio()

    def backing_off(self) -> bool:
        return self.rest.blocked_until > time.monotonic()

    async def sync_time(self) -> int:
        return await self.rest.sync_time()

    async def submit(self, order: Order) -> VenueOrder:
        try:
            resp = await self.rest.new_order(order)
        except OrderRejected as exc:
            if "Duplicate" in exc.msg:
                raise DuplicateOrder(exc.status, exc.code, exc.msg) from exc
            raise
        return venue_order(resp, order)

    async def query_order(self, symbol: str, client_order_id: str) -> VenueOrder:
        return venue_order(await self.rest.query_order(symbol, client_order_id))

    async def query_order_by_id(self, symbol: str, exchange_order_id: int) -> VenueOrder:
        return venue_order(await self.rest.query_order_by_id(symbol, exchange_order_id))

    async def cancel_order(self, symbol: str, client_order_id: str) -> VenueOrder:
        return venue_order(await self.rest.cancel_order(symbol, client_order_id))

    async def cancel_all(self, symbol: str) -> list[VenueOrder]:
        return [venue_order(row) for row in await self.rest.cancel_all(symbol)]

    async def open_orders(self, symbol: str) -> list[VenueOrder]:
        return [venue_order(row) for row in await self.rest.open_orders(symbol)]

    async def orders_from(self, symbol: str, exchange_order_id: int) -> list[VenueOrder]:
        rows = await self.rest.all_orders(symbol, exchange_order_id, limit=ORDERS_PAGE)
        return [venue_order(row) for row in rows]

    async def trades(
        self, symbol: str, from_id: int | None = None, order_id: int | None = None
    ) -> list[Fill]:
        rows = await self.rest.my_trades(symbol, from_id=from_id, order_id=order_id)
        return [trade_fill(row) for row in rows]

    async def balances(self) -> dict[str, tuple[Decimal, Decimal]]:
        account = await self.rest.account()
        return {
            row["asset"]: (Decimal(row["free"]), Decimal(row["locked"]))
            for row in account.get("balances", [])
        }

    async def book(self, symbol: str) -> BookTicker:
        snap = await self.rest.book_ticker(symbol)
        return BookTicker(
            symbol,
            -1,  # no usable update id: the stream's next id becomes the baseline
            Decimal(snap["bidPrice"]),
            snap["bidQty"],
            Decimal(snap["askPrice"]),
            snap["askQty"],
        )

    async def symbols(self, symbols: list[str]) -> dict[str, SymbolInfo]:
        info = await self.rest.exchange_info(symbols)
        return {row["symbol"]: symbol_info(row) for row in info.get("symbols", [])}
