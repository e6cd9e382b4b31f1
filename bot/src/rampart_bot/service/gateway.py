"""Orders out: the pre-trade gate, persist-before-send, unknown outcomes, cancels.

1. The gate (synchronous): accepting, reconciled, breakers, the request-weight budget, the risk check.
2. The order with its client id is persisted, then sent.
3. A 5xx, a timeout or a malformed answer makes it UNKNOWN, resolved by querying the same client id.
   The venue keeps a client id unique only among *open* orders, so the gateway resends (same id) only
   once the venue says "no such order" after the first request could no longer be accepted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque

from ..core.model import Order, OrderIntent, OrderStatus, TradingState
from ..core.venue import (
    CALL_FAILED,
    WEIGHT_HARD,
    CancelRejected,
    ClockSkew,
    DuplicateOrder,
    IpBanned,
    OrderNotFound,
    OrderRejected,
    RateLimited,
    UnknownOutcome,
    VenueError,
)
from .ledger import Ledger
from .shared import Part, Shared

log = logging.getLogger("rampart_bot.engine")

LANDING_MARGIN_MS = 1000
RESOLVE_QUERY_ATTEMPTS = 5


def landing_deadline_ms(order: Order, recv_window_ms: int) -> int:
    """Local time after which a request for this order can no longer be accepted by the venue.

    The venue refuses a request whose timestamp is older than recvWindow when it processes it;
    `updated_ms` is stamped no earlier than the last send's timestamp (persisted before sending
    and on every resend), plus a margin for our clock-offset estimate.
    """
    return order.updated_ms + recv_window_ms + LANDING_MARGIN_MS


class OrderGateway(Part):
    def __init__(self, shared: Shared, ledger: Ledger) -> None:
        super().__init__(shared)
        self.ledger = ledger
        self.rest_breaker = shared.breakers["rest"]
        self.db_breaker = shared.breakers["db"]
        self.latency_samples: deque[float] = deque(maxlen=100_000)  # tick-to-order, seconds (for the bench)
        self.ack_samples: deque[float] = deque(maxlen=100_000)
        self.tick_to_ack_samples: deque[float] = deque(maxlen=100_000)

    # -- new orders ----------------------------------------------------------------------------
    def submit_intent(self, intent: OrderIntent, tick_ns: int = 0) -> Order | None:
        """Gate, persist, then hand to an async sender. Returns the order if one was created.

        `tick_ns`: perf_counter_ns of the market data frame behind the intent (0: none).
        """
        shared = self.shared
        if not shared.accepting:
            self.metrics.reject("shutting_down")
            return None
        if not shared.reconciled:
            self.metrics.reject("not_reconciled")
            return None
        if not self.rest_breaker.allow():
            self.metrics.reject("breaker_rest")
            return None
        if not self.db_breaker.allow():
            self.metrics.reject("breaker_db")
            return None
        if self.venue.weight_ratio() >= WEIGHT_HARD:
            # Close to the venue's request-weight limit: refuse locally before it answers 429.
            self.metrics.reject("weight_budget")
            return None
        decision = self.risk.check(intent, self.tracker, time.monotonic())
        if not decision.approved:
            self.metrics.reject(decision.reason)
            return None
        order = self.tracker.create(intent, int(self.clock() * 1000))
        try:
            self.ledger.store.insert_order(order)  # persisted BEFORE it can be sent
        except Exception as exc:  # noqa: BLE001 - any DB failure must stop trading, not crash
            self.ledger.db_failed(exc)
            self.tracker.transition(order, OrderStatus.REJECTED, order.created_ms, reason="db_unavailable")
            self.metrics.reject("db_unavailable")
            return None
        self.tracker.in_flight.add(order.client_order_id)
        shared.spawn(self._send(order, tick_ns))
        return order

    async def _send(self, order: Order, tick_ns: int = 0) -> None:
        # Tick-to-order: from the frame's arrival to this task taking the order to the venue. Only
        # the clock is read here; the histogram (it takes a lock) is fed once the request is out.
        started_ns = time.perf_counter_ns() if tick_ns else 0
        try:
            await self._send_until_known(order, tick_ns)
        finally:
            self.tracker.in_flight.discard(order.client_order_id)
            if tick_ns:
                elapsed = (started_ns - tick_ns) / 1e9
                self.metrics.tick_to_order.observe(elapsed)
                self.latency_samples.append(elapsed)
            await self.shared.notify()
        if self.risk.state is TradingState.HALTED and order.status.is_open and order.exchange_order_id:
            # Accepted after the kill switch fired: cancel it too.
            await self.cancel(order)

    async def _send_until_known(self, order: Order, tick_ns: int = 0) -> None:
        ledger = self.ledger
        attempts = self.cfg.runtime.max_submit_attempts
        while order.submit_attempts < attempts:
            if order.submit_attempts:
                # A resend: stamp it, so the "could it still land?" deadline starts again from here.
                order.updated_ms = int(self.clock() * 1000)
                ledger.save(order)
            order.submit_attempts += 1
            t0 = time.perf_counter()
            try:
                resp = await self.venue.submit(order)
            except UnknownOutcome as exc:
                self.metrics.venue_error("unknown_outcome")
                self.rest_breaker.failure()
                ledger.transition(order, OrderStatus.UNKNOWN, reason=str(exc.cause)[:200])
                order.updated_ms = int(self.clock() * 1000)
                ledger.save(order)
                log.warning("order outcome unknown", extra={"client_order_id": order.client_order_id})
                if await self.resolve(order) is not False:
                    return  # known at the venue, or still unknown: reconciliation owns it
                continue  # proven absent (its request can no longer be accepted): resend is safe
            except DuplicateOrder:
                # The venue already has this id open (an earlier attempt landed): learn its state.
                self.rest_breaker.success()
                await self.resolve(order)
                return
            except OrderRejected as exc:
                self.rest_breaker.success()
                self.metrics.venue_error("rejected")
                self.metrics.reject(f"venue_{exc.code}")
                ledger.transition(order, OrderStatus.REJECTED, reason=exc.msg[:200])
                return
            except IpBanned as exc:
                self.metrics.venue_error("ip_banned")
                ledger.transition(order, OrderStatus.REJECTED, reason="ip_banned")
                self.shared.request_kill(f"venue_ip_ban(retry_after={exc.retry_after_s}s)")
                return
            except RateLimited:
                self.metrics.venue_error("rate_limited")
                self.metrics.reject("rate_limited")
                ledger.transition(order, OrderStatus.REJECTED, reason="rate_limited")
                return
            except ClockSkew:
                self.metrics.venue_error("clock_skew")
                ledger.transition(order, OrderStatus.REJECTED, reason="clock_skew")
                return
            except VenueError as exc:
                self.metrics.venue_error(f"code_{exc.code}")
                ledger.transition(order, OrderStatus.REJECTED, reason=exc.msg[:200])
                return
            ack = time.perf_counter() - t0
            self.metrics.order_ack.observe(ack)
            self.ack_samples.append(ack)
            if tick_ns and order.submit_attempts == 1:
                self.tick_to_ack_samples.append((time.perf_counter_ns() - tick_ns) / 1e9)
            self.metrics.orders_submitted += 1
            self.rest_breaker.success()
            ledger.apply_venue_order(order, resp)
            return
        # Attempts exhausted and still unknown: reconciliation owns it now.
        self.shared.request_reconcile("unresolved_order")

    def landing_deadline_ms(self, order: Order) -> int:
        return landing_deadline_ms(order, self.cfg.venue.recv_window_ms)

    async def resolve(self, order: Order) -> bool | None:
        """Settle an UNKNOWN order by querying its client id.

        True: the venue knows it (state applied). False: proven absent, i.e. the venue said "no such
        order" *after* the request could no longer land (a not-found before that may just be lag).
        None: still unknown (queries failing): never resend; reconciliation keeps trying.
        """
        delay = 0.05
        failures = 0
        while True:
            try:
                resp = await self.venue.query_order(order.symbol, order.client_order_id)
            except OrderNotFound:
                wait_ms = self.landing_deadline_ms(order) - int(self.clock() * 1000)
                if wait_ms <= 0:
                    return False
                # Not found *yet*: the request may still be queued at the venue. Ask again later.
                await asyncio.sleep(min(wait_ms / 1000, max(delay, 0.05)))
                delay = min(delay * 2, 1.0)
                continue
            except CALL_FAILED as exc:
                failures += 1
                self.metrics.venue_error("query_failed")
                log.warning(
                    "order query failed", extra={"client_order_id": order.client_order_id, "error": str(exc)}
                )
                if failures >= RESOLVE_QUERY_ATTEMPTS:
                    self.shared.request_reconcile("unresolved_order")
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.ledger.apply_venue_order(order, resp)
            return True

    # -- cancels -------------------------------------------------------------------------------
    async def cancel(self, order: Order) -> None:
        try:
            resp = await self.venue.cancel_order(order.symbol, order.client_order_id)
            self.ledger.apply_venue_order(order, resp)
        except CancelRejected:
            # Already closed (often: filled). Query so a racing fill is never lost.
            try:
                self.ledger.apply_venue_order(
                    order, await self.venue.query_order(order.symbol, order.client_order_id)
                )
            except CALL_FAILED:
                self.shared.request_reconcile("cancel_race")
        except CALL_FAILED:
            self.shared.request_reconcile("cancel_failed")

    async def cancel_all(self, symbols: list[str]) -> int:
        """Cancel every open order of ours at the venue; returns how many the venue cancelled."""
        cancelled = 0
        for symbol in symbols:
            try:
                rows = await self.venue.cancel_all(symbol)
            except CALL_FAILED as exc:
                self.metrics.venue_error("cancel_all_failed")
                log.error(
                    "cancel-all failed; will retry on next kill/reconcile", extra={"error": str(exc)[:200]}
                )
                self.shared.request_reconcile("cancel_failed")
                continue
            for row in rows:
                order = self.tracker.orders.get(row.client_order_id)
                if order is not None:
                    self.ledger.apply_venue_order(order, row)
                cancelled += 1
        return cancelled
