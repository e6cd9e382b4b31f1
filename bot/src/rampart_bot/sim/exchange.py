"""The simulator's matching engine and account: pure state, no I/O.

Rules follow Binance Spot's public REST documentation:

* `newClientOrderId` is unique only among *open* orders: a duplicate of an open order is rejected
  (-2010 "Duplicate order sent."), while the id of a filled, cancelled or expired order may be reused
  and then names a *new* order (queries by `origClientOrderId` find the newest).
* LIMIT needs `timeInForce` (GTC | IOC | FOK); an IOC/FOK that cannot trade ends EXPIRED; LIMIT_MAKER
  is rejected if it would take; MARKET takes `quantity` or `quoteOrderQty` and reports price 0.
* Liquidity is a synthetic book: levels one tick apart from the touch, `top_qty` each (what
  `/api/v3/depth` shows). Takers walk it (several fills), resting orders fill at their limit price,
  at most `top_qty` per price step, once the touch crosses them.
* Every order change and fill is reported to `listener` (the user-data stream) in Binance's
  `executionReport` / `outboundAccountPosition` formats; nothing is built when nobody listens.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

ZERO = Decimal(0)
OPEN_STATUSES = ("NEW", "PARTIALLY_FILLED")
ORDER_TYPES = ("LIMIT", "LIMIT_MAKER", "MARKET")
UNSUPPORTED_TYPES = {
    "STOP_LOSS": "Stop loss orders are not supported for this symbol.",
    "STOP_LOSS_LIMIT": "Stop loss limit orders are not supported for this symbol.",
    "TAKE_PROFIT": "Take profit orders are not supported for this symbol.",
    "TAKE_PROFIT_LIMIT": "Take profit limit orders are not supported for this symbol.",
}
DECIMAL_RE = re.compile(r"^([0-9]{1,20})(\.[0-9]{1,20})?$")
DECIMAL_RANGE = "^([0-9]{1,20})(\\.[0-9]{1,20})?$"
CLIENT_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
CLIENT_ID_RANGE = "^[\\.A-Z\\:/a-z0-9_-]{1,36}$"
MAX_WALK_LEVELS = 10_000  # a taker never walks further than this many synthetic levels


class SimError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg


def fmt(d: Decimal) -> str:
    return f"{d:.8f}"


def missing(name: str) -> SimError:
    return SimError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


def not_required(name: str) -> SimError:
    return SimError(400, -1106, f"Parameter '{name}' sent when not required.")


def illegal(name: str, legal: str) -> SimError:
    return SimError(400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '{legal}'.")


def filter_failure(name: str) -> SimError:
    return SimError(400, -1013, f"Filter failure: {name}")


def rejected(msg: str) -> SimError:
    return SimError(400, -2010, msg)


@dataclass
class SimSymbol:
    symbol: str
    base: str
    quote: str
    tick_size: Decimal = Decimal("0.01")
    min_price: Decimal = Decimal("0.01")
    max_price: Decimal = Decimal("1000000")
    step_size: Decimal = Decimal("0.00001")
    min_qty: Decimal = Decimal("0.00001")
    max_qty: Decimal = Decimal("9000")
    min_notional: Decimal = Decimal("5")
    max_notional: Decimal = Decimal("9000000")
    base_precision: int = 8
    quote_precision: int = 8
    mid: Decimal = Decimal("30000")
    spread_ticks: int = 2
    top_qty: Decimal = Decimal("1.5")
    last_price: Decimal = ZERO

    def rules(self) -> dict[str, Any]:
        """This symbol's entry in `exchangeInfo`."""
        return {
            "symbol": self.symbol,
            "status": "TRADING",
            "baseAsset": self.base,
            "baseAssetPrecision": self.base_precision,
            "quoteAsset": self.quote,
            "quotePrecision": self.quote_precision,
            "quoteAssetPrecision": self.quote_precision,
            "baseCommissionPrecision": self.base_precision,
            "quoteCommissionPrecision": self.quote_precision,
            "orderTypes": list(ORDER_TYPES),
            "icebergAllowed": False,
            "ocoAllowed": False,
            "otoAllowed": False,
            "opoAllowed": False,
            "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": False,
            "cancelReplaceAllowed": False,
            "amendAllowed": False,
            "pegInstructionsAllowed": False,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {
                    "filterType": "PRICE_FILTER",
                    "minPrice": fmt(self.min_price),
                    "maxPrice": fmt(self.max_price),
                    "tickSize": fmt(self.tick_size),
                },
                {
                    "filterType": "LOT_SIZE",
                    "minQty": fmt(self.min_qty),
                    "maxQty": fmt(self.max_qty),
                    "stepSize": fmt(self.step_size),
                },
                {
                    "filterType": "MARKET_LOT_SIZE",
                    "minQty": fmt(self.min_qty),
                    "maxQty": fmt(self.max_qty),
                    "stepSize": fmt(self.step_size),
                },
                {
                    "filterType": "NOTIONAL",
                    "minNotional": fmt(self.min_notional),
                    "applyMinToMarket": True,
                    "maxNotional": fmt(self.max_notional),
                    "applyMaxToMarket": False,
                    "avgPriceMins": 0,
                },
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "NONE",
            "allowedSelfTradePreventionModes": ["NONE"],
        }


@dataclass
class PriceProcess:
    """Geometric random walk on the mid, snapped to the tick; seeded, so runs are reproducible."""

    volatility: float = 0.0002
    seed: int = 7
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def next_mid(self, mid: Decimal, tick: Decimal) -> Decimal:
        factor = math.exp(self.rng.gauss(0.0, self.volatility))
        new = (mid * Decimal(repr(factor))).quantize(tick)
        return max(new, tick * 10)


@dataclass
class SimOrder:
    symbol: str
    order_id: int
    client_order_id: str
    side: str
    type: str
    price: Decimal  # ZERO for MARKET (as Binance reports it)
    qty: Decimal
    time_in_force: str
    time_ms: int
    quote_order_qty: Decimal = ZERO
    executed: Decimal = ZERO
    quote_executed: Decimal = ZERO
    status: str = "NEW"
    update_ms: int = 0
    expiry_reason: str = ""
    on_book: bool = False

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    def as_dict(self) -> dict[str, Any]:
        """The order as `GET /api/v3/order`, `openOrders` and `allOrders` show it."""
        d = {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "price": fmt(self.price),
            "origQty": fmt(self.qty),
            "executedQty": fmt(self.executed),
            "cummulativeQuoteQty": fmt(self.quote_executed),
            "status": self.status,
            "timeInForce": self.time_in_force,
            "type": self.type,
            "side": self.side,
            "stopPrice": "0.00000000",
            "icebergQty": "0.00000000",
            "time": self.time_ms,
            "updateTime": self.update_ms or self.time_ms,
            "isWorking": True,
            "workingTime": self.time_ms,
            "origQuoteOrderQty": fmt(self.quote_order_qty),
            "selfTradePreventionMode": "NONE",
        }
        if self.expiry_reason:
            d["expiryReason"] = self.expiry_reason
        return d

    def response(self, resp_type: str, fills: list[dict[str, Any]]) -> dict[str, Any]:
        """The `POST /api/v3/order` reply for newOrderRespType ACK, RESULT or FULL."""
        d: dict[str, Any] = {
            "symbol": self.symbol,
            "orderId": self.order_id,
            "orderListId": -1,
            "clientOrderId": self.client_order_id,
            "transactTime": self.time_ms,
        }
        if resp_type == "ACK":
            return d
        d.update(
            {
                "price": fmt(self.price),
                "origQty": fmt(self.qty),
                "executedQty": fmt(self.executed),
                "origQuoteOrderQty": fmt(self.quote_order_qty),
                "cummulativeQuoteQty": fmt(self.quote_executed),
                "status": self.status,
                "timeInForce": self.time_in_force,
                "type": self.type,
                "side": self.side,
                "workingTime": self.time_ms,
                "selfTradePreventionMode": "NONE",
            }
        )
        if self.expiry_reason:
            d["expiryReason"] = self.expiry_reason
        if resp_type == "FULL":
            d["fills"] = [
                {
                    "price": t["price"],
                    "qty": t["qty"],
                    "commission": t["commission"],
                    "commissionAsset": t["commissionAsset"],
                    "tradeId": t["id"],
                }
                for t in fills
            ]
        return d


def _decimal(params: dict[str, str], name: str, places: int, required: bool = True) -> Decimal | None:
    """A DECIMAL parameter: Binance's syntax, at most `places` significant decimals (-1111)."""
    raw = params.get(name)
    if raw is None or raw == "":
        if required:
            raise missing(name)
        return None
    if not DECIMAL_RE.match(raw):
        raise illegal(name, DECIMAL_RANGE)
    if len(raw.partition(".")[2].rstrip("0")) > places:
        raise SimError(400, -1111, f"Parameter '{name}' has too much precision.")
    return Decimal(raw)


@dataclass
class OrderRequest:
    """A `POST /api/v3/order` (or `order/test`) after parameter validation and filters."""

    sym: SimSymbol
    side: str
    type: str
    tif: str
    qty: Decimal | None  # None: MARKET by quoteOrderQty
    price: Decimal  # ZERO for MARKET
    quote_qty: Decimal
    client_order_id: str | None
    resp_type: str


class Exchange:
    def __init__(
        self,
        symbols: list[SimSymbol],
        balances: dict[str, Decimal],
        process: PriceProcess | None = None,
        commission_rate: Decimal = ZERO,
        id_base: int = 1,
    ) -> None:
        self.symbols = {s.symbol: s for s in symbols}
        for s in symbols:
            if not s.last_price:
                s.last_price = s.mid
        self.balances: dict[str, list[Decimal]] = {a: [v, ZERO] for a, v in balances.items()}
        self.process = process or PriceProcess()
        self.commission_rate = commission_rate
        self.orders: dict[int, SimOrder] = {}
        self.by_client_id: dict[tuple[str, str], SimOrder] = {}  # newest order holding the id
        self.open: dict[str, dict[int, SimOrder]] = {s: {} for s in self.symbols}
        self.trades: dict[str, list[dict[str, Any]]] = {s: [] for s in self.symbols}
        self.market_trade_id: dict[str, int] = {s: 1000 for s in self.symbols}
        self.update_id: dict[str, int] = {s: 1 for s in self.symbols}
        self.listener: Callable[[dict[str, Any]], None] | None = None
        # A venue never reuses an order or trade id. Given a time-based id_base (the CLI's), a restarted
        # simulator starts above its last life's ids, so a bot's older records cannot collide with new ones.
        self._next_order_id = id_base
        self._next_trade_id = id_base
        self._next_execution_id = 1
        self._next_cancel_id = 1
        self.accepted_orders = 0
        self._best_buy: dict[str, Decimal] = {}
        self._best_sell: dict[str, Decimal] = {}

    @property
    def next_order_id(self) -> int:
        return self._next_order_id

    @property
    def next_trade_id(self) -> int:
        return self._next_trade_id

    # -- market data ---------------------------------------------------------------------------
    def top(self, symbol: str) -> tuple[Decimal, Decimal]:
        s = self.symbols[symbol]
        half = s.tick_size * s.spread_ticks / 2
        bid = (s.mid - half).quantize(s.tick_size)
        ask = bid + s.tick_size * s.spread_ticks
        return bid, ask

    def book_ticker(self, symbol: str) -> dict[str, Any]:
        s = self.symbols[symbol]
        bid, ask = self.top(symbol)
        return {
            "u": self.update_id[symbol],
            "s": symbol,
            "b": fmt(bid),
            "B": fmt(s.top_qty),
            "a": fmt(ask),
            "A": fmt(s.top_qty),
        }

    def depth(self, symbol: str, limit: int) -> dict[str, Any]:
        """The synthetic book takers walk: `limit` levels a side, one tick apart, `top_qty` each."""
        s = self.symbols[symbol]
        bid, ask = self.top(symbol)
        qty = fmt(s.top_qty)
        bids = []
        for k in range(limit):
            price = bid - s.tick_size * k
            if price < s.min_price:
                break
            bids.append([fmt(price), qty])
        asks = [[fmt(ask + s.tick_size * k), qty] for k in range(limit)]
        return {"lastUpdateId": self.update_id[symbol], "bids": bids, "asks": asks}

    def set_mid(self, symbol: str, mid: Decimal, now_ms: int) -> None:
        self.symbols[symbol].mid = mid
        self.update_id[symbol] += 1
        self.match(symbol, now_ms)

    def step(self, symbol: str, now_ms: int) -> None:
        s = self.symbols[symbol]
        self.set_mid(symbol, self.process.next_mid(s.mid, s.tick_size), now_ms)

    def market_trade(self, symbol: str, now_ms: int) -> dict[str, Any]:
        """A public trade print at the touch (the tape the bot's trade stream sees)."""
        bid, ask = self.top(symbol)
        self.market_trade_id[symbol] += 1
        buyer_maker = self.process.rng.random() < 0.5
        price = bid if buyer_maker else ask
        self.symbols[symbol].last_price = price
        return {
            "e": "trade",
            "E": now_ms,
            "s": symbol,
            "t": self.market_trade_id[symbol],
            "p": fmt(price),
            "q": "0.01000000",
            "T": now_ms,
            "m": buyer_maker,
            "M": True,
        }

    # -- order validation ----------------------------------------------------------------------
    def symbol_param(self, params: dict[str, str]) -> SimSymbol:
        name = params.get("symbol")
        if not name:
            raise missing("symbol")
        sym = self.symbols.get(name)
        if sym is None:
            raise SimError(400, -1121, "Invalid symbol.")
        return sym

    def validate(self, params: dict[str, str]) -> OrderRequest:
        """Everything Binance checks before the matching engine (what `order/test` runs)."""
        sym = self.symbol_param(params)
        side = params.get("side")
        if not side:
            raise missing("side")
        if side not in ("BUY", "SELL"):
            raise illegal("side", "BUY, SELL")
        otype = params.get("type")
        if not otype:
            raise missing("type")
        if otype in UNSUPPORTED_TYPES:
            raise rejected(UNSUPPORTED_TYPES[otype])
        if otype not in ORDER_TYPES:
            raise SimError(400, -1116, "Invalid orderType.")
        resp_type = params.get("newOrderRespType") or ("FULL" if otype in ("LIMIT", "MARKET") else "ACK")
        if resp_type not in ("ACK", "RESULT", "FULL"):
            raise illegal("newOrderRespType", "ACK, RESULT, FULL")
        cid = params.get("newClientOrderId")
        if cid is not None and not CLIENT_ID_RE.match(cid):
            raise illegal("newClientOrderId", CLIENT_ID_RANGE)
        tif_raw = params.get("timeInForce")
        if otype == "LIMIT":
            if not tif_raw:
                raise missing("timeInForce")
            if tif_raw not in ("GTC", "IOC", "FOK"):
                raise SimError(400, -1115, "Invalid timeInForce.")
            tif = tif_raw
        else:
            if tif_raw:
                raise not_required("timeInForce")
            tif = "GTC"
        quote_qty = ZERO
        if otype == "MARKET":
            if params.get("price"):
                raise not_required("price")
            qty = _decimal(params, "quantity", sym.base_precision, required=False)
            quote = _decimal(params, "quoteOrderQty", sym.quote_precision, required=False)
            if qty is None and quote is None:
                raise SimError(
                    400, -1102, "Param 'quantity' or 'quoteOrderQty' must be sent, but both were empty/null!"
                )
            if qty is not None and quote is not None:
                raise not_required("quoteOrderQty")
            price = ZERO
            if quote is not None:
                if quote <= 0:
                    raise missing("quoteOrderQty")
                quote_qty = quote
        else:
            qty = _decimal(params, "quantity", sym.base_precision)
            price = _decimal(params, "price", sym.quote_precision)  # type: ignore[assignment]
            assert price is not None
            if price < sym.min_price or price > sym.max_price or (price - sym.min_price) % sym.tick_size:
                raise filter_failure("PRICE_FILTER")
        if qty is not None and (
            qty < sym.min_qty or qty > sym.max_qty or (qty - sym.min_qty) % sym.step_size
        ):
            raise filter_failure("MARKET_LOT_SIZE" if otype == "MARKET" else "LOT_SIZE")
        # NOTIONAL: MARKET orders are valued at the last price (avgPriceMins 0).
        value = quote_qty if qty is None else qty * (price if otype != "MARKET" else sym.last_price)
        if value < sym.min_notional or (otype != "MARKET" and value > sym.max_notional):
            raise filter_failure("NOTIONAL")
        return OrderRequest(sym, side, otype, tif, qty, price, quote_qty, cid, resp_type)

    # -- orders --------------------------------------------------------------------------------
    def _walk(self, sym: SimSymbol, side: str, limit: Decimal | None) -> Any:
        """Yield (price, available qty) of the synthetic levels a taker may trade against."""
        bid, ask = self.top(sym.symbol)
        for k in range(MAX_WALK_LEVELS):
            if side == "BUY":
                price = ask + sym.tick_size * k
                if limit is not None and price > limit:
                    return
            else:
                price = bid - sym.tick_size * k
                if price < sym.min_price or (limit is not None and price < limit):
                    return
            yield price, sym.top_qty

    def _plan(self, req: OrderRequest) -> list[tuple[Decimal, Decimal]]:
        """The taker fills (price, qty) this order would get now, walking the synthetic book."""
        sym = req.sym
        plan: list[tuple[Decimal, Decimal]] = []
        if req.type == "MARKET" and req.qty is None:
            remaining_quote = req.quote_qty
            for price, avail in self._walk(sym, req.side, None):
                q = min(avail, (remaining_quote / price).quantize(sym.step_size, rounding=ROUND_DOWN))
                if q <= 0:
                    break
                plan.append((price, q))
                remaining_quote -= price * q
            return plan
        assert req.qty is not None
        remaining = req.qty
        limit = None if req.type == "MARKET" else req.price
        for price, avail in self._walk(sym, req.side, limit):
            q = min(avail, remaining)
            plan.append((price, q))
            remaining -= q
            if remaining <= 0:
                break
        return plan

    def new_order(self, params: dict[str, str], now_ms: int) -> tuple[SimOrder, list[dict[str, Any]], str]:
        """Place an order; returns it, the trades it made at once and the response type asked for."""
        req = self.validate(params)
        sym = req.sym
        cid = req.client_order_id or f"sim-{self._next_order_id}"
        held = self.by_client_id.get((sym.symbol, cid))
        if held is not None and held.is_open:
            raise rejected("Duplicate order sent.")
        plan = self._plan(req)
        if req.type == "LIMIT_MAKER" and plan:
            raise rejected("Order would immediately match and take.")
        if req.type == "MARKET":
            if not plan:
                raise rejected("Order book liquidity is less than symbol minimum quantity.")
            qty = req.qty if req.qty is not None else sum((q for _, q in plan), ZERO)
        else:
            assert req.qty is not None
            qty = req.qty
        # Lock what the order could use: BUY locks quote (at the limit, or the planned cost for
        # MARKET), SELL locks base.
        if req.side == "BUY":
            need_asset = sym.quote
            need = sum((p * q for p, q in plan), ZERO) if req.type == "MARKET" else req.price * qty
        else:
            need_asset, need = sym.base, qty
        bal = self.balances.setdefault(need_asset, [ZERO, ZERO])
        if bal[0] < need:
            raise rejected("Account has insufficient balance for requested action.")
        bal[0] -= need
        bal[1] += need
        order = SimOrder(
            sym.symbol,
            self._next_order_id,
            cid,
            req.side,
            req.type,
            req.price,
            qty,
            req.tif,
            now_ms,
            quote_order_qty=req.quote_qty,
        )
        self._next_order_id += 1
        self.orders[order.order_id] = order
        self.by_client_id[(sym.symbol, cid)] = order
        self.accepted_orders += 1
        self._report(order, "NEW", now_ms)
        trades: list[dict[str, Any]] = []
        if req.type == "LIMIT" and req.tif == "FOK" and sum((q for _, q in plan), ZERO) < qty:
            plan = []  # all or nothing
        for price, q in plan:
            trades.append(self._fill(order, price, q, now_ms, maker=False))
        if order.is_open:
            if req.type == "MARKET" or req.tif in ("IOC", "FOK"):
                reason = {
                    "IOC": "UNFILLED_IOC_QUANTITY_EXPIRED",
                    "FOK": "UNFILLED_FOK_ORDER_EXPIRED",
                }.get(req.tif if req.type == "LIMIT" else "", "INSUFFICIENT_LIQUIDITY")
                self._close(order, "EXPIRED", now_ms, expiry_reason=reason)
            else:
                order.on_book = True
                self.open[sym.symbol][order.order_id] = order
                self._best_buy.pop(sym.symbol, None)
                self._best_sell.pop(sym.symbol, None)
        return order, trades, req.resp_type

    def match(self, symbol: str, now_ms: int) -> None:
        bid, ask = self.top(symbol)
        book = self.open[symbol]
        if not book:
            return
        best_buy = self._best_buy.get(symbol)
        best_sell = self._best_sell.get(symbol)
        if best_buy is None or best_sell is None:
            buys = [o.price for o in book.values() if o.side == "BUY"]
            sells = [o.price for o in book.values() if o.side == "SELL"]
            best_buy = self._best_buy[symbol] = max(buys) if buys else ZERO
            best_sell = self._best_sell[symbol] = min(sells) if sells else Decimal("Infinity")
        if ask > best_buy and bid < best_sell:
            return  # nothing can cross: skip the scan (keeps the simulator fast with many resting orders)
        self._best_buy.pop(symbol, None)
        self._best_sell.pop(symbol, None)
        # Resting orders fill at most the displayed top size per price step, so big orders fill
        # partially over several steps (PARTIALLY_FILLED is a real state the bot must handle).
        top = self.symbols[symbol].top_qty
        for order in list(book.values()):
            if (order.side == "BUY" and ask <= order.price) or (order.side == "SELL" and bid >= order.price):
                self._fill(order, order.price, min(order.qty - order.executed, top), now_ms, maker=True)

    def _fill(
        self, order: SimOrder, price: Decimal, qty: Decimal, now_ms: int, maker: bool
    ) -> dict[str, Any]:
        sym = self.symbols[order.symbol]
        quote = price * qty
        # Commission is taken from what the account receives: base on buys, quote on sells.
        if order.side == "BUY":
            commission = (
                (qty * self.commission_rate).quantize(sym.step_size) if self.commission_rate else ZERO
            )
            commission_asset = sym.base
        else:
            commission = (
                (quote * self.commission_rate).quantize(Decimal("0.00000001"))
                if self.commission_rate
                else ZERO
            )
            commission_asset = sym.quote
        base_bal = self.balances.setdefault(sym.base, [ZERO, ZERO])
        quote_bal = self.balances.setdefault(sym.quote, [ZERO, ZERO])
        if order.side == "BUY":
            # A limit BUY locked at its limit price; a MARKET BUY locked exactly its planned cost.
            locked = (order.price if order.type != "MARKET" else price) * qty
            quote_bal[1] -= locked
            quote_bal[0] += locked - quote  # price improvement returns to free balance
            base_bal[0] += qty - commission
        else:
            base_bal[1] -= qty
            quote_bal[0] += quote - commission
        order.executed += qty
        order.quote_executed += quote
        order.status = "FILLED" if order.executed >= order.qty else "PARTIALLY_FILLED"
        order.update_ms = now_ms
        sym.last_price = price
        if order.status == "FILLED":
            order.on_book = False
            self.open[order.symbol].pop(order.order_id, None)
        trade = {
            "symbol": order.symbol,
            "id": self._next_trade_id,
            "orderId": order.order_id,
            "orderListId": -1,
            "price": fmt(price),
            "qty": fmt(qty),
            "quoteQty": fmt(quote),
            "commission": fmt(commission),
            "commissionAsset": commission_asset,
            "time": now_ms,
            "isBuyer": order.side == "BUY",
            "isMaker": maker,
            "isBestMatch": True,
        }
        self._next_trade_id += 1
        self.trades[order.symbol].append(trade)
        self._report(order, "TRADE", now_ms, trade=trade)
        return trade

    def find(self, params: dict[str, str]) -> SimOrder:
        sym = self.symbol_param(params)
        order: SimOrder | None = None
        order_id = params.get("orderId")
        orig = params.get("origClientOrderId")
        if order_id:
            try:
                order = self.orders.get(int(order_id))
            except ValueError:
                raise illegal("orderId", "^[0-9]{1,20}$") from None
            if order is not None and orig is not None and order.client_order_id != orig:
                order = None
        elif orig:
            order = self.by_client_id.get((sym.symbol, orig))
        else:
            raise SimError(
                400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty/null!"
            )
        if order is None or order.symbol != sym.symbol:
            raise SimError(400, -2013, "Order does not exist.")
        return order

    def cancel(self, params: dict[str, str], now_ms: int) -> dict[str, Any]:
        """`DELETE /api/v3/order`: the reply names the cancel's own id and the order's original one."""
        try:
            order = self.find(params)
        except SimError as exc:
            if exc.code == -2013:
                raise SimError(400, -2011, "Unknown order sent.") from None
            raise
        if not order.is_open:
            raise SimError(400, -2011, "Unknown order sent.")
        cancel_id = params.get("newClientOrderId") or f"sim-cancel-{self._next_cancel_id}"
        self._next_cancel_id += 1
        self._close(order, "CANCELED", now_ms, cancel_id=cancel_id)
        d = order.response("RESULT", [])
        d["origClientOrderId"] = order.client_order_id
        d["clientOrderId"] = cancel_id
        d["transactTime"] = now_ms
        del d["workingTime"]
        return d

    def cancel_all(self, params: dict[str, str], now_ms: int) -> list[dict[str, Any]]:
        sym = self.symbol_param(params)
        open_orders = list(self.open[sym.symbol].values())
        if not open_orders:
            raise SimError(400, -2011, "Unknown order sent.")
        return [self.cancel({"symbol": sym.symbol, "orderId": str(o.order_id)}, now_ms) for o in open_orders]

    def _close(
        self, order: SimOrder, status: str, now_ms: int, cancel_id: str = "", expiry_reason: str = ""
    ) -> None:
        """End an open order (CANCELED or EXPIRED) and release what it still locks."""
        sym = self.symbols[order.symbol]
        remaining = order.qty - order.executed
        if order.side == "BUY":
            bal = self.balances[sym.quote]
            amount = order.price * remaining if order.type != "MARKET" else ZERO
        else:
            bal = self.balances[sym.base]
            amount = remaining
        bal[1] -= amount
        bal[0] += amount
        order.status = status
        order.update_ms = now_ms
        order.expiry_reason = expiry_reason
        order.on_book = False
        self.open[order.symbol].pop(order.order_id, None)
        self._report(order, status, now_ms, cancel_id=cancel_id)

    def open_orders(self, symbol: str | None) -> list[SimOrder]:
        if symbol:
            if symbol not in self.symbols:
                raise SimError(400, -1121, "Invalid symbol.")
            return list(self.open[symbol].values())
        return [o for orders in self.open.values() for o in orders.values()]

    def all_orders(self, params: dict[str, str]) -> list[SimOrder]:
        """`GET /api/v3/allOrders`: from `orderId` up, else the most recent; oldest first."""
        sym = self.symbol_param(params)
        limit = int_param(params, "limit", 500, 1, 1000)
        orders = [o for o in self.orders.values() if o.symbol == sym.symbol]
        start = int_param(params, "startTime", None)
        end = int_param(params, "endTime", None)
        if start is not None:
            orders = [o for o in orders if o.time_ms >= start]
        if end is not None:
            orders = [o for o in orders if o.time_ms <= end]
        from_id = int_param(params, "orderId", None)
        if from_id is not None:
            return [o for o in orders if o.order_id >= from_id][:limit]
        if start is not None:
            return orders[:limit]
        return orders[-limit:]

    def my_trades(self, symbol: str, from_id: int | None, limit: int) -> list[dict[str, Any]]:
        trades = self.trades[symbol]
        if from_id is not None:
            trades = [t for t in trades if t["id"] >= from_id]
        return trades[:limit] if from_id is not None else trades[-limit:]

    def account(self) -> dict[str, Any]:
        return {
            "makerCommission": 0,
            "takerCommission": 0,
            "buyerCommission": 0,
            "sellerCommission": 0,
            "canTrade": True,
            "canWithdraw": False,
            "canDeposit": False,
            "accountType": "SPOT",
            "balances": [
                {"asset": a, "free": fmt(v[0]), "locked": fmt(v[1])} for a, v in sorted(self.balances.items())
            ],
            "permissions": ["SPOT"],
        }

    # -- user-data events ----------------------------------------------------------------------
    def _report(
        self,
        order: SimOrder,
        execution: str,
        now_ms: int,
        trade: dict[str, Any] | None = None,
        cancel_id: str = "",
    ) -> None:
        """Send an executionReport and then the balances it touched (outboundAccountPosition)."""
        if self.listener is None:
            return
        execution_id = self._next_execution_id
        self._next_execution_id += 1
        report: dict[str, Any] = {
            "e": "executionReport",
            "E": now_ms,
            "s": order.symbol,
            "c": cancel_id or order.client_order_id,
            "S": order.side,
            "o": order.type,
            "f": order.time_in_force,
            "q": fmt(order.qty),
            "p": fmt(order.price),
            "P": "0.00000000",
            "F": "0.00000000",
            "g": -1,
            "C": order.client_order_id if cancel_id else "",
            "x": execution,
            "X": order.status,
            "r": "NONE",
            "i": order.order_id,
            "l": trade["qty"] if trade else "0.00000000",
            "z": fmt(order.executed),
            "L": trade["price"] if trade else "0.00000000",
            "n": trade["commission"] if trade else "0",
            "N": trade["commissionAsset"] if trade else None,
            "T": now_ms,
            "t": trade["id"] if trade else -1,
            "I": execution_id,
            "w": order.on_book or (execution == "NEW" and order.type in ("LIMIT", "LIMIT_MAKER")),
            "m": trade["isMaker"] if trade else False,
            "M": False,
            "O": order.time_ms,
            "Z": fmt(order.quote_executed),
            "Y": trade["quoteQty"] if trade else "0.00000000",
            "Q": fmt(order.quote_order_qty),
            "W": order.time_ms,
            "V": "NONE",
        }
        if order.expiry_reason:
            report["eR"] = order.expiry_reason
        self.listener(report)
        sym = self.symbols[order.symbol]
        self.listener(
            {
                "e": "outboundAccountPosition",
                "E": now_ms,
                "u": now_ms,
                "B": [
                    {"a": a, "f": fmt(self.balances[a][0]), "l": fmt(self.balances[a][1])}
                    for a in (sym.base, sym.quote)
                    if a in self.balances
                ],
            }
        )

    # -- reference data ------------------------------------------------------------------------
    def exchange_info(
        self, symbols: list[str] | None, server_time: int, rate_limits: list[Any]
    ) -> dict[str, Any]:
        if symbols is None:
            chosen = list(self.symbols.values())
        else:
            chosen = []
            for name in symbols:
                if name not in self.symbols:
                    raise SimError(400, -1121, "Invalid symbol.")
                chosen.append(self.symbols[name])
        return {
            "timezone": "UTC",
            "serverTime": server_time,
            "rateLimits": rate_limits,
            "exchangeFilters": [],
            "symbols": [s.rules() for s in chosen],
        }


def int_param(
    params: dict[str, str], name: str, default: int | None, low: int | None = None, high: int | None = None
) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 19:
        raise illegal(name, "^[0-9]{1,19}$")
    value = int(raw)
    if low is not None and value < low:
        raise SimError(
            400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '{low}..{high}'."
        )
    if high is not None and value > high:
        value = high  # Binance caps limit= at its maximum
    return value
