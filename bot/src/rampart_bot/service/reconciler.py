"""Reconciliation: make the local view agree with the venue's, at start, after every reconnect, on
request and, lighter, on every poll round.

A full run: server time, symbol rules, a REST book snapshot per symbol, new fills and open orders
(`sync_account`), balances. Trading and readiness wait for it. Mismatches are corrected (the venue
wins), logged, counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

from ..adapters.binance_ws import Backoff
from ..core.model import ZERO, Order, OrderStatus
from ..core.venue import (
    CALL_FAILED,
    ORDERS_PAGE,
    WEIGHT_SOFT,
    IpBanned,
    OrderNotFound,
    RateLimited,
    SymbolInfo,
    VenueError,
    VenueOrder,
)
from .gateway import landing_deadline_ms
from .ledger import Ledger
from .shared import Part, Shared

log = logging.getLogger("rampart_bot.engine")


class Reconciler(Part):
    def __init__(self, shared: Shared, ledger: Ledger) -> None:
        super().__init__(shared)
        self.ledger = ledger
        self.rest_breaker = shared.breakers["rest"]
        self.overrides = shared.cfg.symbol_overrides
        # Without exchangeInfo the bot trades only on rules the config gives completely.
        self.rules_complete_from_config = bool(self.overrides) and all(
            len(self.overrides.get(s, {})) == 6 for s in self.symbols
        )
        self.rules_loaded_monotonic: float | None = None
        self._lock = asyncio.Lock()
        ledger.fetch_fills = self.fetch_order_fills

    # -- full reconciliation -------------------------------------------------------------------
    async def run(self) -> None:
        """Reconcile whenever asked (start, reconnect, a part that lost track); retry on failure."""
        backoff = Backoff(0.05, 5.0)
        wanted = self.shared.reconcile_wanted
        while True:
            await wanted.wait()
            wanted.clear()
            try:
                await self.reconcile()
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - keep trying; readiness stays false meanwhile
                self.metrics.reconciliations["failed"] = self.metrics.reconciliations.get("failed", 0) + 1
                log.warning("reconciliation failed", extra={"error": repr(exc)[:300]})
                await asyncio.sleep(backoff.next_delay())
                wanted.set()

    async def reconcile(self) -> None:
        shared = self.shared
        async with self._lock:
            shared.reconciled = False
            await self.venue.sync_time()
            await self.maybe_refresh_rules(required=True)
            await self._catch_up_books()
            await self._catch_up_orders()
            await self.sync_account()
            await self._reconcile_balances()
            shared.reconciled = True
            self.metrics.reconciliations["ok"] = self.metrics.reconciliations.get("ok", 0) + 1
            self.ledger.persist_event("reconciled", {"open_orders": len(self.tracker.open_orders())})
        log.info("reconciled", extra={"open_orders": len(self.tracker.open_orders())})
        await shared.notify()

    async def _catch_up_books(self) -> None:
        for symbol in self.symbols:
            tick = await self.venue.book(symbol)
            book = self.shared.books[symbol]
            book.reset()
            # The REST snapshot is the trusted reference after a (re)connect; it is still checked
            # (positive, not crossed, under the absolute ceiling) before it counts.
            book.band.clear()
            if not book.apply(tick, time.perf_counter_ns()):
                self.shared.parse_stats.drop(f"rest_book_{book.reject}", tick)
                raise VenueError(200, None, f"{symbol} book snapshot refused: {book.reject}")

    async def _reconcile_balances(self) -> None:
        balances = await self.venue.balances()
        assets = {r.base_asset for r in self.cfg.symbols} | {r.quote_asset for r in self.cfg.symbols}
        actual = {asset: row for asset, row in balances.items() if asset in assets}
        expected_balances = self.ledger.expected_balances
        for asset in sorted(assets):
            free, locked = actual.get(asset, (ZERO, ZERO))
            total = free + locked
            expected = expected_balances.get(asset)
            if expected is not None and expected != total:
                self.metrics.mismatch("balance")
                log.warning(
                    "balance mismatch corrected",
                    extra={"asset": asset, "expected": str(expected), "actual": str(total)},
                )
                self.ledger.persist_event(
                    "balance_mismatch", {"asset": asset, "expected": expected, "actual": total}
                )
            expected_balances[asset] = total
        try:
            self.ledger.store.save_balances(actual)
        except Exception as exc:  # noqa: BLE001
            self.ledger.db_failed(exc)

    # -- symbol rules --------------------------------------------------------------------------
    async def maybe_refresh_rules(self, required: bool = False) -> None:
        due = (
            self.rules_loaded_monotonic is None
            or time.monotonic() - self.rules_loaded_monotonic >= self.cfg.venue.rules_refresh_s
        )
        if not due:
            return
        try:
            info = await self.venue.symbols(self.symbols)
        except CALL_FAILED as exc:
            log.warning("exchangeInfo failed", extra={"error": str(exc)[:200]})
            if required and self.rules_loaded_monotonic is None and not self.rules_complete_from_config:
                raise  # no rules at all yet: not ready to trade
            return
        self.apply_symbol_info(info)

    def apply_symbol_info(self, info: dict[str, SymbolInfo]) -> None:
        """The venue's rules become the symbol rules; keys set in the config file override them."""
        rules = self.shared.rules
        missing = [s for s in self.symbols if s not in info]
        if missing and not self.rules_complete_from_config:
            raise VenueError(200, -1121, f"exchangeInfo lacks symbols {missing}")
        for symbol in self.symbols:
            row = info.get(symbol)
            if row is None:
                continue
            if not row.trading:
                log.warning("symbol not trading at the venue", extra={"symbol": symbol, "status": row.status})
            new = dataclasses.replace(rules[symbol], **{**row.rules, **self.overrides.get(symbol, {})})
            if new != rules[symbol]:
                log.info("symbol rules from exchangeInfo", extra={"symbol": symbol, "rules": str(new)})
            rules[symbol] = new
            self.risk.rules[symbol] = new
            band = self.shared.bands[symbol]
            if row.max_price and row.max_price < band.max_price:
                band.max_price = row.max_price
        self.rules_loaded_monotonic = time.monotonic()

    # -- orders and fills ----------------------------------------------------------------------
    async def poll(self) -> None:
        """One poll round: refresh rules when due, pull fills and open orders. Skipped while not
        reconciled, the REST breaker is open, or the request budget is nearly spent."""
        if not self.shared.reconciled or not self.rest_breaker.allow():
            return
        if self.venue.weight_ratio() >= WEIGHT_SOFT:
            self.metrics.venue_error("weight_soft_limit")  # skip a round: slow down before a 429
            return
        await self.maybe_refresh_rules()
        try:
            await self.sync_account()
            self.rest_breaker.success()
        except IpBanned as exc:
            self.metrics.venue_error("ip_banned")
            assert self.shared.kill is not None
            await self.shared.kill(f"venue_ip_ban(retry_after={exc.retry_after_s}s)")
        except RateLimited:
            self.metrics.venue_error("rate_limited")
        except CALL_FAILED as exc:
            self.rest_breaker.failure()
            self.metrics.venue_error("poll_failed")
            log.warning("account poll failed", extra={"error": str(exc)[:200]})

    async def sync_account(self) -> None:
        """Pull new fills and settle orders the venue no longer lists as open."""
        tracker = self.tracker
        ledger = self.ledger
        for symbol in self.symbols:
            last = tracker.max_trade_id.get(symbol)
            from_id = last + 1 if last is not None else None
            for fill in await self.venue.trades(symbol, from_id=from_id):
                if (symbol, fill.order_id) not in tracker.by_exchange_id:
                    await self._adopt_closed(symbol, fill.order_id)
                ledger.apply_trade(fill)
            venue_open = {o.client_order_id: o for o in await self.venue.open_orders(symbol)}
            for order in tracker.open_orders(symbol):
                if order.client_order_id in tracker.in_flight:
                    continue
                remote = venue_open.pop(order.client_order_id, None)
                if remote is not None:
                    ledger.apply_venue_order(order, remote)
                    continue
                await self._settle_missing(order)
            for cid, remote in venue_open.items():
                local = tracker.orders.get(cid)
                if local is not None and local.client_order_id in tracker.in_flight:
                    continue
                self._adopt(remote, local)
            # Late fills: the venue says executed, we have not seen all trades yet.
            for order in list(tracker.orders.values()):
                if order.symbol == symbol and order.exchange_order_id and not tracker.fills_complete(order):
                    await self.fetch_order_fills(order)
        ledger.check_loss_limit()

    async def fetch_order_fills(self, order: Order) -> None:
        if order.exchange_order_id is None:
            return
        try:
            fills = await self.venue.trades(order.symbol, order_id=order.exchange_order_id)
        except CALL_FAILED:
            return  # the poll loop retries
        for fill in fills:
            self.ledger.apply_trade(fill, order)
        self.ledger.check_loss_limit()

    async def _settle_missing(self, order: Order) -> None:
        """A locally open order the venue does not list as open: find out what happened."""
        ledger = self.ledger
        try:
            resp = await self.venue.query_order(order.symbol, order.client_order_id)
        except OrderNotFound:
            if order.status in (OrderStatus.PENDING, OrderStatus.UNKNOWN):
                if int(self.clock() * 1000) < landing_deadline_ms(order, self.cfg.venue.recv_window_ms):
                    return  # its request may still land (venue lag): ask again next round
                # Never reached the venue (crash before send, or a 5xx before acceptance).
                self.metrics.mismatch("order_not_at_venue")
                ledger.transition(order, OrderStatus.REJECTED, reason="not_at_venue")
                ledger.persist_event("order_not_at_venue", {"client_order_id": order.client_order_id})
            else:
                self.metrics.mismatch("open_order_vanished")
                ledger.transition(order, OrderStatus.EXPIRED, reason="vanished")
            return
        if order.status not in (OrderStatus.PENDING, OrderStatus.UNKNOWN) and resp.status != order.status:
            self.metrics.mismatch("order_status")
        ledger.apply_venue_order(order, resp)

    async def _catch_up_orders(self) -> None:
        """Orders the venue has that the database may not: those after its mark (the last reconciliation's,
        restored with the database from a backup older than them). Open and filled ones would surface through
        openOrders and the fills, but one placed and cancelled after the backup would not. Each one is made
        sure of here, before the fills are read, and the mark moves up to the newest. Reading from the mark,
        not from the newest order known, also covers orders saved into a restored database before the bot
        restarted (newer than the gap). No mark and nothing known (a fresh start): nothing to do."""
        marks = self.ledger.orders_through()
        for symbol in self.symbols:
            mark = marks.get(symbol)
            if mark is None:  # no mark yet (a database from before marks existed): the newest order known
                mark = max((eid for sym, eid in self.tracker.by_exchange_id if sym == symbol), default=None)
            if mark is None:
                continue
            start, through, unsettled = mark + 1, mark, None
            while True:
                page = await self.venue.orders_from(symbol, start)
                for remote in page:
                    if not self._settle_listed(remote) and unsettled is None:
                        unsettled = remote.exchange_order_id
                    through = max(through, remote.exchange_order_id or 0)
                if len(page) < ORDERS_PAGE or through < start:  # the last page, or one that did not move on
                    break
                start = through + 1
            if unsettled is not None:  # the mark stays below an order that could not be recorded
                through = min(through, unsettled - 1)
            if through != marks.get(symbol) and self.shared.db_ok:
                self.ledger.save_orders_through(symbol, through)

    def _settle_listed(self, remote: VenueOrder) -> bool:
        """Make sure the database has an order the venue lists after the mark; False if it cannot be
        recorded."""
        local = self.tracker.orders.get(remote.client_order_id)
        if local is not None:
            self.ledger.save(local)  # known here, maybe not in a database restored while this process ran
            return True
        if remote.side is None or remote.exchange_order_id is None:
            return False
        if remote.status is not None and remote.status.is_open:
            self._adopt(remote, None)
        else:
            self._record_closed(remote)
        return True

    async def _adopt_closed(self, symbol: str, exchange_order_id: int) -> None:
        """A trade of an order we have no record of (say, a database restored from a backup older than the
        order): ask the venue for the order and record it, so orders and fills match the venue again."""
        try:
            remote = await self.venue.query_order_by_id(symbol, exchange_order_id)
        except (OrderNotFound, *CALL_FAILED):
            return  # the fill is still applied; the order is looked up again with its next trade
        self._record_closed(remote)

    def _record_closed(self, remote: VenueOrder) -> None:
        """Record a closed order the venue has and we do not (see _catch_up_orders, _adopt_closed)."""
        if remote.client_order_id in self.tracker.orders or remote.side is None:
            return  # known by its client id (its exchange id was never recorded): the order paths settle it
        self.metrics.mismatch("unknown_closed_order")
        self.ledger.persist_event("order_recovered", {"client_order_id": remote.client_order_id,
                                                      "exchange_order_id": remote.exchange_order_id})
        order = Order(
            client_order_id=remote.client_order_id,
            symbol=remote.symbol,
            side=remote.side,
            order_type=remote.order_type,
            qty=remote.qty,
            price=remote.price,
            status=remote.status or OrderStatus.FILLED,
            exchange_order_id=remote.exchange_order_id,
            executed_qty=remote.executed_qty or ZERO,
            created_ms=remote.time_ms,
            updated_ms=int(self.clock() * 1000),
            reason="recovered",
        )
        self.tracker.add(order)
        self.ledger.save(order)

    def _adopt(self, remote: VenueOrder, local: Order | None) -> None:
        """The venue has an open order we think is closed or never knew: take the venue's word."""
        cid = remote.client_order_id
        if remote.side is None:
            raise VenueError(200, None, f"open order {cid} without a side")
        self.metrics.mismatch("unknown_open_order" if local is None else "order_reopened")
        status = remote.status or OrderStatus.NEW
        self.ledger.persist_event("order_adopted", {"client_order_id": cid, "status": status.value})
        order = Order(
            client_order_id=cid,
            symbol=remote.symbol,
            side=remote.side,
            order_type=remote.order_type,
            qty=remote.qty,
            price=remote.price,
            status=status,
            exchange_order_id=remote.exchange_order_id,
            executed_qty=remote.executed_qty or ZERO,
            created_ms=remote.time_ms,
            updated_ms=int(self.clock() * 1000),
            reason="adopted",
        )
        if local is not None:
            self.tracker.forget(local)
        self.tracker.add(order)
        self.ledger.save(order)
