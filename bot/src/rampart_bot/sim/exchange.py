"""The simulator's matching engine and account: pure state, no I/O.

Good enough for limit and market orders: marketable orders fill at the touch, resting limit orders
fill at their limit price once the touch crosses them. Fills are reported through the account side
(order query, myTrades), as on Binance without a user-data stream.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

ZERO = Decimal(0)


class SimError(Exception):
    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg


def fmt(d: Decimal) -> str:
    return f"{d:.8f}"


@dataclass
class SimSymbol:
    symbol: str
    base: str
    quote: str
    tick_size: Decimal = Decimal("0.01")
    step_size: Decimal = Decimal("0.00001")
    min_qty: Decimal = Decimal("0.00001")
    max_qty: Decimal = Decimal("9000")
    min_notional: Decimal = Decimal("5")
    mid: Decimal = Decimal("30000")
    spread_ticks: int = 2
    top_qty: Decimal = Decimal("1.5")


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
    price: Decimal
    qty: Decimal
    time_in_force: str
    time_ms: int
    executed: Decimal = ZERO
    quote_executed: Decimal = ZERO
    status: str = "NEW"
    update_ms: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
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
            "isWorking": self.status in ("NEW", "PARTIALLY_FILLED"),
            "workingTime": self.time_ms,
            "origQuoteOrderQty": "0.00000000",
            "selfTradePreventionMode": "NONE",
        }


def _param_dec(params: dict[str, str], name: str) -> Decimal:
    raw = params.get(name)
    if raw is None:
        raise SimError(
            400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
        )
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise SimError(400, -1100, f"Illegal characters found in parameter '{name}'.") from None
    if not value.is_finite() or value <= 0:
        raise SimError(400, -1100, f"Illegal value for parameter '{name}'.")
    return value


class Exchange:
    def __init__(
        self,
        symbols: list[SimSymbol],
        balances: dict[str, Decimal],
        process: PriceProcess | None = None,
        commission_rate: Decimal = ZERO,
    ) -> None:
        self.symbols = {s.symbol: s for s in symbols}
        self.balances: dict[str, list[Decimal]] = {a: [v, ZERO] for a, v in balances.items()}
        self.process = process or PriceProcess()
        self.commission_rate = commission_rate
        self.orders: dict[int, SimOrder] = {}
        self.by_client_id: dict[tuple[str, str], SimOrder] = {}
        self.open: dict[str, dict[int, SimOrder]] = {s: {} for s in self.symbols}
        self.trades: dict[str, list[dict[str, Any]]] = {s: [] for s in self.symbols}
        self.market_trade_id: dict[str, int] = {s: 1000 for s in self.symbols}
        self.update_id: dict[str, int] = {s: 1 for s in self.symbols}
        self.pending_market_trades: list[dict[str, Any]] = []
        self._next_order_id = 1
        self._next_trade_id = 1
        self.accepted_orders = 0
        self._best_buy: dict[str, Decimal] = {}
        self._best_sell: dict[str, Decimal] = {}

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
        return {
            "e": "trade",
            "E": now_ms,
            "s": symbol,
            "t": self.market_trade_id[symbol],
            "p": fmt(bid if buyer_maker else ask),
            "q": "0.01000000",
            "T": now_ms,
            "m": buyer_maker,
            "M": True,
        }

    # -- orders --------------------------------------------------------------------------------
    def _symbol(self, params: dict[str, str]) -> SimSymbol:
        sym = self.symbols.get(params.get("symbol", ""))
        if sym is None:
            raise SimError(400, -1121, "Invalid symbol.")
        return sym

    def new_order(self, params: dict[str, str], now_ms: int) -> SimOrder:
        sym = self._symbol(params)
        side = params.get("side")
        otype = params.get("type")
        if side not in ("BUY", "SELL"):
            raise SimError(400, -1100, "Illegal characters found in parameter 'side'.")
        if otype not in ("LIMIT", "MARKET"):
            raise SimError(400, -1116, "Invalid orderType.")
        qty = _param_dec(params, "quantity")
        if qty % sym.step_size or qty < sym.min_qty or qty > sym.max_qty:
            raise SimError(400, -1013, "Filter failure: LOT_SIZE")
        cid = params.get("newClientOrderId") or f"sim-{self._next_order_id}"
        if (sym.symbol, cid) in self.by_client_id:
            raise SimError(400, -2010, "Duplicate order sent.")
        bid, ask = self.top(sym.symbol)
        if otype == "LIMIT":
            price = _param_dec(params, "price")
            if price % sym.tick_size:
                raise SimError(400, -1013, "Filter failure: PRICE_FILTER")
            tif = params.get("timeInForce", "GTC")
        else:
            price = ask if side == "BUY" else bid
            tif = "GTC"
        if price * qty < sym.min_notional:
            raise SimError(400, -1013, "Filter failure: NOTIONAL")
        # Lock the funds the order could use.
        if side == "BUY":
            need_asset, need = sym.quote, price * qty
        else:
            need_asset, need = sym.base, qty
        bal = self.balances.setdefault(need_asset, [ZERO, ZERO])
        if bal[0] < need:
            raise SimError(400, -2010, "Account has insufficient balance for requested action.")
        bal[0] -= need
        bal[1] += need
        order = SimOrder(sym.symbol, self._next_order_id, cid, side, otype, price, qty, tif, now_ms)
        self._next_order_id += 1
        self.orders[order.order_id] = order
        self.by_client_id[(sym.symbol, cid)] = order
        self.open[sym.symbol][order.order_id] = order
        self._best_buy.pop(sym.symbol, None)
        self._best_sell.pop(sym.symbol, None)
        self.accepted_orders += 1
        if otype == "MARKET" or (side == "BUY" and price >= ask) or (side == "SELL" and price <= bid):
            self._fill(order, ask if side == "BUY" else bid, qty, now_ms, maker=False)
        return order

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

    def _fill(self, order: SimOrder, price: Decimal, qty: Decimal, now_ms: int, maker: bool) -> None:
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
            locked = order.price * qty
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
        if order.status == "FILLED":
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

    def find(self, params: dict[str, str]) -> SimOrder:
        sym = self._symbol(params)
        order: SimOrder | None = None
        if "origClientOrderId" in params:
            order = self.by_client_id.get((sym.symbol, params["origClientOrderId"]))
        elif "orderId" in params:
            try:
                order = self.orders.get(int(params["orderId"]))
            except ValueError:
                order = None
        else:
            raise SimError(400, -1102, "Param 'origClientOrderId' or 'orderId' must be sent.")
        if order is None or order.symbol != sym.symbol:
            raise SimError(400, -2013, "Order does not exist.")
        return order

    def cancel(self, params: dict[str, str], now_ms: int) -> SimOrder:
        try:
            order = self.find(params)
        except SimError as exc:
            if exc.code == -2013:
                raise SimError(400, -2011, "Unknown order sent.") from None
            raise
        if order.status not in ("NEW", "PARTIALLY_FILLED"):
            raise SimError(400, -2011, "Unknown order sent.")
        self._release(order)
        order.status = "CANCELED"
        order.update_ms = now_ms
        self.open[order.symbol].pop(order.order_id, None)
        return order

    def cancel_all(self, params: dict[str, str], now_ms: int) -> list[SimOrder]:
        sym = self._symbol(params)
        open_orders = list(self.open[sym.symbol].values())
        if not open_orders:
            raise SimError(400, -2011, "Unknown order sent.")
        return [self.cancel({"symbol": sym.symbol, "orderId": str(o.order_id)}, now_ms) for o in open_orders]

    def _release(self, order: SimOrder) -> None:
        sym = self.symbols[order.symbol]
        remaining = order.qty - order.executed
        if order.side == "BUY":
            bal = self.balances[sym.quote]
            amount = order.price * remaining
        else:
            bal = self.balances[sym.base]
            amount = remaining
        bal[1] -= amount
        bal[0] += amount

    def open_orders(self, symbol: str | None) -> list[SimOrder]:
        if symbol:
            if symbol not in self.symbols:
                raise SimError(400, -1121, "Invalid symbol.")
            return list(self.open[symbol].values())
        return [o for orders in self.open.values() for o in orders.values()]

    def my_trades(self, symbol: str, from_id: int | None, limit: int) -> list[dict[str, Any]]:
        trades = self.trades[symbol]
        if from_id is not None:
            trades = [t for t in trades if t["id"] >= from_id]
        return trades[:limit] if from_id is not None else trades[-limit:]

    def account(self) -> dict[str, Any]:
        return {
            "makerCommission": 0,
            "takerCommission": 0,
            "canTrade": True,
            "canWithdraw": False,
            "canDeposit": False,
            "accountType": "SPOT",
            "balances": [
                {"asset": a, "free": fmt(v[0]), "locked": fmt(v[1])} for a, v in sorted(self.balances.items())
            ],
            "permissions": ["SPOT"],
        }

    def exchange_info(self) -> dict[str, Any]:
        return {
            "timezone": "UTC",
            "symbols": [
                {
                    "symbol": s.symbol,
                    "status": "TRADING",
                    "baseAsset": s.base,
                    "quoteAsset": s.quote,
                    "filters": [
                        {
                            "filterType": "PRICE_FILTER",
                            "minPrice": fmt(s.tick_size),
                            "maxPrice": "1000000.00000000",
                            "tickSize": fmt(s.tick_size),
                        },
                        {
                            "filterType": "LOT_SIZE",
                            "minQty": fmt(s.min_qty),
                            "maxQty": fmt(s.max_qty),
                            "stepSize": fmt(s.step_size),
                        },
                        {"filterType": "NOTIONAL", "minNotional": fmt(s.min_notional)},
                    ],
                }
                for s in self.symbols.values()
            ],
        }
